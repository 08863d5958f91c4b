"""Rebuilds the stylized video on the phone, in frame order, from stylized key frames.

Live mode warps each frame from the newest key before it as soon as that key is stylized;
buffered mode waits for the next key too and blends both warps by their forward-backward
confidence. Pixels no usable warp covers are filled with the key's colour map (ColorMap).
Render "affine"/"affine-flow" instead applies the stylizer's local affine colour maps, sent with
the key, to each frame itself (moved along the flow to the key with "affine-flow"); buffered, the
maps of both keys are blended by time distance.

The :class:`Reconstructor` keeps frames in order and decides which key(s) each one is rebuilt from;
how a frame is made from them is one :class:`FrameRender` per render kind (:class:`WarpRender`,
:class:`AffineRender`, :class:`AffineFlowRender`), chosen once at construction. Occlusion fill
(:class:`OcclusionFill`) and temporal smoothing (mobile_sim.temporal) are steps composed around it.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
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

    maps: WarpMaps
    occluded: np.ndarray | None


@dataclass(eq=False)
class _Toward:
    """What a render computed toward a key as soon as the frame and the key were both known."""

    warp: _Warp | None = None  # render "warp"
    motion: Motion | None = None  # render "affine-flow": frame -> key flow, for moving the key's colour maps


@dataclass(eq=False)
class _Waiting:
    frame_id: int
    key_id: int
    frame: np.ndarray
    toward: _Toward | None  # None for key frames and frames of a key known to have failed
    next_key_id: int | None = None  # buffered mode: the next key, once it is added
    next_toward: _Toward | None = None  # buffered mode: toward the next key


@dataclass(frozen=True, eq=False)
class _Source:
    """A key a frame is rebuilt from, with what was computed toward it (None: nothing, e.g. a fallback key)."""

    key_id: int
    key: _Key
    toward: _Toward | None


def _check_bgr(name: str, image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != BGR_CHANNELS or image.dtype != np.uint8:
        raise ValueError(f"{name} must be BGR uint8 HxWx3, got {image.shape} {image.dtype}")


def _time_share(frame_id: int, previous: _Source, following: _Source) -> float:
    """Where the frame lies between two keys: 0 at the previous, 1 at the following."""
    return (frame_id - previous.key_id) / (following.key_id - previous.key_id)


class OcclusionFill:
    """Pixels no warp can be trusted at get the key's colour map (ColorMap) applied to the original frame."""

    def fit(self, key: _Key) -> None:
        """Fit the key's colour map once its stylized frame arrived."""
        assert key.stylized is not None, "only stylized keys have a colour map"
        key.color_map = ColorMap.fit(key.original, key.stylized)

    def apply(self, image: np.ndarray, frame: np.ndarray, occluded: np.ndarray | None, key: _Key) -> np.ndarray:
        """`image` (changed in place) with the `occluded` pixels of `frame` recoloured by `key`'s colour map."""
        if occluded is not None and key.color_map is not None and occluded.any():
            image[occluded] = key.color_map.apply(frame[occluded][:, np.newaxis, :])[:, 0, :]
        return image


class FrameRender(ABC):
    """How a frame between keys is made from stylized keys: one subclass per IntermediateRender, chosen once.

    `prepare` runs as soon as a frame and a key it may be rebuilt from are both known (the frame is
    added, or, buffered, the next key is), so that `render` only costs remaps when the stylized key
    arrives. Not thread-safe, like the Reconstructor that owns it.
    """

    uses_coefficients = False
    """Whether keys keep the colour maps the stylizer sent with them."""

    def prepare(self, frame: np.ndarray, key: _Key, key_size: tuple[int, int], probe: MotionProbe | None) -> _Toward:
        """What to compute now toward `key`, whose stylized frame has (or is expected to have) `key_size`.

        `probe`: the lazy motion of `frame` to `key`, if the caller has one. Default: nothing.
        """
        return _Toward()

    @abstractmethod
    def render(self, frame_id: int, frame: np.ndarray, sources: Sequence[_Source]) -> tuple[np.ndarray, OutputKind]:
        """The frame rebuilt from a stylized key (`sources[0]`) and its output kind ("warped" or "affine").

        Buffered, `sources[1]` is the next key (resolved: stylized or failed); each render decides
        whether it can use it.
        """


