"""Expected answers computed independently of the code under test (numpy/scipy, from the papers' closed forms).

A test that takes its expected answer from the module it tests passes whatever that module does; these are the
answers written out again, in the most direct way, for tests to compare against.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from edge_worker.model.color_transfer import COV_EPS


def colour_moments(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased) of a uint8 image's colours in [0, 1]."""
    pixels = rgb.reshape(-1, 3).astype(np.float64) / 255
    return pixels.mean(0), np.cov(pixels.T)


def monge_kantorovich(content_rgb: np.ndarray, style_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pitie & Kokaram's map ``x -> A x + b`` from the content's colour Gaussian to the style's (both with the
    module's ridge ``COV_EPS``): A = S_c^-1/2 (S_c^1/2 S_s S_c^1/2)^1/2 S_c^-1/2, b = mu_s - A mu_c. Every pixel
    counts: use images of at most 256x256 pixels (the module samples bigger ones)."""
    (mu_c, cov_c), (mu_s, cov_s) = colour_moments(content_rgb), colour_moments(style_rgb)
    cov_c, cov_s = cov_c + COV_EPS * np.eye(3), cov_s + COV_EPS * np.eye(3)
    half = np.real(scipy.linalg.sqrtm(cov_c))
    inv_half = np.linalg.inv(half)
    a = inv_half @ np.real(scipy.linalg.sqrtm(half @ cov_s @ half)) @ inv_half
    return a, mu_s - a @ mu_c


def colour_transfer(content_rgb: np.ndarray, style_rgb: np.ndarray) -> np.ndarray:
    """``content_rgb`` with the style's colour Gaussian (uint8, clipped)."""
    a, b = monge_kantorovich(content_rgb, style_rgb)
    pixels = content_rgb.astype(np.float64) / 255
    return np.round(np.clip(pixels @ a.T + b, 0, 1) * 255).astype(np.uint8)


def colour_transfer_bgr(content_bgr: np.ndarray, style_bgr: np.ndarray) -> np.ndarray:
    """:func:`colour_transfer` on BGR images (OpenCV's order), channel order reversed in and out."""
    return colour_transfer(content_bgr[..., ::-1], style_bgr[..., ::-1])[..., ::-1].copy()
