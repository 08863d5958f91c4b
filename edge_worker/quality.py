"""Offline quality metrics for photorealistic style transfer (numpy/torch only, no downloaded networks).

Images are RGB ``uint8`` arrays ``H x W x 3``. Three questions, one metric each (two for style):
structure kept (:func:`structure_ssim`), style matched (:func:`gaussian_w2`, :func:`sliced_w2`),
photorealism (:func:`matting_laplacian_residual`); and fidelity to a reference image (:func:`psnr`, the one
PSNR of the code base: training's reconstruction PSNR and the benchmarks' use it too; :func:`ciede2000`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5
"""11x11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03 (Wang et al. 2004)."""
SSIM_K1, SSIM_K2 = 0.01, 0.03
LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights."""
D65_WHITE = (0.95047, 1.0, 1.08883)
RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
"""sRGB (D65) to CIE XYZ, as in scikit-image."""
LAB_EPSILON = (6.0 / 29.0) ** 3
LAB_KAPPA = 1.0 / (3.0 * (6.0 / 29.0) ** 2)
LAB_OFFSET = 4.0 / 29.0
STATS_MAX_PIXELS = 256 * 256
"""Colour distributions are compared on at most this many pixels (evenly subsampled)."""
SLICED_PROJECTIONS = 64
SLICED_SEED = 0
MATTING_RADIUS = 1
"""3x3 windows, as Levin et al. and Luan et al."""
MATTING_EPS = 1e-7
SQRT_FLOOR = 1e-12
UINT8_PEAK = 255.0
"""Largest value of a uint8 image: the default peak of :func:`psnr`."""


def psnr_from_mse(mse: float, peak: float) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak² / mse)``, of a mean squared error on a scale whose
    largest value is ``peak``; inf for ``mse == 0``."""
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = UINT8_PEAK) -> float:
    """Peak signal-to-noise ratio (dB) of two images of one shape (:func:`psnr_from_mse`; uint8 by default); inf
    when identical."""
    return psnr_from_mse(float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)), peak)


def luminance(image: np.ndarray) -> np.ndarray:
    """BT.601 luma in [0, 1]."""
    return image.astype(np.float64) @ np.array(LUMA) / 255.0


def ssim_terms(x: np.ndarray, y: np.ndarray, data_range: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel luminance and contrast-structure terms of SSIM for two grey images (Wang, Bovik, Sheikh,
    Simoncelli, "Image quality assessment: from error visibility to structural similarity", IEEE TIP 2004):
    11x11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, borders reflected. SSIM is their product."""
    window = 2 * SSIM_RADIUS + 1

    def blur(image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (window, window), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    return (2 * mx * my + c1) / (mx * mx + my * my + c1), (2 * cxy + c2) / (vx + vy + c2)


def structure_ssim(content: np.ndarray, output: np.ndarray) -> float:
    """Mean SSIM of the luminances (:func:`ssim_terms`); the output is resized to the content if needed.

    Valid region only, as scikit-image with ``gaussian_weights=True``.
    """
    if output.shape != content.shape:
        output = _resize(output, content.shape[1], content.shape[0])
    lum, cs = ssim_terms(luminance(content), luminance(output), data_range=1.0)
    r = SSIM_RADIUS
    return float((lum * cs)[r:-r, r:-r].mean())


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    t = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    out = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def rgb_to_lab(image: np.ndarray) -> np.ndarray:
    """sRGB uint8 → CIE L*a*b* (D65), float ``H x W x 3`` (CIE 15:2004; matches scikit-image's rgb2lab)."""
    rgb = image.astype(np.float64) / 255.0
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ RGB_TO_XYZ.T / np.array(D65_WHITE)
    f = np.where(xyz > LAB_EPSILON, np.cbrt(xyz), xyz * LAB_KAPPA + LAB_OFFSET)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], -1)


def _lab_pixels(image: np.ndarray) -> np.ndarray:
    lab = rgb_to_lab(image).reshape(-1, 3)
    step = max(1, int(np.ceil(lab.shape[0] / STATS_MAX_PIXELS)))
    return lab[::step]


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, SQRT_FLOOR, None))) @ vectors.T


