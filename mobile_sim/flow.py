"""Dense optical flow between an intermediate frame and its key frame, and the motion the phone derives from it.

Methods: OpenCV DIS (presets), Farneback, and pyramidal Lucas-Kanade made dense from a grid of
tracked points. Flow is computed on frames shrunk to at most `max_width` pixels wide and scaled
back up: camera motion is smooth, and at 1920x1080 full-resolution DIS alone exceeds the
per-frame budget (bench/interpolation.py measures both).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from mobile_sim.warp import image_size

DIS_PRESETS: dict[str, int] = {
    "dis-ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "dis-fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "dis-medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
METHOD_FARNEBACK = "farneback"
METHOD_LK = "lk"
FLOW_METHODS: tuple[str, ...] = (*DIS_PRESETS, METHOD_FARNEBACK, METHOD_LK)
DEFAULT_METHOD = "dis-ultrafast"
DEFAULT_MAX_WIDTH = 640
"""Flow is estimated at this width at most; None in FlowEstimator means full resolution."""

# Farneback (Farneback 2003) with OpenCV's commonly used settings.
FARNEBACK_PYR_SCALE, FARNEBACK_LEVELS, FARNEBACK_WINSIZE = 0.5, 3, 15
FARNEBACK_ITERATIONS, FARNEBACK_POLY_N, FARNEBACK_POLY_SIGMA = 3, 5, 1.2
# Pyramidal Lucas-Kanade (Bouguet 2001) on a regular grid of points.
LK_GRID_STEP = 8
LK_WINDOW = (21, 21)
LK_LEVELS = 3
LK_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03)
LK_FILL_SIGMA = 1.5
"""Gaussian sigma (grid cells) of the normalised convolution that fills points LK lost."""
LK_MIN_WEIGHT = 1e-6

# Forward-backward consistency (Sundaram, Brox & Keutzer, ECCV 2010): pixel x is occluded when
# |w(x) + w'(x + w(x))|^2 > ALPHA (|w|^2 + |w'|^2) + BETA, w forward and w' backward flow.
FB_ALPHA = 0.01
FB_BETA_PX2 = 0.5
OCCLUSION_CHECK_WIDTH = 320
"""The forward-backward check runs on flows shrunk to at most this width (its mask is coarse anyway)."""
PHOTOMETRIC_MIN_ERROR = 10
"""A flow-inconsistent pixel only counts as occluded if the warped key differs from the frame by more
than this (grey levels): DIS is often inconsistent on flat areas, where warping is harmless."""


def gray(image: np.ndarray) -> np.ndarray:
    """8-bit single-channel view of a BGR or grayscale uint8 image."""
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    raise ValueError(f"images must be HxW or HxWx3, got shape {image.shape}")


def resize_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Flow field resampled (bilinear) to (width, height), vectors scaled to the new pixel size."""
    height, width = flow.shape[:2]
    if (width, height) == size:
        return flow
    scaled = flow * np.array([size[0] / width, size[1] / height], np.float32)  # on the small side: cheaper
    resized: np.ndarray = cv2.resize(scaled, size, interpolation=cv2.INTER_LINEAR)
    return resized


