"""Rebuilds the stylized video on the phone, in frame order, from stylized key frames.

Live mode warps each frame from the newest key before it as soon as that key is stylized;
buffered mode waits for the next key too and blends both warps by their forward-backward
confidence. Pixels no usable warp covers are filled with the key's colour map (ColorMap).
Render "affine"/"affine-flow" instead applies the stylizer's local affine colour maps, sent with
the key, to each frame itself (moved along the flow to the key with "affine-flow"); buffered, the
maps of both keys are blended by time distance.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from mobile_sim.affine import AffineCoefficients, AffineRenderer
from mobile_sim.colormap import ColorMap
from mobile_sim.flow import FlowEstimator, Motion, MotionProbe
from mobile_sim.temporal import TemporalFilter
from mobile_sim.warp import Warper, WarpMaps, image_size, resize_to

ReconstructionMode = Literal["live", "buffered"]
RECONSTRUCTION_MODES: tuple[ReconstructionMode, ...] = ("live", "buffered")
IntermediateRender = Literal["warp", "affine", "affine-flow"]
INTERMEDIATE_RENDERS: tuple[IntermediateRender, ...] = ("warp", "affine", "affine-flow")
OutputKind = Literal["key", "warped", "affine", "fallback", "failed"]
OUTPUT_KINDS: tuple[OutputKind, ...] = ("key", "warped", "affine", "fallback", "failed")
STAT_EVICTED = "evicted"
STAT_STALE = "stale_results"
DEFAULT_MAX_FRAMES = 256
BGR_CHANNELS = 3
BLEND_NEAREST = 0.5
"""Buffered mode fills pixels occluded in both warps from the previous key up to this share of the gap."""

_log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class OutputFrame:
    """One reconstructed frame.

    kind: "key" (the stylized key frame), "warped" (warped from its own key), "affine" (its own
    key's colour maps applied to it), "fallback" (from an earlier key because its own failed) or
    "failed" (no stylized key available: `image` is the original).
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
    color_map: ColorMap | None = None  # fitted when the stylized key arrives, if occlusions are filled
    coefficients: AffineCoefficients | None = None  # the stylizer's colour maps, in the affine renders

    @property
    def resolved(self) -> bool:
        return self.failed or self.stylized is not None


@dataclass(eq=False)
class _Warp:
    """How one frame is rebuilt from one key: remap maps and the pixels the warp cannot be trusted at."""

    key_id: int
    maps: WarpMaps
    occluded: np.ndarray | None


@dataclass(eq=False)
class _Waiting:
    frame_id: int
    key_id: int
    frame: np.ndarray
    warp: _Warp | None  # None for key frames, frames of a key known to have failed, and affine renders
    motion: Motion | None = None  # render "affine-flow": flow to the key, for moving its colour maps
    next_warp: _Warp | None = None  # buffered mode: the warp from the next key
    next_motion: Motion | None = None  # buffered "affine-flow": flow to the next key
    next_key_id: int | None = None  # buffered mode: the next key, once it is added


def _check_bgr(name: str, image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != BGR_CHANNELS or image.dtype != np.uint8:
        raise ValueError(f"{name} must be BGR uint8 HxWx3, got {image.shape} {image.dtype}")


class Reconstructor:
    """Algorithm 1: each intermediate frame is warped from its key frame(s).

    mode "live": from the newest key before it, emitted once that key is resolved. mode
    "buffered": also from the next key (flow computed when that key is added), the two warps
    blended per pixel by time distance and forward-backward consistency; emitted once both keys are
    resolved (frames after the last key wait for `finish`). `occlusion_check` computes the
    forward-backward mask (one more flow per frame); `fill_occlusions` replaces pixels that fail it
    in every usable warp by the key's colour map applied to the original frame. `render` "affine"
    applies the colour maps the stylizer sent with a key (`add_stylized(..., coefficients)`) to each
    of its frames, with no flow at all; "affine-flow" first moves them along the frame's flow to the
    key. Buffered, the maps of both keys are blended by time distance (a blend of affine maps is
    affine) and applied once. Frames of a key that came without coefficients are warped.
    `temporal_weight` > 0 blends every stylized output with the previous one warped along the flow
    (mobile_sim.temporal); "failed" frames (originals) pass unfiltered and restart it.
    Flow to a key's original is computed when a frame (or, buffered, the next key) is added, so a
    stylized key's arrival only costs remaps. Frames come out of `pop_ready` strictly in frame
    order. Arrays passed in are kept, not copied. Not thread-safe: call it from one thread.
    """

    def __init__(
        self,
        flow: FlowEstimator,
        warper: Warper,
        max_frames: int = DEFAULT_MAX_FRAMES,
        mode: ReconstructionMode = "live",
        occlusion_check: bool = False,
        fill_occlusions: bool = False,
        render: IntermediateRender = "warp",
        temporal_weight: float = 0.0,
    ) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if mode not in RECONSTRUCTION_MODES:
            raise ValueError(f"mode must be one of {RECONSTRUCTION_MODES}, got {mode!r}")
        if fill_occlusions and not occlusion_check:
            raise ValueError("fill_occlusions needs occlusion_check")
        if render not in INTERMEDIATE_RENDERS:
            raise ValueError(f"render must be one of {INTERMEDIATE_RENDERS}, got {render!r}")
        if not 0.0 <= temporal_weight < 1.0:
            raise ValueError(f"temporal_weight must be in [0, 1), got {temporal_weight}")
        self.render = render
        self._temporal = TemporalFilter(flow, warper, temporal_weight) if temporal_weight > 0 else None
        self._affine = AffineRenderer()
        self._flow = flow
        self._warper = warper
        self._max_frames = max_frames
        self.mode = mode
        self._occlusion_check = occlusion_check
        self._fill = fill_occlusions
        self._finished = False
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

    def probe(self, frame: np.ndarray) -> MotionProbe | None:
        """Lazy motion of `frame` to the newest key (None before the first key): pass it on to add_frame.

        A key-frame policy may look at it first; either way the flow is computed at most once.
        """
        if self._newest_key_id is None:
            return None
        key = self._keys[self._newest_key_id]
        return MotionProbe(lambda: self._flow.motion(frame, key.original, self._occlusion_check))

    def add_frame(self, frame_id: int, frame: np.ndarray, key_id: int, probe: MotionProbe | None = None) -> None:
        """Add the next original frame; key_id == frame_id for a key frame, else the newest key.

        `probe`: from `probe(frame)` just before, to reuse motion already computed. Beyond
        `max_frames` waiting frames, the oldest are emitted as "failed".
        """
        if self._finished:
            raise ValueError("finish() was called: no more frames")
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
        warp, motion = None, None
        if key_id == frame_id:
            self._keys[key_id] = _Key(original=frame)
            self._newest_key_id = key_id
            if self.mode == "buffered":
                self._link_next_key(key_id)
        elif self._keys[key_id].failed:
            pass
        elif self.render == "warp":
            warp = self._warp_to(frame, key_id, probe() if probe is not None else None)
        elif self.render == "affine-flow":
            motion = probe() if probe is not None else self._flow.motion(frame, self._keys[key_id].original, False)
        self._waiting.append(_Waiting(frame_id, key_id, frame, warp, motion))
        self._drain()
        while len(self._waiting) > self._max_frames:
            evicted = self._waiting.popleft()
            self._emit(evicted.frame_id, evicted.frame, "failed", None)
            self._stats[STAT_EVICTED] += 1
            self._drain()
        self._release_keys()

    def add_stylized(self, key_id: int, stylized: np.ndarray, coefficients: np.ndarray | None = None) -> None:
        """The stylized key frame (any size) arrived; results for keys no longer tracked are ignored.

        coefficients: the stylizer's h x w x 12 colour maps of this key (RGB [0, 1], A row-major
        then b; see mobile_sim.affine), used by the affine renders and otherwise ignored.
        """
        _check_bgr("stylized key frame", stylized)
        maps = AffineCoefficients.from_model(coefficients) if coefficients is not None else None
        key = self._open_key(key_id)
        if key is not None:
            self._resolve(key, stylized, maps)

    def add_coefficients(self, key_id: int, coefficients: np.ndarray) -> np.ndarray | None:
        """The stylizer's colour maps of a key arrived instead of its stylized frame (see `add_stylized`).

        The key frame is rendered from its original, which is what the stylizer output up to the maps'
        quantization. Returns that frame, or None when the key is no longer tracked.
        """
        maps = AffineCoefficients.from_model(coefficients)
        key = self._open_key(key_id)
        if key is None:
            return None
        stylized = self._affine.apply(key.original, maps)
        self._resolve(key, stylized, maps)
        return stylized

    def _resolve(self, key: _Key, stylized: np.ndarray, maps: AffineCoefficients | None) -> None:
        key.stylized = stylized
        if self.render != "warp":
            key.coefficients = maps
        if self._fill:
            key.color_map = ColorMap.fit(key.original, stylized)
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

    def finish(self) -> None:
        """No more frames: buffered frames after the last key stop waiting for a next key."""
        self._finished = True
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

    def _warp_to(self, frame: np.ndarray, key_id: int, motion: Motion | None) -> _Warp:
        """Maps (and occlusion mask) from `frame` to key `key_id`, from `motion` if already computed."""
        key = self._keys[key_id]
        if motion is None:
            motion = self._flow.motion(frame, key.original, self._occlusion_check)
        if key.stylized is not None:
            key_size = image_size(key.stylized)
        else:
            key_size = self._expected_key_size or self._frame_size()
        return _Warp(key_id, self._maps(motion, key_size), motion.occluded)

    def _maps(self, motion: Motion, key_size: tuple[int, int]) -> WarpMaps:
        """Remap maps straight from the motion's working-size flow."""
        return self._warper.maps_from_flow(motion.small_flow, key_size, motion.frame_size)

    def _link_next_key(self, key_id: int) -> None:
        """Buffered mode: frames waiting on the previous key also get a warp (or, "affine-flow", the flow)
        from the new key."""
        for waiting in self._waiting:
            if (
                waiting.next_key_id is not None
                or waiting.frame_id == waiting.key_id
                or self._keys[waiting.key_id].failed
            ):
                continue
            waiting.next_key_id = key_id
            if self.render == "warp":
                waiting.next_warp = self._warp_to(waiting.frame, key_id, None)
            elif self.render == "affine-flow":
                waiting.next_motion = self._flow.motion(waiting.frame, self._keys[key_id].original, False)

    def _ready_to_render(self, waiting: _Waiting) -> bool:
        key = self._keys[waiting.key_id]
        if not key.resolved:
            return False
        if self.mode == "live" or waiting.frame_id == waiting.key_id or key.failed:
            return True
        if waiting.next_key_id is None:
            return self._finished
        return self._keys[waiting.next_key_id].resolved

    def _drain(self) -> None:
        """Emit waiting frames from the front while the keys they need are resolved."""
        while self._waiting and self._ready_to_render(self._waiting[0]):
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
                self._emit(waiting.frame_id, image, "key", waiting.key_id, waiting.frame)
                return
            if key.coefficients is not None:
                self._emit(
                    waiting.frame_id,
                    self._affine.apply(waiting.frame, self._blend(waiting, key)),
                    "affine",
                    waiting.key_id,
                    waiting.frame,
                )
                return
            if waiting.warp is None:  # an affine render, but this key came without coefficients
                waiting.warp = self._warp_to(waiting.frame, waiting.key_id, waiting.motion)
            warps = [(waiting.warp, key)]
            next_key = self._keys[waiting.next_key_id] if waiting.next_key_id is not None else None
            if waiting.next_warp is not None and next_key is not None and next_key.stylized is not None:
                warps.append((waiting.next_warp, next_key))
            self._emit(waiting.frame_id, self._compose(waiting, warps), "warped", waiting.key_id, waiting.frame)
        elif self._fallback is not None:
            fallback_id, fallback = self._fallback
            assert fallback.stylized is not None, "the fallback key was stylized"
            if fallback.coefficients is not None:
                motion = (
                    self._flow.motion(waiting.frame, fallback.original, False) if self.render == "affine-flow" else None
                )
                recoloured = self._affine.apply(waiting.frame, self._key_maps(fallback, motion))
                self._emit(waiting.frame_id, recoloured, "fallback", fallback_id, waiting.frame)
                return
            motion = self._flow.motion(waiting.frame, fallback.original, self._occlusion_check)
            warp = _Warp(fallback_id, self._maps(motion, image_size(fallback.stylized)), motion.occluded)
            composed = self._compose(waiting, [(warp, fallback)])
            self._emit(waiting.frame_id, composed, "fallback", fallback_id, waiting.frame)
        else:
            self._emit(waiting.frame_id, waiting.frame, "failed", None)

    def _blend(self, waiting: _Waiting, key: _Key) -> AffineCoefficients:
        """The colour maps for a frame of `key`: moved along its flow ("affine-flow"), and buffered, blended with
        the next key's by time distance when that key has maps of the same grid."""
        maps = self._key_maps(key, waiting.motion)
        if waiting.next_key_id is None:
            return maps
        following = self._keys[waiting.next_key_id]
        if following.coefficients is None or following.coefficients.grid_size != maps.grid_size:
            return maps
        t = (waiting.frame_id - waiting.key_id) / (waiting.next_key_id - waiting.key_id)
        return maps.blended(self._key_maps(following, waiting.next_motion), t)

    @staticmethod
    def _key_maps(key: _Key, motion: Motion | None) -> AffineCoefficients:
        """The key's colour maps, moved along `motion` (frame -> key flow) when given."""
        assert key.coefficients is not None, "only keys with coefficients are applied"
        return key.coefficients.moved(motion.small_flow) if motion is not None else key.coefficients

    def _compose(self, waiting: _Waiting, warps: list[tuple[_Warp, _Key]]) -> np.ndarray:
        """Warp from one key, or blend two (previous, next) by time distance x consistency; then fill."""
        images = []
        for warp, key in warps:
            assert key.stylized is not None, "only stylized keys are warped"
            images.append(self._warper.warp(resize_to(key.stylized, warp.maps.key_size), warp.maps))
        occluded = warps[0][0].occluded
        nearest = warps[0][1]
        if len(warps) == 2:
            (previous, _), (following, _) = warps
            t = (waiting.frame_id - previous.key_id) / (following.key_id - previous.key_id)
            weights = [np.full(images[0].shape[:2], w, np.float32) for w in (1.0 - t, t)]
            if previous.occluded is not None and following.occluded is not None:
                for weight, warp_mask in zip(weights, (previous.occluded, following.occluded), strict=True):
                    weight[warp_mask] = 0.0
                occluded = previous.occluded & following.occluded
                weights[0][occluded], weights[1][occluded] = 1.0 - t, t
            images = [cv2.blendLinear(images[0], images[1], weights[0], weights[1])]
            if t > BLEND_NEAREST:
                nearest = warps[1][1]
        image = images[0]
        if self._fill and occluded is not None and nearest.color_map is not None and occluded.any():
            image[occluded] = nearest.color_map.apply(waiting.frame[occluded][:, np.newaxis, :])[:, 0, :]
        return image

    def _emit(
        self, frame_id: int, image: np.ndarray, kind: OutputKind, key_id: int | None, original: np.ndarray | None = None
    ) -> None:
        """Queue an output frame; stylized ones (with their `original`) go through the temporal filter."""
        if self._temporal is not None:
            if original is None:
                self._temporal.reset()
            else:
                image = self._temporal(original, image)
        self._ready.append(OutputFrame(frame_id=frame_id, image=image, kind=kind, key_id=key_id))
        self._stats[kind] += 1

    def _release_keys(self) -> None:
        """Forget keys no waiting frame needs, except the newest (later frames use it)."""
        needed = {waiting.key_id for waiting in self._waiting}
        needed.update(waiting.next_key_id for waiting in self._waiting if waiting.next_key_id is not None)
        if self._newest_key_id is not None:
            needed.add(self._newest_key_id)
        for key_id in [key_id for key_id in self._keys if key_id not in needed]:
            del self._keys[key_id]