def gaussian_w2(output: np.ndarray, style: np.ndarray) -> float:
    """2-Wasserstein distance between Gaussians fitted to the Lab colours (Dowson & Landau, "The Fréchet
    distance between multivariate normal distributions", J. Multivariate Anal. 1982); in Lab units."""
    a, b = _lab_pixels(output), _lab_pixels(style)
    ma, mb = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrtm_psd(ca)
    cross = _sqrtm_psd(root_a @ cb @ root_a)
    squared = float(np.sum((ma - mb) ** 2) + np.trace(ca + cb - 2.0 * cross))
    return float(np.sqrt(max(squared, 0.0)))


def sliced_w2(
    output: np.ndarray, style: np.ndarray, projections: int = SLICED_PROJECTIONS, seed: int = SLICED_SEED
) -> float:
    """Sliced 2-Wasserstein distance of the Lab colour distributions (Rabin, Peyré, Delon, Bernot, "Wasserstein
    barycenter and its application to texture mixing", SSVM 2011); quantiles compared on random directions."""
    a, b = _lab_pixels(output), _lab_pixels(style)
    directions = np.random.default_rng(seed).normal(size=(projections, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    n = min(a.shape[0], b.shape[0])
    pa, pb = (np.sort(x @ directions.T, axis=0)[np.linspace(0, len(x) - 1, n).round().astype(int)] for x in (a, b))
    return float(np.sqrt(np.mean((pa - pb) ** 2)))


def matting_laplacian_residual(content: np.ndarray, output: np.ndarray) -> float:
    """Photorealism: ``Σ_c V_cᵀ M_I V_c`` per window, with M_I the matting Laplacian of the content (Levin,
    Lischinski, Weiss, "A closed-form solution to natural image matting", TPAMI 2008, Theorem 1; the
    photorealism regularizer of Luan et al., "Deep photo style transfer", CVPR 2017).

    Computed without the sparse matrix: by Levin et al.'s theorem it is the residual of the best local
    affine fit of each output channel on the content colours in every 3x3 window (ridge ``MATTING_EPS``),
    averaged over windows. Zero iff the output is locally an affine function of the content colours.
    """
    if output.shape != content.shape:
        output = _resize(output, content.shape[1], content.shape[0])
    guide = torch.from_numpy(content).permute(2, 0, 1)[None].double() / 255.0
    target = torch.from_numpy(output).permute(2, 0, 1)[None].double() / 255.0
    window = 2 * MATTING_RADIUS + 1

    def mean(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, window, stride=1)

    mg, mt = mean(guide), mean(target)
    gg = torch.stack([mean(guide[:, i : i + 1] * guide[:, j : j + 1])[:, 0] for i in range(3) for j in range(3)], 1)
    cov_g = gg.unflatten(1, (3, 3)) - mg.unsqueeze(1) * mg.unsqueeze(2)
    cov_g = cov_g + (MATTING_EPS / window**2) * torch.eye(3, dtype=guide.dtype).view(1, 3, 3, 1, 1)
    tg = torch.stack([mean(target[:, c : c + 1] * guide) for c in range(3)], 1)  # (1, out, in, h, w)
    cross = tg - mt.unsqueeze(2) * mg.unsqueeze(1)
    var_t = mean(target * target) - mt * mt
    solved = torch.linalg.solve(cov_g.permute(0, 3, 4, 1, 2), cross.permute(0, 3, 4, 2, 1))  # (1, h, w, in, out)
    explained = (cross.permute(0, 3, 4, 2, 1) * solved).sum(-2)  # (1, h, w, out)
    residual = var_t.permute(0, 2, 3, 1) - explained
    return float(residual.sum(-1).clamp_min(0).mean())


def ciede2000(a: np.ndarray, b: np.ndarray) -> float:
    """Mean CIEDE2000 colour difference of two RGB uint8 images of one shape (Sharma, Wu, Dalal, "The CIEDE2000
    color-difference formula: implementation notes, supplementary test data, and mathematical observations",
    Color Res. Appl. 2005; scikit-image's ``deltaE_ciede2000`` on :func:`rgb_to_lab`). About 1 is a just
    noticeable difference."""
    from skimage.color import deltaE_ciede2000

    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return float(np.mean(deltaE_ciede2000(rgb_to_lab(a), rgb_to_lab(b))))
