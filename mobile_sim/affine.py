"""The stylizer's local affine colour maps, applied on the phone to frames after their key (numpy + OpenCV).

The paper's DNN ends in meta-smoothing: per-pixel affine colour maps ``out = A(x) · in + b(x)``,
fitted at low resolution, upsampled bilinearly (align_corners=False) and applied to the
full-resolution content (edge_worker/model/meta_smoothing.py). When the edge returns those
coefficients with a key frame, the phone can apply them to every following frame instead of
warping the stylized key: edges and content come from the frame itself, so nothing is disoccluded,
and the downlink carries a small coefficient grid instead of a stylized frame. Optionally the grid
is first moved along the frame->key flow, so each pixel takes the colour map of the key pixel it
shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mobile_sim.warp import image_size

COEFFICIENTS = 12
"""A row-major 3x3 matrix A, then the offset b."""
CHANNELS = 3
UINT8_MAX = 255.0
RGB_TO_BGR = (2, 1, 0)


def _check_coefficients(coeffs: np.ndarray) -> None:
    if coeffs.ndim != 3 or coeffs.shape[2] != COEFFICIENTS or min(coeffs.shape[:2]) < 1:
        raise ValueError(f"coefficients must be h x w x {COEFFICIENTS}, got shape {coeffs.shape}")


@dataclass(frozen=True, eq=False)
class AffineCoefficients:
    """A key frame's colour maps as 12 low-resolution planes for BGR uint8 frames.

    planes[3 * j + i] weighs input BGR channel i in output BGR channel j; planes[9 + j] is output
    channel j's offset in grey levels. Same maps as the model's RGB [0, 1] coefficients.
    """

    planes: tuple[np.ndarray, ...]

    @classmethod
    def from_model(cls, coeffs: np.ndarray) -> AffineCoefficients:
        """From the stylizer's h x w x 12 coefficients (RGB in [0, 1] to RGB in [0, 1]; A row-major, then b)."""
        _check_coefficients(coeffs)
        rgb = coeffs.astype(np.float32, copy=False)
        matrix = [rgb[..., 3 * RGB_TO_BGR[j] + RGB_TO_BGR[i]] for j in range(CHANNELS) for i in range(CHANNELS)]
        offsets = [rgb[..., 9 + RGB_TO_BGR[j]] * np.float32(UINT8_MAX) for j in range(CHANNELS)]
        return cls(tuple(np.ascontiguousarray(plane) for plane in (*matrix, *offsets)))

    @property
    def grid_size(self) -> tuple[int, int]:
        """(width, height) of the coefficient grid."""
        return image_size(self.planes[0])

    def moved(self, small_flow: np.ndarray) -> AffineCoefficients:
        """The maps moved along a frame->key flow (h x w x 2 in its own pixels, covering the frame):
        grid cell x takes the maps at x + f(x) of the key's grid. Costs a remap of the small grid."""
        grid_width, grid_height = self.grid_size
        flow_width, flow_height = image_size(small_flow)
        shrink = grid_width < flow_width or grid_height < flow_height
        flow = cv2.resize(
            small_flow, self.grid_size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        ) * np.array([grid_width / flow_width, grid_height / flow_height], np.float32)
        map_x = flow[..., 0] + np.arange(grid_width, dtype=np.float32)[np.newaxis, :]
        map_y = flow[..., 1] + np.arange(grid_height, dtype=np.float32)[:, np.newaxis]
        stacked = cv2.merge(self.planes)
        moved = cv2.remap(stacked, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return AffineCoefficients(tuple(cv2.split(moved)))

    def blended(self, other: AffineCoefficients, t: float) -> AffineCoefficients:
        """``(1 - t) · self + t · other`` plane by plane (same grid): still one affine map per pixel."""
        if other.grid_size != self.grid_size:
            raise ValueError(f"grids differ: {self.grid_size} and {other.grid_size}")
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t must be in [0, 1], got {t}")
        return AffineCoefficients(
            tuple(cv2.addWeighted(a, 1.0 - t, b, t, 0.0) for a, b in zip(self.planes, other.planes, strict=True))
        )


class AffineRenderer:
    """Applies AffineCoefficients to BGR uint8 frames at full resolution, with cv2 operations only.

    Each of the 12 planes is upsampled bilinearly (cv2.resize, pixel centres as the model's
    align_corners=False) into a reused buffer and multiply-accumulated into the output channel;
    saturation and rounding to uint8 come last, as in the model. Keeps per-size buffers, so it is
    not thread-safe.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}

    def _workspace(self, size: tuple[int, int]) -> tuple[np.ndarray, ...]:
        """Three float input planes, three float output planes and one upsampled plane for `size`."""
        if size not in self._buffers:
            self._buffers.clear()
            width, height = size
            self._buffers[size] = tuple(np.empty((height, width), np.float32) for _ in range(2 * CHANNELS + 1))
        return self._buffers[size]

    def apply(self, frame: np.ndarray, coefficients: AffineCoefficients) -> np.ndarray:
        """The stylized frame: the maps upsampled to the frame and applied to it (BGR uint8 in and out)."""
        if frame.ndim != 3 or frame.shape[2] != CHANNELS or frame.dtype != np.uint8:
            raise ValueError(f"frame must be BGR uint8 HxWx3, got {frame.shape} {frame.dtype}")
        size = image_size(frame)
        grid_width, grid_height = coefficients.grid_size
        shrink = grid_width > size[0] or grid_height > size[1]  # only toy grids; the model antialiases there
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        workspace = self._workspace(size)
        inputs, outputs, upsampled = workspace[:CHANNELS], workspace[CHANNELS : 2 * CHANNELS], workspace[-1]
        for i, plane in enumerate(inputs):
            np.copyto(plane, frame[..., i], casting="unsafe")
        channels = []
        for j, out in enumerate(outputs):
            cv2.resize(coefficients.planes[9 + j], size, dst=out, interpolation=interpolation)
            for i, plane in enumerate(inputs):
                cv2.resize(coefficients.planes[CHANNELS * j + i], size, dst=upsampled, interpolation=interpolation)
                cv2.accumulateProduct(plane, upsampled, out)
            channels.append(cv2.add(out, 0.0, dtype=cv2.CV_8U))  # saturate, round
        return cv2.merge(channels)
