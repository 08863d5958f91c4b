"""A global affine colour map fitted between a key frame and its stylization: fills what warping cannot."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FIT_WIDTH = 160
"""Both images are shrunk (area average) to this width before fitting: enough pixels for 12 unknowns."""
RIDGE = 1e-3
"""Tikhonov weight (relative to the pixel count) that keeps the fit stable on flat key frames."""
CHANNELS = 3


@dataclass(frozen=True, eq=False)
class ColorMap:
    """stylized ≈ A · original + b per pixel, A 3x3 and b 3 (one 3x4 matrix, channels in image order).

    With a stylizer that is itself a global affine colour map (the worker's "color-transfer"), this
    reproduces it exactly; with a local one (the paper's DNN) it is the best single colour map, a
    fallback for pixels no key frame shows.
    """

    matrix: np.ndarray

    @classmethod
    def fit(cls, original: np.ndarray, stylized: np.ndarray) -> ColorMap:
        """Least squares fit on the two images (any sizes, both HxWx3 uint8)."""
        width = min(FIT_WIDTH, original.shape[1])
        height = max(1, round(original.shape[0] * width / original.shape[1]))
        source = cv2.resize(original, (width, height), interpolation=cv2.INTER_AREA).reshape(-1, CHANNELS)
        target = cv2.resize(stylized, (width, height), interpolation=cv2.INTER_AREA).reshape(-1, CHANNELS)
        design = np.hstack([source.astype(np.float64), np.ones((len(source), 1))])
        gram = design.T @ design + RIDGE * len(source) * np.diag([1.0, 1.0, 1.0, 0.0])
        solution = np.linalg.solve(gram, design.T @ target.astype(np.float64))
        return cls(matrix=solution.T.astype(np.float32))

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """The map applied to uint8 pixels (HxWx3 or Nx1x3), saturated to uint8."""
        mapped: np.ndarray = cv2.transform(pixels, self.matrix)
        return mapped
