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


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 (kL = kC = kH = 1) of Lab colours ``... x 3``, written out from Sharma, Wu and Dalal (2005),
    Eq. 1-22."""
    l1, a1, b1 = np.moveaxis(np.asarray(lab1, np.float64), -1, 0)
    l2, a2, b2 = np.moveaxis(np.asarray(lab2, np.float64), -1, 0)
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.where((a1p == 0) & (b1 == 0), 0.0, np.degrees(np.arctan2(b1, a1p)) % 360)
    h2p = np.where((a2p == 0) & (b2 == 0), 0.0, np.degrees(np.arctan2(b2, a2p)) % 360)
    zero = c1p * c2p == 0
    dh = h2p - h1p
    dh = np.where(zero, 0.0, np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh)))
    d_l, d_c = l2 - l1, c2p - c1p
    d_h = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    l_bar, cp_bar = (l1 + l2) / 2, (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_bar = np.where(
        zero,
        h_sum,
        np.where(np.abs(h1p - h2p) <= 180, h_sum / 2, np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2)),
    )
    t = (
        1
        - 0.17 * np.cos(np.radians(h_bar - 30))
        + 0.24 * np.cos(np.radians(2 * h_bar))
        + 0.32 * np.cos(np.radians(3 * h_bar + 6))
        - 0.20 * np.cos(np.radians(4 * h_bar - 63))
    )
    d_theta = 30 * np.exp(-(((h_bar - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(cp_bar**7 / (cp_bar**7 + 25.0**7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / np.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * cp_bar
    s_h = 1 + 0.015 * cp_bar * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    return np.sqrt((d_l / s_l) ** 2 + (d_c / s_c) ** 2 + (d_h / s_h) ** 2 + r_t * (d_c / s_c) * (d_h / s_h))


def gatys_style_loss(features: list[np.ndarray], style_features: list[np.ndarray]) -> float:
    """Gatys, Ecker and Bethge (2016) Eq. 3-5 as printed, equal weights: ``Σ_l (1/L) Σ (G - A)² / (4 N² M²)`` with
    unnormalised Gram matrices ``G = F Fᵀ`` of ``N x M`` feature matrices (both images of one size)."""
    total = 0.0
    for f, p in zip(features, style_features, strict=True):
        n, m = f.shape[0], f.shape[1] * f.shape[2]
        g, a = f.reshape(n, m) @ f.reshape(n, m).T, p.reshape(n, m) @ p.reshape(n, m).T
        total += float(((g - a) ** 2).sum()) / (4 * n**2 * m**2) / len(features)
    return total
