"""``coefficients``: the maps of ``stylize_with_coefficients`` without rendering the frame, for the paper's DNN
(tiny, with the bundled model's smoothing options and an r-dependent meta kernel) and the colour transfer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import skimage.data
import torch

from edge_worker.model.base import CoefficientStylizer
from edge_worker.model.color_transfer import LinearColorTransfer
from edge_worker.model.meta_smoothing import GAIN_PRIOR_WEIGHT
from edge_worker.model.stylizer import CONFIGS, PhotoStylizer
from edge_worker.retrain import RetrainableStylizer

SIZES = [(640, 360), (1920, 1080), (97, 71)]


def _tiny_dnn() -> PhotoStylizer:
    """Tiny, fitting 2x below network size toward the global map as ``small`` does; Q(r) not all ones."""
    torch.manual_seed(0)
    config = dataclasses.replace(CONFIGS["tiny"], smoothing_downsample=2, smoothing_gain_prior=GAIN_PRIOR_WEIGHT)
    model = PhotoStylizer(config).eval()
    with torch.no_grad():
        for p in model.smoothing.scale_kernel.parameters():
            p.normal_(0.0, 0.5)
    return model


def _retrainable_dnn() -> RetrainableStylizer:
    return RetrainableStylizer(_tiny_dnn())


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    "make", [_tiny_dnn, _retrainable_dnn, LinearColorTransfer], ids=["dnn", "retrainable-dnn", "color-transfer"]
)
def test_coefficients_are_those_of_stylize_with_coefficients(
    make: Callable[[], CoefficientStylizer], size: tuple[int, int]
) -> None:
    stylizer = make()
    content, style = skimage.data.chelsea(), stylizer.prepare_style(skimage.data.coffee())
    _, expected = stylizer.stylize_with_coefficients(content, style, size)
    coeffs = stylizer.coefficients(content, style, size)
    assert coeffs.dtype == np.float32 and coeffs.shape[2] == 12
    np.testing.assert_array_equal(coeffs, expected)


def test_dnn_coefficients_depend_on_the_output_size() -> None:
    """Why ``out_size`` is an argument: the meta kernel W_u^r is made for the upscale factor r."""
    model = _tiny_dnn()
    content, style = skimage.data.chelsea(), model.prepare_style(skimage.data.coffee())
    assert not np.allclose(model.coefficients(content, style, SIZES[0]), model.coefficients(content, style, SIZES[1]))


def test_literal_smoothing_has_no_coefficients() -> None:
    literal = PhotoStylizer(dataclasses.replace(CONFIGS["tiny"], smoothing="literal", colour_alignment=False)).eval()
    content, style = skimage.data.chelsea(), literal.prepare_style(skimage.data.coffee())
    assert literal.coefficients(content, style, SIZES[0]).size == 0
    assert literal.stylize_with_coefficients(content, style, SIZES[0])[1].size == 0
