"""The colorization module: give content features the second-order statistics of the style features.

Eq. (2) of the paper is garbled in print; per the reading notes the colorization is a learned
feature transform that matches second-order statistics (WCT-like). :class:`LearnedColorization`
learns a channel compression in which the content features are mapped onto the style's mean and
covariance by the minimal-displacement linear map (Monge-Kantorovich), then decompressed; every
step is differentiable (Newton-Schulz matrix square roots). :func:`wct` is the closed-form
whitening-colouring transform of Li et al. 2017 on all channels: the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

COV_RIDGE = 1e-3
"""Ridge added to covariances, relative to their mean eigenvalue, so whitening stays bounded."""
NEWTON_SCHULZ_ITERS = 25
"""Iterations of the coupled Newton-Schulz square root (converges for condition numbers ~1e4)."""
EIG_FLOOR = 1e-12


@dataclass
class FeatureStats:
    """Per-sample channel mean ``(N, C)`` and covariance ``(N, C, C)`` of a feature map."""

    mean: torch.Tensor
    cov: torch.Tensor

    def to(self, device: torch.device | str) -> FeatureStats:
        """The same statistics on ``device``."""
        return FeatureStats(self.mean.to(device), self.cov.to(device))


def feature_stats(features: torch.Tensor) -> FeatureStats:
    """Channel mean and ridge-regularized covariance of ``(N, C, H, W)`` features (float64)."""
    n, c = features.shape[:2]
    flat = features.reshape(n, c, -1).double()
    mean = flat.mean(-1)
    centered = flat - mean.unsqueeze(-1)
    cov = centered @ centered.transpose(1, 2) / max(1, flat.shape[-1] - 1)
    ridge = COV_RIDGE * cov.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(EIG_FLOOR)
    eye = torch.eye(c, dtype=cov.dtype, device=cov.device)
    return FeatureStats(mean=mean, cov=cov + ridge.view(n, 1, 1) * eye)


def sqrtm_newton_schulz(matrix: torch.Tensor, iters: int = NEWTON_SCHULZ_ITERS) -> tuple[torch.Tensor, torch.Tensor]:
    """Square root and inverse square root of SPD ``(N, C, C)`` matrices (coupled Newton-Schulz).

    Higham, "Functions of Matrices" (2008), Eq. 6.35; differentiable with plain matrix products.
    """
    if matrix.device.type == "cpu" and not matrix.requires_grad and matrix.dtype in (torch.float32, torch.float64):
        root, inv_root = _newton_schulz_numpy(matrix.numpy(), iters)
        return torch.from_numpy(root), torch.from_numpy(inv_root)
    c = matrix.shape[-1]
    norm = matrix.flatten(1).norm(dim=1).view(-1, 1, 1)
    eye = torch.eye(c, dtype=matrix.dtype, device=matrix.device).expand_as(matrix)
    y, z = matrix / norm, eye
    for _ in range(iters):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    return y * norm.sqrt(), z / norm.sqrt()


def monge_kantorovich(content: FeatureStats, style: FeatureStats) -> torch.Tensor:
    """The linear map ``T`` with ``T Σc Tᵀ = Σs`` that moves features least (Pitié & Kokaram 2007)."""
    c_half, c_inv_half = sqrtm_newton_schulz(content.cov)
    middle, _ = sqrtm_newton_schulz(c_half @ style.cov @ c_half)
    return c_inv_half @ middle @ c_inv_half


def _newton_schulz_numpy(matrix: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sqrtm_newton_schulz` without a graph, in numpy: the same iteration, without torch's per-operator
    overhead on 3x3 matrices (100 products per key of the lite model)."""
    norm = np.sqrt((matrix.reshape(len(matrix), -1) ** 2).sum(1)).reshape(-1, 1, 1)
    eye = np.eye(matrix.shape[-1], dtype=matrix.dtype)
    y, z = matrix / norm, eye
    for _ in range(iters):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    return y * np.sqrt(norm), z / np.sqrt(norm)


def _apply_linear(features: torch.Tensor, content: FeatureStats, style: FeatureStats, t: torch.Tensor) -> torch.Tensor:
    n, c, h, w = features.shape
    flat = features.reshape(n, c, -1).double() - content.mean.unsqueeze(-1)
    out = t @ flat + style.mean.unsqueeze(-1)
    return out.to(features.dtype).reshape(n, c, h, w)


def _eig_power(cov: torch.Tensor, power: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(cov)
    return vectors @ torch.diag_embed(values.clamp_min(EIG_FLOOR) ** power) @ vectors.transpose(1, 2)


def wct(content: torch.Tensor, style: FeatureStats) -> torch.Tensor:
    """Closed-form whitening-colouring transform (Li et al., "Universal Style Transfer", NeurIPS 2017)."""
    stats = feature_stats(content)
    t = _eig_power(style.cov, 0.5) @ _eig_power(stats.cov, -0.5)
    return _apply_linear(content, stats, style, t)


class LearnedColorization(nn.Module):
    """Learned compression → minimal-displacement second-order matching → learned decompression.

    ``style`` is a :class:`FeatureStats` of the *compressed* style features
    (:meth:`style_stats`), so it can be cached per style.
    """

    def __init__(self, channels: int, compressed: int) -> None:
        super().__init__()
        if not 0 < compressed <= channels:
            raise ValueError(f"compressed channels must be in (0, {channels}], got {compressed}")
        self.compress = nn.Conv2d(channels, compressed, 1)
        self.decompress = nn.Conv2d(compressed, channels, 1)
        basis = torch.linalg.qr(torch.randn(channels, compressed))[0]  # orthonormal columns
        with torch.no_grad():
            self.compress.weight.copy_(basis.T.reshape(compressed, channels, 1, 1))
            self.decompress.weight.copy_(basis.reshape(channels, compressed, 1, 1))
            for conv in (self.compress, self.decompress):
                nn.init.zeros_(cast(torch.Tensor, conv.bias))

    def style_stats(self, style_features: torch.Tensor) -> FeatureStats:
        """Statistics of the compressed style features (what a prepared style keeps)."""
        return feature_stats(self.compress(style_features))

    def forward(self, content_features: torch.Tensor, style: FeatureStats) -> torch.Tensor:
        """Colorize ``(N, C, H, W)`` content features with compressed style statistics."""
        compressed = self.compress(content_features)
        stats = feature_stats(compressed)
        t = monge_kantorovich(stats, style)
        return self.decompress(_apply_linear(compressed, stats, style, t))
