"""Algorithm 1 of the paper: bilinear backward warp of a stylized key frame along optical flow."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

PIXEL_CENTER = 0.5  # pixel x covers [x - 0.5, x + 0.5]; cv2.resize uses the same convention
BASE_GRID_CACHE = 4
"""Coordinate grids kept (one per frame size / key size pair; 1080p costs 16 MB)."""


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


@functools.lru_cache(maxsize=BASE_GRID_CACHE)
def _base_grid(frame_size: tuple[int, int], key_size: tuple[int, int]) -> np.ndarray:
    """HxWx2 float32 key coordinates of each frame pixel centre (zero flow), for a key of `key_size`."""
    (width, height), (key_width, key_height) = frame_size, key_size
    base_x = ((np.arange(width) + PIXEL_CENTER) * key_width / width - PIXEL_CENTER).astype(np.float32)
    base_y = ((np.arange(height) + PIXEL_CENTER) * key_height / height - PIXEL_CENTER).astype(np.float32)
    grid = np.empty((height, width, 2), np.float32)
    grid[..., 0] = base_x[np.newaxis, :]
    grid[..., 1] = base_y[:, np.newaxis]
    grid.setflags(write=False)
    return grid


class Warper:
    """Backward warp î(x) = k̂(x + f(x)) with bilinear sampling (Eq. 1, Algorithm 1)."""

    def maps_from_flow(self, flow: np.ndarray, key_size: tuple[int, int]) -> WarpMaps:
        """Build remap maps once from a frame→key flow (HxWx2, frame pixels).

        Source coordinates are scaled to a stylized key of `key_size` (width, height), which may
        differ from the frame size.
        """
        if flow.ndim != 3 or flow.shape[2] != 2:
            raise ValueError(f"flow must be HxWx2, got shape {flow.shape}")
        key_width, key_height = key_size
        if key_width < 1 or key_height < 1:
            raise ValueError(f"key size must be positive, got {key_size}")
        height, width = flow.shape[:2]
        if (key_width, key_height) != (width, height):
            flow = flow * np.array([key_width / width, key_height / height], np.float32)
        coordinates = cv2.add(flow.astype(np.float32, copy=False), _base_grid((width, height), (key_width, key_height)))
        map1, map2 = cv2.convertMaps(coordinates, None, cv2.CV_16SC2)  # type: ignore[call-overload]
        return WarpMaps(map1=map1, map2=map2, frame_size=(width, height), key_size=(key_width, key_height))

    def warp(self, stylized_key: np.ndarray, maps: WarpMaps) -> np.ndarray:
        """Warp the stylized key frame to the frame's geometry; output has the frame's size."""
        if image_size(stylized_key) != maps.key_size:
            raise ValueError(f"stylized key is {image_size(stylized_key)} but the maps were built for {maps.key_size}")
        return cv2.remap(stylized_key, maps.map1, maps.map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