class WarpRender(FrameRender):
    """Render "warp": the stylized key warped to the frame along the flow; buffered, the warps of both keys
    blended per pixel by time distance and forward-backward consistency; then the occlusion fill, if any."""

    def __init__(self, flow: FlowEstimator, warper: Warper, occlusion_check: bool, fill: OcclusionFill | None) -> None:
        self._flow = flow
        self._warper = warper
        self._occlusion_check = occlusion_check
        self._fill = fill

    def prepare(self, frame: np.ndarray, key: _Key, key_size: tuple[int, int], probe: MotionProbe | None) -> _Toward:
        return _Toward(warp=self.warp(frame, key, key_size, probe() if probe is not None else None))

    def render(self, frame_id: int, frame: np.ndarray, sources: Sequence[_Source]) -> tuple[np.ndarray, OutputKind]:
        own = sources[0]
        warps = [(own, self._warp_of(frame, own))]
        if len(sources) > 1:
            following = sources[1]
            if (
                following.toward is not None
                and following.toward.warp is not None
                and following.key.stylized is not None
            ):
                warps.append((following, following.toward.warp))
        return self._compose(frame_id, frame, warps), "warped"

    def warp(self, frame: np.ndarray, key: _Key, key_size: tuple[int, int], motion: Motion | None) -> _Warp:
        """Maps (and occlusion mask) from `frame` to `key`, from `motion` if already computed."""
        if motion is None:
            motion = self._flow.motion(frame, key.original, self._occlusion_check)
        return _Warp(self._warper.maps_from_flow(motion.small_flow, key_size, motion.frame_size), motion.occluded)

    def _warp_of(self, frame: np.ndarray, source: _Source) -> _Warp:
        """The warp prepared toward a stylized key, else one computed now (from the prepared flow, if any)."""
        toward = source.toward if source.toward is not None else _Toward()
        if toward.warp is not None:
            return toward.warp
        assert source.key.stylized is not None, "only stylized keys are warped"
        return self.warp(frame, source.key, image_size(source.key.stylized), toward.motion)

    def _compose(self, frame_id: int, frame: np.ndarray, warps: list[tuple[_Source, _Warp]]) -> np.ndarray:
        """Warp from one key, or blend two (previous, next) by time distance x consistency; then fill."""
        images = []
        for source, warp in warps:
            assert source.key.stylized is not None, "only stylized keys are warped"
            images.append(self._warper.warp(resize_to(source.key.stylized, warp.maps.key_size), warp.maps))
        occluded = warps[0][1].occluded
        nearest = warps[0][0]
        if len(warps) == 2:
            (previous, previous_warp), (following, following_warp) = warps
            t = _time_share(frame_id, previous, following)
            weights = [np.full(images[0].shape[:2], w, np.float32) for w in (1.0 - t, t)]
            if previous_warp.occluded is not None and following_warp.occluded is not None:
                for weight, warp_mask in zip(weights, (previous_warp.occluded, following_warp.occluded), strict=True):
                    weight[warp_mask] = 0.0
                occluded = previous_warp.occluded & following_warp.occluded
                weights[0][occluded], weights[1][occluded] = 1.0 - t, t
            images = [cv2.blendLinear(images[0], images[1], weights[0], weights[1])]
            if t > BLEND_NEAREST:
                nearest = following
        image = images[0]
        if self._fill is not None:
            image = self._fill.apply(image, frame, occluded, nearest.key)
        return image


class AffineRender(FrameRender):
    """Render "affine": the stylizer's colour maps of the key applied to the frame, with no flow at all.

    Buffered, the maps of both keys are blended by time distance (a blend of affine maps is affine) and
    applied once. Frames of a key that came without maps are warped (`warped`).
    """

    uses_coefficients = True

    def __init__(self, affine: AffineRenderer, warped: WarpRender) -> None:
        self._affine = affine
        self._warped = warped

    def render(self, frame_id: int, frame: np.ndarray, sources: Sequence[_Source]) -> tuple[np.ndarray, OutputKind]:
        own = sources[0]
        if own.key.coefficients is None:
            return self._warped.render(frame_id, frame, sources)
        maps = self._maps(frame, own)
        if len(sources) > 1:
            following = sources[1]
            if following.key.coefficients is not None and following.key.coefficients.grid_size == maps.grid_size:
                maps = maps.blended(self._maps(frame, following), _time_share(frame_id, own, following))
        return self._affine.apply(frame, maps), "affine"

    def _maps(self, frame: np.ndarray, source: _Source) -> AffineCoefficients:
        """The key's colour maps as applied to `frame`."""
        assert source.key.coefficients is not None, "only keys with coefficients are applied"
        return source.key.coefficients