def _sampling_maps(at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """remap maps that read pixel x + at(x) for every pixel x."""
    height, width = at.shape[:2]
    offset_x, offset_y = cv2.split(at)
    map_x: np.ndarray = offset_x + np.arange(width, dtype=np.float32)[np.newaxis, :]
    map_y: np.ndarray = offset_y + np.arange(height, dtype=np.float32)[:, np.newaxis]
    return map_x, map_y


def sample_flow(flow: np.ndarray, at: np.ndarray) -> np.ndarray:
    """`flow` sampled (bilinear, border replicated) at pixel x + at(x); `at` has flow's shape."""
    map_x, map_y = _sampling_maps(at)
    return cv2.remap(flow, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def chain_flows(frame_to_previous: np.ndarray, previous_to_key: np.ndarray) -> np.ndarray:
    """Compose frame->previous and previous->key flows into frame->key: f(x) = a(x) + b(x + a(x))."""
    return frame_to_previous + sample_flow(previous_to_key, frame_to_previous)


def _squared_norm(flow: np.ndarray) -> np.ndarray:
    x, y = cv2.split(flow)
    norm: np.ndarray = x * x + y * y
    return norm


def forward_backward_occlusion(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Boolean HxW mask of pixels whose forward flow the backward flow does not undo (Sundaram et al. 2010).

    `forward` maps frame pixels into the key, `backward` key pixels into the frame. Flagged pixels
    are occluded (or disoccluded) or mismatched: warping cannot be trusted there.
    """
    back_at = sample_flow(backward, forward)
    bound = FB_ALPHA * (_squared_norm(forward) + _squared_norm(back_at)) + FB_BETA_PX2
    mask: np.ndarray = _squared_norm(forward + back_at) > bound
    return mask


@dataclass(frozen=True, eq=False)
class Motion:
    """Frame->key flow, as estimated (at most the estimator's max width), and where the warp cannot be trusted.

    small_flow: h x w x 2 float32 flow at the working size, in working-size pixels, covering the frame.
    frame_size: (width, height) of the frame.
    occluded: HxW bool at frame resolution, pixels that fail the forward-backward check and whose
    warped key differs visibly from the frame; None when only the forward flow was computed.
    """

    small_flow: np.ndarray
    frame_size: tuple[int, int]
    occluded: np.ndarray | None

    @functools.cached_property
    def mean_magnitude(self) -> float:
        """Mean flow length in frame pixels (computed on first use: only the adaptive policy reads it)."""
        norm = np.mean(np.sqrt(_squared_norm(self.small_flow)))
        return float(norm) * self.frame_size[0] / self.small_flow.shape[1]

    @functools.cached_property
    def flow(self) -> np.ndarray:
        """The flow at frame resolution, in frame pixels (resampled on first use; the warp does not need it)."""
        return resize_flow(self.small_flow, self.frame_size)

    @property
    def occluded_share(self) -> float:
        """Share of pixels flagged by the forward-backward check (0 when it was not run)."""
        return float(np.mean(self.occluded)) if self.occluded is not None else 0.0


class MotionProbe:
    """Motion of one frame to a key, computed on first use and then kept (so it is computed once)."""

    def __init__(self, compute: Callable[[], Motion]) -> None:
        self._compute = compute
        self.motion: Motion | None = None

    def __call__(self) -> Motion:
        """The motion, computing it the first time."""
        if self.motion is None:
            self.motion = self._compute()
        return self.motion


class FlowEstimator:
    """Backward flow (frame -> key) with one of FLOW_METHODS, at most `max_width` wide.

    DIS: Kroeger et al., "Fast Optical Flow using Dense Inverse Search", ECCV 2016. Farneback:
    "Two-Frame Motion Estimation Based on Polynomial Expansion", SCIA 2003. LK: Bouguet's
    pyramidal Lucas-Kanade tracker on a grid every LK_GRID_STEP pixels; points it loses are filled
    by normalised Gaussian convolution of the found ones, and the grid is upsampled bilinearly
    (OpenCV 5 without contrib has no dense LK; the grid keeps it at camera rate).
    The shrunk grey key is kept while the same key array (by identity) comes back: do not modify
    a key array in place. Holds OpenCV state, so it is not thread-safe.
    """

    def __init__(self, method: str = DEFAULT_METHOD, max_width: int | None = DEFAULT_MAX_WIDTH) -> None:
        if method not in FLOW_METHODS:
            raise ValueError(f"unknown flow method {method!r}; choose one of {', '.join(FLOW_METHODS)}")
        if max_width is not None and max_width < LK_GRID_STEP:
            raise ValueError(f"max_width must be >= {LK_GRID_STEP} or None, got {max_width}")
        self.method = method
        self.max_width = max_width
        self._dis = cv2.DISOpticalFlow.create(DIS_PRESETS[method]) if method in DIS_PRESETS else None
        self._last_key: tuple[np.ndarray, np.ndarray] | None = None  # (key, its shrunk grey): keys repeat

    def working_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) flow is computed at for frames of `size`."""
        width, height = size
        if self.max_width is None or width <= self.max_width:
            return size
        return self.max_width, max(1, round(height * self.max_width / width))

    def estimate(self, frame: np.ndarray, key: np.ndarray) -> np.ndarray:
        """HxWx2 float32 flow f such that frame pixel x shows key pixel x + f(x)."""
        small_frame, small_key = self._shrink(frame, key)
        return resize_flow(self._flow(small_frame, small_key), (frame.shape[1], frame.shape[0]))

    def motion(self, frame: np.ndarray, key: np.ndarray, occlusion: bool) -> Motion:
        """Frame->key flow; with `occlusion`, also key->frame flow for the forward-backward mask."""
        small_frame, small_key = self._shrink(frame, key)
        size = (frame.shape[1], frame.shape[0])
        small_flow = self._flow(small_frame, small_key)
        occluded = None
        if occlusion:
            backward = self._flow(small_key, small_frame)
            check_width = min(OCCLUSION_CHECK_WIDTH, small_frame.shape[1])
            check_size = (check_width, max(1, round(small_frame.shape[0] * check_width / small_frame.shape[1])))
            forward, backward = resize_flow(small_flow, check_size), resize_flow(backward, check_size)
            check_frame, check_key = (
                cv2.resize(g, check_size, interpolation=cv2.INTER_AREA) if image_size(g) != check_size else g
                for g in (small_frame, small_key)
            )
            small_mask = forward_backward_occlusion(forward, backward)
            small_mask &= _warp_error(check_frame, check_key, forward) > PHOTOMETRIC_MIN_ERROR
            occluded = cv2.resize(small_mask.view(np.uint8), size, interpolation=cv2.INTER_NEAREST).view(bool)
        return Motion(small_flow=small_flow, frame_size=size, occluded=occluded)

    def _shrink(self, frame: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if frame.shape != key.shape:
            raise ValueError(f"frame {frame.shape} and key {key.shape} must have the same shape")
        size = self.working_size((frame.shape[1], frame.shape[0]))

        def shrink(image: np.ndarray) -> np.ndarray:
            grey = gray(image)
            return cv2.resize(grey, size, interpolation=cv2.INTER_AREA) if image_size(grey) != size else grey

        if self._last_key is None or self._last_key[0] is not key:
            self._last_key = (key, shrink(key))
        return shrink(frame), self._last_key[1]

    def _flow(self, frame: np.ndarray, key: np.ndarray) -> np.ndarray:
        if self._dis is not None:
            # No preallocated output: OpenCV 5.0's DIS reads a passed flow array as its initial guess, and
            # uninitialised memory there sends it out of bounds (segfault). The stubs do not allow None.
            dis_flow: np.ndarray = self._dis.calc(frame, key, None)  # type: ignore[call-overload]
            return dis_flow
        if self.method == METHOD_FARNEBACK:
            return cv2.calcOpticalFlowFarneback(
                frame,
                key,
                None,
                FARNEBACK_PYR_SCALE,
                FARNEBACK_LEVELS,
                FARNEBACK_WINSIZE,
                FARNEBACK_ITERATIONS,
                FARNEBACK_POLY_N,
                FARNEBACK_POLY_SIGMA,
                0,
            )
        return _dense_lucas_kanade(frame, key)


def _warp_error(frame: np.ndarray, key: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Absolute grey-level difference between `frame` and `key` warped to it along `flow`."""
    map_x, map_y = _sampling_maps(flow)
    warped = cv2.remap(key, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    error: np.ndarray = cv2.absdiff(warped, frame)
    return error


def _dense_lucas_kanade(frame: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Pyramidal LK on a grid of points, holes filled by normalised convolution, upsampled to the frame."""
    height, width = frame.shape
    xs = np.arange(LK_GRID_STEP // 2, width, LK_GRID_STEP, dtype=np.float32)
    ys = np.arange(LK_GRID_STEP // 2, height, LK_GRID_STEP, dtype=np.float32)
    grid_x, grid_y = np.meshgrid(xs, ys)
    points = np.stack([grid_x, grid_y], axis=-1).reshape(-1, 1, 2)
    tracked, status, _ = cv2.calcOpticalFlowPyrLK(
        frame, key, points, None, winSize=LK_WINDOW, maxLevel=LK_LEVELS, criteria=LK_CRITERIA
    )
    found = status.reshape(len(ys), len(xs)).astype(np.float32)
    grid_flow = (tracked - points).reshape(len(ys), len(xs), 2) * found[..., np.newaxis]
    weight = cv2.GaussianBlur(found, (0, 0), LK_FILL_SIGMA)
    filled = cv2.GaussianBlur(grid_flow, (0, 0), LK_FILL_SIGMA) / np.maximum(weight, LK_MIN_WEIGHT)[..., np.newaxis]
    grid_flow = np.where(found[..., np.newaxis] > 0, grid_flow, filled)
    # Grid point i sits at pixel i * step + step / 2: sample the grid there for every pixel.
    half = LK_GRID_STEP // 2
    map_x = np.broadcast_to((np.arange(width, dtype=np.float32) - half) / LK_GRID_STEP, (height, width))
    map_y = np.broadcast_to((np.arange(height, dtype=np.float32)[:, np.newaxis] - half) / LK_GRID_STEP, (height, width))
    dense: np.ndarray = cv2.remap(
        grid_flow,
        np.ascontiguousarray(map_x),
        np.ascontiguousarray(map_y),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return dense
