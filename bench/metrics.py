"""Frame-quality and temporal-consistency metrics for the interpolation benchmark (SSIM and PSNR from
edge_worker.quality)."""

from __future__ import annotations

import cv2
import numpy as np

from edge_worker.quality import SSIM_RADIUS, ssim_terms
from mobile_sim.flow import FlowEstimator

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Wang, Simoncelli & Bovik 2003: 5 scales with these exponents."""
SSIM_WINDOW = 2 * SSIM_RADIUS + 1
DYNAMIC_RANGE = 255.0
CONSISTENCY_FLOW = "dis-medium"
MIN_VALID_SHARE = 0.5
"""Pairs of frames with fewer pixels passing the forward-backward check are cuts and are not graded."""
"""Warping error uses a slower, full-resolution flow unlike the phone's, so it does not grade the phone's own flow."""


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Multi-scale SSIM of two uint8 images, grey or BGR (compared on their luma, BT.601).

    Z. Wang, E. P. Simoncelli, A. C. Bovik, "Multiscale structural similarity for image quality
    assessment", Asilomar 2003: contrast-structure at 5 dyadic scales (2x2 mean downsampling),
    luminance at the coarsest, combined with the exponents MS_SSIM_WEIGHTS; SSIM with an 11x11
    Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03. Negative terms are clamped to 0. Both sides
    must be >= 11 * 2**4 = 176 pixels, so the coarsest scale still holds one window.
    """
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    min_side = SSIM_WINDOW * 2 ** (len(MS_SSIM_WEIGHTS) - 1)
    if min(a.shape[:2]) < min_side:
        raise ValueError(f"MS-SSIM needs both sides >= {min_side}, got {a.shape[:2]}")
    x: np.ndarray = (cv2.cvtColor(a, cv2.COLOR_BGR2GRAY) if a.ndim == 3 else a).astype(np.float32)
    y: np.ndarray = (cv2.cvtColor(b, cv2.COLOR_BGR2GRAY) if b.ndim == 3 else b).astype(np.float32)
    score = 1.0
    for level, weight in enumerate(MS_SSIM_WEIGHTS):
        luminance_map, contrast_structure_map = ssim_terms(x, y, DYNAMIC_RANGE)
        luminance, contrast_structure = float(luminance_map.mean()), float(contrast_structure_map.mean())
        if level == len(MS_SSIM_WEIGHTS) - 1:
            score *= max(luminance * contrast_structure, 0.0) ** weight
        else:
            score *= max(contrast_structure, 0.0) ** weight
            x = cv2.resize(x, (x.shape[1] // 2, x.shape[0] // 2), interpolation=cv2.INTER_AREA)
            y = cv2.resize(y, (y.shape[1] // 2, y.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return score


class WarpingError:
    """Temporal warping error (Lai et al., "Learning Blind Video Temporal Consistency", ECCV 2018).

    E = mean over t of  sum_x M_t(x) ||O_t(x) - O_{t-1}(x + f(x))||^2 / sum_x M_t(x), O in [0, 1],
    f the flow from original frame t to t-1 and M_t the pixels passing the forward-backward check
    (occlusions excluded); pairs across a cut (under ``MIN_VALID_SHARE`` of the pixels pass) are skipped and
    counted in ``cuts``. Lai et al. use FlowNet2; we use full-resolution DIS (medium), computed
    once per pair of originals and shared by every output video graded.
    """

    def __init__(self, originals: list[np.ndarray]) -> None:
        estimator = FlowEstimator(CONSISTENCY_FLOW, max_width=None)
        self._pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []
        self.cuts = 0
        self._frames = len(originals)
        for t, (previous, current) in enumerate(zip(originals, originals[1:], strict=False), start=1):
            motion = estimator.motion(current, previous, occlusion=True)
            assert motion.occluded is not None
            height, width = current.shape[:2]
            map_x = motion.flow[..., 0] + np.arange(width, dtype=np.float32)[np.newaxis, :]
            map_y = motion.flow[..., 1] + np.arange(height, dtype=np.float32)[:, np.newaxis]
            inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
            mask = ~motion.occluded & inside
            if mask.mean() < MIN_VALID_SHARE:
                self.cuts += 1  # a cut: no correspondence, and a few stray pixels would decide the pair's mean
                continue
            self._pairs.append((map_x, map_y, mask.astype(np.float32), t))

    def __call__(self, outputs: list[np.ndarray]) -> float:
        """Warping error of an output video aligned with the originals."""
        if len(outputs) != self._frames:
            raise ValueError(f"expected {self._frames} frames, got {len(outputs)}")
        errors = []
        for map_x, map_y, mask, t in self._pairs:
            previous, current = outputs[t - 1], outputs[t]
            warped = cv2.remap(previous, map_x, map_y, cv2.INTER_LINEAR).astype(np.float32) / DYNAMIC_RANGE
            squared = np.sum((current.astype(np.float32) / DYNAMIC_RANGE - warped) ** 2, axis=2)
            errors.append(float(np.sum(squared * mask) / max(float(mask.sum()), 1.0)))
        return float(np.mean(errors))