class AffineFlowRender(AffineRender):
    """Render "affine-flow": as "affine", each key's colour maps first moved along the frame's flow to that key."""

    def __init__(self, affine: AffineRenderer, warped: WarpRender, flow: FlowEstimator) -> None:
        super().__init__(affine, warped)
        self._flow = flow

    def prepare(self, frame: np.ndarray, key: _Key, key_size: tuple[int, int], probe: MotionProbe | None) -> _Toward:
        return _Toward(motion=probe() if probe is not None else self._flow.motion(frame, key.original, False))

    def _maps(self, frame: np.ndarray, source: _Source) -> AffineCoefficients:
        maps = super()._maps(frame, source)
        if source.toward is None:
            motion: Motion | None = self._flow.motion(frame, source.key.original, False)
        else:
            motion = source.toward.motion
        return maps.moved(motion.small_flow) if motion is not None else maps


def make_render(
    render: IntermediateRender,
    flow: FlowEstimator,
    warper: Warper,
    affine: AffineRenderer,
    occlusion_check: bool,
    fill: OcclusionFill | None,
) -> FrameRender:
    """The FrameRender of a render kind (the affine ones warp keys that came without colour maps)."""
    warped = WarpRender(flow, warper, occlusion_check, fill)
    if render == "warp":
        return warped
    if render == "affine":
        return AffineRender(affine, warped)
    return AffineFlowRender(affine, warped, flow)


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
        self.mode = mode
        self._temporal = TemporalFilter(flow, warper, temporal_weight) if temporal_weight > 0 else None
        self._fill = OcclusionFill() if fill_occlusions else None
        self._affine = AffineRenderer()
        self._renderer = make_render(render, flow, warper, self._affine, occlusion_check, self._fill)
        self._flow = flow
        self._max_frames = max_frames
        self._occlusion_check = occlusion_check
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
        toward = None
        if key_id == frame_id:
            self._keys[key_id] = _Key(original=frame)
            self._newest_key_id = key_id
            if self.mode == "buffered":
                self._link_next_key(key_id)
        elif not self._keys[key_id].failed:
            key = self._keys[key_id]
            toward = self._renderer.prepare(frame, key, self._key_size(key), probe)
        self._waiting.append(_Waiting(frame_id, key_id, frame, toward))
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
        if self._renderer.uses_coefficients:
            key.coefficients = maps
        if self._fill is not None:
            self._fill.fit(key)
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

    def _key_size(self, key: _Key) -> tuple[int, int]:
        """Size of the key's stylized frame: as received, else as the last key received, else the frames'."""
        if key.stylized is not None:
            return image_size(key.stylized)
        return self._expected_key_size or self._frame_size()

    def _link_next_key(self, key_id: int) -> None:
        """Buffered mode: frames waiting on the previous key are also prepared toward the new key."""
        key = self._keys[key_id]
        key_size = self._key_size(key)
        for waiting in self._waiting:
            if (
                waiting.next_key_id is not None
                or waiting.frame_id == waiting.key_id
                or self._keys[waiting.key_id].failed
            ):
                continue
            waiting.next_key_id = key_id
            waiting.next_toward = self._renderer.prepare(waiting.frame, key, key_size, None)

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
        """The frame as its key itself, rebuilt from its key(s) by the render, or from the fallback key."""
        frame_id, frame = waiting.frame_id, waiting.frame
        if key.stylized is None:
            self._render_fallback(frame_id, frame)
            return
        if self._fallback is None or self._fallback[0] < waiting.key_id:
            self._fallback = (waiting.key_id, key)
        if frame_id == waiting.key_id:
            image = resize_to(key.stylized, self._frame_size())
            if image is key.stylized:  # the key is kept as fallback: hand out a copy
                image = image.copy()
            self._emit(frame_id, image, "key", waiting.key_id, frame)
            return
        sources = [_Source(waiting.key_id, key, waiting.toward)]
        if waiting.next_key_id is not None:
            sources.append(_Source(waiting.next_key_id, self._keys[waiting.next_key_id], waiting.next_toward))
        image, kind = self._renderer.render(frame_id, frame, sources)
        self._emit(frame_id, image, kind, waiting.key_id, frame)

    def _render_fallback(self, frame_id: int, frame: np.ndarray) -> None:
        """A frame of a failed key: rebuilt from the newest good key emitted so far, else the original."""
        if self._fallback is None:
            self._emit(frame_id, frame, "failed", None)
            return
        fallback_id, fallback = self._fallback
        image, _ = self._renderer.render(frame_id, frame, [_Source(fallback_id, fallback, None)])
        self._emit(frame_id, image, "fallback", fallback_id, frame)

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
