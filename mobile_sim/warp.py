"""Algorithm 1 of the paper: bilinear backward warp of a stylized key frame along optical flow."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

PIXEL_CENTER = 0.5  # pixel x covers [x - 0.5, x + 0.5]; cv2.resize uses the same convention
BASE_GRID_CACHE = 4
"""Coordinate grids and border corrections kept (one per flow size / key size pair)."""
BORDER_TOLERANCE_PX = 1e-4
"""Upsampled coordinates closer than this to the exact ones need no border correction."""


@dataclass(frozen=True, eq=False)
class WarpMaps:
    """Fixed-point remap maps (CV_16SC2 + CV_16UC1) from a flow, reusable for any key of `key_size`."""

    map1: np.ndarray
    map2: np.ndarray
    frame_size: tuple[int, int]
    key_size: tuple[int, int]


def image_size(image: np.ndarray) -> tuple[int, int]:
    """(width, height) of an image array."""
    return image.shape[1], image.shape[0]


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height): area averaging when shrinking, bilinear otherwise.

    Returns `image` itself (not a copy) when it already has that size.
    """
    width, height = size
    if (width, height) == image_size(image):
        return image
    shrinking = width < image.shape[1] or height < image.shape[0]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _centres(count: int, source_count: int, target_count: int) -> np.ndarray:
    """Target coordinates (float64) of the centres of `count` cells spanning a `source_count`-pixel
    axis, for a `target_count`-pixel image of the same extent."""
    return (np.arange(count) + PIXEL_CENTER) * target_count / source_count - PIXEL_CENTER


@functools.lru_cache(maxsize=BASE_GRID_CACHE)
def _base_grid(flow_size: tuple[int, int], key_size: tuple[int, int]) -> np.ndarray:
    """hxwx2 float32 key coordinates of the flow's cell centres (zero flow), for a key of `key_size`."""
    (width, height), (key_width, key_height) = flow_size, key_size
    grid = np.empty((height, width, 2), np.float32)
    grid[..., 0] = _centres(width, width, key_width)[np.newaxis, :]
    grid[..., 1] = _centres(height, height, key_height)[:, np.newaxis]
    grid.setflags(write=False)
    return grid


@functools.lru_cache(maxsize=BASE_GRID_CACHE)
def _border_corrections(
    flow_size: tuple[int, int], frame_size: tuple[int, int], key_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per column (x) and per row (y): exact key coordinate of each frame pixel minus what bilinear
    upsampling of the flow-resolution coordinate grid gives (it clamps beyond the outer cell centres).

    Zero inside, so only the few border columns and rows need adding; float32.
    """
    corrections = []
    for axis in (0, 1):
        cells, pixels, key = flow_size[axis], frame_size[axis], key_size[axis]
        exact = _centres(pixels, pixels, key)
        source = np.clip(_centres(pixels, pixels, cells), 0, cells - 1)  # cv2.resize's clamped sample positions
        upsampled = (source + PIXEL_CENTER) * key / cells - PIXEL_CENTER
        corrections.append((exact - upsampled).astype(np.float32))
    return corrections[0], corrections[1]


def _border_width(correction: np.ndarray) -> tuple[int, int]:
    """How many leading and trailing entries of a correction vector are non-zero."""
    inside = np.flatnonzero(np.abs(correction) < BORDER_TOLERANCE_PX)
    if len(inside) == 0:
        return len(correction), 0
    return int(inside[0]), len(correction) - 1 - int(inside[-1])


class Warper:
    """Backward warp î(x) = k̂(x + f(x)) with bilinear sampling (Eq. 1, Algorithm 1)."""

    def maps_from_flow(
        self, flow: np.ndarray, key_size: tuple[int, int], frame_size: tuple[int, int] | None = None
    ) -> WarpMaps:
        """Build fixed-point remap maps once from a frame→key flow (hxwx2, in its own pixels).

        `flow` may be coarser than the frame (`frame_size`, default the flow's size): it covers the
        whole frame, and the absolute key coordinates are upsampled bilinearly straight into the
        frame's grid (one full-resolution pass before convertMaps). Source coordinates are scaled to
        a stylized key of `key_size` (width, height), which may differ from the frame size.
        """
        if flow.ndim != 3 or flow.shape[2] != 2:
            raise ValueError(f"flow must be HxWx2, got shape {flow.shape}")
        key_width, key_height = key_size
        if key_width < 1 or key_height < 1:
            raise ValueError(f"key size must be positive, got {key_size}")
        flow_size = image_size(flow)
        frame_size = frame_size or flow_size
        flow = flow.astype(np.float32, copy=False)
        scale_x, scale_y = key_width / flow_size[0], key_height / flow_size[1]
        if scale_x == scale_y:  # key and flow share the aspect ratio: scale and add the grid in one pass
            coordinates = cv2.scaleAdd(flow, scale_x, _base_grid(flow_size, key_size))
        else:
            scaled = cv2.multiply(flow, (scale_x, scale_y, 0.0, 0.0))
            coordinates = cv2.add(scaled, _base_grid(flow_size, key_size))
        if frame_size != flow_size:
            coordinates = cv2.resize(coordinates, frame_size, interpolation=cv2.INTER_LINEAR)
            for axis, correction in enumerate(_border_corrections(flow_size, frame_size, key_size)):
                leading, trailing = _border_width(correction)
                view = coordinates[..., axis] if axis == 1 else coordinates[..., axis].T
                view[:leading] += correction[:leading, np.newaxis]
                if trailing:
                    view[-trailing:] += correction[-trailing:, np.newaxis]
        map1, map2 = cv2.convertMaps(coordinates, None, cv2.CV_16SC2)  # type: ignore[call-overload]
        return WarpMaps(map1=map1, map2=map2, frame_size=frame_size, key_size=(key_width, key_height))

    def warp(self, stylized_key: np.ndarray, maps: WarpMaps) -> np.ndarray:
        """Warp the stylized key frame to the frame's geometry; output has the frame's size."""
        if image_size(stylized_key) != maps.key_size:
            raise ValueError(f"stylized key is {image_size(stylized_key)} but the maps were built for {maps.key_size}")
        return cv2.remap(stylized_key, maps.map1, maps.map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
