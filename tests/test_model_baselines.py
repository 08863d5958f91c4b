"""Baselines: each is a Stylizer, moves colours towards the style, and keeps the requested size."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from edge_worker.baselines import ReinhardTransfer, WCTBaseline, baselines
from edge_worker.model.base import Stylizer
from edge_worker.model.stylizer import PhotoStylizer
from edge_worker.quality import rgb_to_lab

OUT_SIZE = (180, 120)
LAB_MEAN_TOLERANCE = 4.0
"""Lab units; out-of-gamut colours are clipped back to sRGB."""


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    return skimage.data.chelsea(), skimage.data.coffee()


def test_reinhard_matches_lab_means(pair) -> None:
    content, style = pair
    method = ReinhardTransfer()
    out = method.stylize(content, method.prepare_style(style), (content.shape[1], content.shape[0]))
    out_mean = rgb_to_lab(out).reshape(-1, 3).mean(0)
    np.testing.assert_allclose(out_mean, rgb_to_lab(style).reshape(-1, 3).mean(0), atol=LAB_MEAN_TOLERANCE)


def _mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(rgb_to_lab(a).reshape(-1, 3).mean(0) - rgb_to_lab(b).reshape(-1, 3).mean(0)))


@pytest.mark.slow
def test_every_baseline_is_a_stylizer_that_moves_mean_colour_to_the_style(pair) -> None:
    content, style = pair
    torch.manual_seed(0)
    methods = baselines(PhotoStylizer.from_config("tiny").eval())
    assert any(isinstance(m, WCTBaseline) for m in methods)
    for method in methods:
        assert isinstance(method, Stylizer)
        out = method.stylize(content, method.prepare_style(style), OUT_SIZE)
        assert out.shape == (OUT_SIZE[1], OUT_SIZE[0], 3) and out.dtype == np.uint8
        assert _mean_distance(out, style) < _mean_distance(content, style) / 2, method.name
