"""Rebuilds the stylized video on the phone, in frame order, from stylized key frames (live mode)."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mobile_sim.flow import FlowEstimator
from mobile_sim.warp import Warper, WarpMaps, image_size, resize_to

OutputKind = Literal["key", "warped", "fallback", "failed"]
OUTPUT_KINDS: tuple[OutputKind, ...] = ("key", "warped", "fallback", "failed")
STAT_EVICTED = "evicted"
STAT_STALE = "stale_results"
DEFAULT_MAX_FRAMES = 256
BGR_CHANNELS = 3

_log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class OutputFrame:
    """One reconstructed frame.

    kind: "key" (the stylized key frame), "warped" (from its own key), "fallback" (from an earlier
    key because its own failed) or "failed" (no stylized key available: `image` is the original).
    key_id: the key whose stylized frame `image` comes from; None when kind is "failed".
    """

    frame_id: int
    image: np.ndarray
    kind: OutputKind
    key_id: int | None


@dataclass(eq=False)
class _Key:
    original: np.ndarray
    stylized: np.ndarray | None = None
    failed: bool = False

    @property
    def resolved(self) -> bool:
        return self.failed or self.stylized is not None


@dataclass(frozen=True, eq=False)
class _Waiting:
    frame_id: int
    key_id: int
    frame: np.ndarray
    maps: WarpMaps | None  # None for key frames and for frames of a key already known to have failed


def _check_bgr(name: str, image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != BGR_CHANNELS or image.dtype != np.uint8:
        raise ValueError(f"{name} must be BGR uint8 HxWx3, got {image.shape} {image.dtype}")


class Reconstructor:
    """Algorithm 1 in live mode: each frame is warped from the newest key frame before it.

    Flow to the key's original is computed when a frame is added, so a stylized key's arrival only
    costs remaps. Frames come out of `pop_ready` strictly in frame order. Arrays passed in are
    kept, not copied. Not thread-safe: call it from one thread.
    """

    def __init__(self, flow: FlowEstimator, warper: Warper, max_frames: int = DEFAULT_MAX_FRAMES) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self._flow = flow
        self._warper = warper
        self._max_frames = max_frames
        self._waiting: deque[_Waiting] = deque()
        self._keys: dict[int, _Key] = {}
        self._newest_key_id: int | None = None
        self._last_frame_id: int | None = None
        self._frame_shape: tuple[int, ...] | None = None
        self._expected_key_size: tuple[int, int] | None = None  # size of the last stylized key received
        self._fallback: tuple[int, _Key] | None = None  # newest successfully stylized key emitted so far
        self._ready: list[OutputFrame] = []
        self._stats = dict.fromkeys((*OUTPUT_KINDS, STAT_EVICTED, STAT_STALE), 0)

    @property
    def stats(self) -> dict[str, int]:
        """Frames emitted per kind ("failed" includes evictions), evictions, and ignored key results."""
        return dict(self._stats)

    def add_frame(self, frame_id: int, frame: np.ndarray, key_id: int) -> None:
        """Add the next original frame; key_id == frame_id for a key frame, else the newest key.

        Beyond `max_frames` waiting frames, the oldest are emitted as "failed".
        """
        _check_bgr("frame", frame)
        if self._frame_shape is not None and frame.shape != self._frame_shape:
            raise ValueError(f"frame shape {frame.shape} differs from earlier frames {self._frame_shape}")
        if self._last_frame_id is not None and frame_id <= self._last_frame_id:
            raise ValueError(f"frame ids must strictly increase: got {frame_id} after {self._last_frame_id}")
        if key_id != frame_id and self._newest_key_id is None:
            raise ValueError(f"the first frame must be a key frame (key_id == frame_id), got key {key_id}")
        if key_id != frame_id and key_id != self._newest_key_id:
            raise ValueError(
                f"frame {frame_id} must use the newest key frame ({self._newest_key_id}), got key {key_id}"
            )
        self._frame_shape = frame.shape
        self._last_frame_id = frame_id
        maps = None
        if key_id == frame_id:
            self._keys[key_id] = _Key(original=frame)
            self._newest_key_id = key_id
        elif not self._keys[key_id].failed:
            maps = self._maps_to_key(frame, self._keys[key_id])
        self._waiting.append(_Waiting(frame_id, key_id, frame, maps))
        self._drain()
        while len(self._waiting) > self._max_frames:
            evicted = self._waiting.popleft()
            self._emit(evicted.frame_id, evicted.frame, "failed", None)
            self._stats[STAT_EVICTED] += 1
            self._drain()
        self._release_keys()

    def add_stylized(self, key_id: int, stylized: np.ndarray) -> None:
        """The stylized key frame (any size) arrived; results for keys no longer tracked are ignored."""
        _check_bgr("stylized key frame", stylized)
        key = self._open_key(key_id)
        if key is None:
            return
        key.stylized = stylized
        self._expected_key_size = image_size(stylized)
        self._drain()
        self._release_keys()

    def key_failed(self, key_id: int, reason: str) -> None:
        """The key frame will not be stylized; its frames fall back to the newest earlier good key."""
        key = self._open_key(key_id)
        if key is None:
            return
        _log.info("key frame %d failed: %s", key_id, reason)
        key.failed = True
        self._drain()
        self._release_keys()

    def pop_ready(self) -> list[OutputFrame]:
        """Frames produced since the last call, in frame order."""
        ready, self._ready = self._ready, []
        return ready

    def _open_key(self, key_id: int) -> _Key | None:
        """The unresolved key `key_id`, or None (counted as stale) if it is resolved or released."""
        if self._newest_key_id is None or key_id > self._newest_key_id:
            raise ValueError(f"key frame {key_id} was never added")
        key = self._keys.get(key_id)
        if key is None or key.resolved:
            self._stats[STAT_STALE] += 1
            return None
        return key

    def _frame_size(self) -> tuple[int, int]:
        assert self._frame_shape is not None, "no frame added yet"
        return self._frame_shape[1], self._frame_shape[0]

    def _maps_to_key(self, frame: np.ndarray, key: _Key) -> WarpMaps:
        if key.stylized is not None:
            key_size = image_size(key.stylized)
        else:
            key_size = self._expected_key_size or self._frame_size()
        return self._warper.maps_from_flow(self._flow.estimate(frame, key.original), key_size)

    def _drain(self) -> None:
        """Emit waiting frames from the front while their key is resolved."""
        while self._waiting and self._keys[self._waiting[0].key_id].resolved:
            waiting = self._waiting.popleft()
            self._render(waiting, self._keys[waiting.key_id])

    def _render(self, waiting: _Waiting, key: _Key) -> None:
        if key.stylized is not None:
            if self._fallback is None or self._fallback[0] < waiting.key_id:
                self._fallback = (waiting.key_id, key)
            if waiting.frame_id == waiting.key_id:
                image = resize_to(key.stylized, self._frame_size())
                if image is key.stylized:  # the key is kept as fallback: hand out a copy
                    image = image.copy()
                self._emit(waiting.frame_id, image, "key", waiting.key_id)
            else:
                assert waiting.maps is not None, "frames of a good key always have maps"
                stylized = resize_to(key.stylized, waiting.maps.key_size)
                self._emit(waiting.frame_id, self._warper.warp(stylized, waiting.maps), "warped", waiting.key_id)
        elif self._fallback is not None:
            fallback_id, fallback = self._fallback
            assert fallback.stylized is not None, "the fallback key was stylized"
            maps = self._warper.maps_from_flow(
                self._flow.estimate(waiting.frame, fallback.original), image_size(fallback.stylized)
            )
            self._emit(waiting.frame_id, self._warper.warp(fallback.stylized, maps), "fallback", fallback_id)
        else:
            self._emit(waiting.frame_id, waiting.frame, "failed", None)

    def _emit(self, frame_id: int, image: np.ndarray, kind: OutputKind, key_id: int | None) -> None:
        self._ready.append(OutputFrame(frame_id=frame_id, image=image, kind=kind, key_id=key_id))
        self._stats[kind] += 1

    def _release_keys(self) -> None:
        """Forget keys no waiting frame needs, except the newest (later frames use it)."""
        needed = {waiting.key_id for waiting in self._waiting}
        if self._newest_key_id is not None:
            needed.add(self._newest_key_id)
        for key_id in [key_id for key_id in self._keys if key_id not in needed]:
            del self._keys[key_id]
