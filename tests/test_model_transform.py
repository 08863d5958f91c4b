"""Colorization: exact second-order matching, differentiable square roots."""

from __future__ import annotations

import torch

from edge_worker.model.transform import (
    COV_RIDGE,
    FeatureStats,
    LearnedColorization,
    feature_stats,
    monge_kantorovich,
    sqrtm_newton_schulz,
    wct,
)

RIDGE_RTOL = 0.02
"""The covariance ridge moves matched covariances by about COV_RIDGE · |T|²."""


def _features(seed: int, channels: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(channels, channels, generator=g)
    return (mix @ torch.randn(1, channels, 400, generator=g)).view(1, channels, 20, 20) + seed


def _raw_stats(features: torch.Tensor) -> FeatureStats:
    flat = features.flatten(2).double()
    centered = flat - flat.mean(-1, keepdim=True)
    return FeatureStats(flat.mean(-1), centered @ centered.transpose(1, 2) / (flat.shape[-1] - 1))


def _ridge(stats: FeatureStats) -> float:
    return 2 * COV_RIDGE * float(stats.cov.detach().diagonal(dim1=1, dim2=2).mean())


def test_newton_schulz_matches_eigendecomposition() -> None:
    cov = feature_stats(_features(0)).cov
    root, inv_root = sqrtm_newton_schulz(cov)
    values, vectors = torch.linalg.eigh(cov)
    expected = vectors @ torch.diag_embed(values.sqrt()) @ vectors.transpose(1, 2)
    torch.testing.assert_close(root, expected, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(inv_root @ root, torch.eye(6, dtype=cov.dtype).unsqueeze(0), rtol=0, atol=1e-6)


def test_monge_kantorovich_map_matches_style_covariance() -> None:
    content, style = feature_stats(_features(1)), feature_stats(_features(2))
    t = monge_kantorovich(content, style)
    torch.testing.assert_close(t @ content.cov @ t.transpose(1, 2), style.cov, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t, t.transpose(1, 2), rtol=1e-6, atol=1e-8)  # minimal displacement: symmetric


def test_wct_gives_style_statistics() -> None:
    style = feature_stats(_features(2))
    out = _raw_stats(wct(_features(1), style))
    torch.testing.assert_close(out.mean, style.mean)
    torch.testing.assert_close(out.cov, style.cov, rtol=RIDGE_RTOL, atol=_ridge(style))


def test_learned_colorization_matches_compressed_statistics_and_is_differentiable() -> None:
    torch.manual_seed(0)
    module = LearnedColorization(channels=6, compressed=6).double()
    content, style = _features(1).double(), _features(2).double()
    out = module(content, module.style_stats(style))
    target = module.style_stats(style)
    torch.testing.assert_close(_raw_stats(module.compress(out)).cov, target.cov, rtol=RIDGE_RTOL, atol=_ridge(target))
    out.square().mean().backward()
    assert module.compress.weight.grad is not None and torch.isfinite(module.compress.weight.grad).all()
