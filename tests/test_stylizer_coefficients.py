"""``coefficients``: the maps of ``stylize_with_coefficients`` without rendering the frame, for the paper's DNN
(tiny, with the bundled model's smoothing options and an r-dependent meta kernel) and the colour transfer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from edge_worker.model.base import CoefficientStylizer
from edge_worker.model.color_transfer import LinearColorTransfer
from edge_worker.model.meta_smoothing import GAIN_PRIOR_WEIGHT
from edge_worker.model.stylizer import CONFIGS, PhotoStylizer
from edge_worker.retrain import RetrainableStylizer
from tests.oracles import monge_kantorovich
from tests.support import tiny_dnn

SIZES = [(640, 360), (1920, 1080), (97, 71)]
REBUILD_MAX_LEVELS = 2
REBUILD_MEAN_LEVELS = 0.1


def _tiny_dnn() -> PhotoStylizer:
    """Tiny, fitting 2x below network size toward the global map as ``small`` does; Q(r) not all ones."""
    model = tiny_dnn(smoothing_downsample=2, smoothing_gain_prior=GAIN_PRIOR_WEIGHT)
    with torch.no_grad():
        for p in model.smoothing.scale_kernel.parameters():
            p.normal_(0.0, 0.5)
    return model


def _retrainable_dnn() -> RetrainableStylizer:
    return RetrainableStylizer(_tiny_dnn())


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES)
def test_dnn_coefficients_are_those_of_stylize_with_coefficients(size: tuple[int, int]) -> None:
    """Two code paths (``coefficients_batch`` and the frame's ``_maps``) that must agree bit for bit."""
    stylizer = _tiny_dnn()
    content, style = skimage.data.chelsea(), stylizer.prepare_style(skimage.data.coffee())
    _, expected = stylizer.stylize_with_coefficients(content, style, size)
    coeffs = stylizer.coefficients(content, style, size)
    assert coeffs.dtype == np.float32 and coeffs.shape[2] == 12
    np.testing.assert_array_equal(coeffs, expected)


def _apply_maps(coeffs: np.ndarray, content: np.ndarray, size: tuple[int, int], area_shrink: bool) -> np.ndarray:
    """The coefficients applied per pixel, written out here: the content resized to ``size`` (bilinear, or area
    when shrinking with ``area_shrink``: the DNN does, the colour transfer does not), the grid resampled
    bilinearly with pixel centres aligned, ``A x + b``, clipped, rounded."""
    shrink = size[0] < content.shape[1] or size[1] < content.shape[0]
    area = area_shrink and shrink
    frame = cv2.resize(content, size, interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR) / 255.0
    maps = cv2.resize(coeffs.astype(np.float64), size, interpolation=cv2.INTER_LINEAR).reshape(size[1], size[0], 12)
    out = np.einsum("hwij,hwj->hwi", maps[..., :9].reshape(size[1], size[0], 3, 3), frame) + maps[..., 9:]
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    "make", [_tiny_dnn, _retrainable_dnn, LinearColorTransfer], ids=["dnn", "retrainable-dnn", "color-transfer"]
)
def test_coefficients_rebuild_the_stylized_frame(
    make: Callable[[], CoefficientStylizer], size: tuple[int, int]
) -> None:
    """``coefficients`` against the frame ``stylize`` renders: what the phone does with the maps, done here."""
    stylizer = make()
    content, style = skimage.data.chelsea(), stylizer.prepare_style(skimage.data.coffee())
    coeffs = stylizer.coefficients(content, style, size)
    assert coeffs.dtype == np.float32 and coeffs.shape[2] == 12
    frame = stylizer.stylize(content, style, size)
    rebuilt = _apply_maps(coeffs, content, size, area_shrink=not isinstance(stylizer, LinearColorTransfer))
    difference = np.abs(rebuilt.astype(int) - frame.astype(int))
    assert difference.max() <= REBUILD_MAX_LEVELS and difference.mean() < REBUILD_MEAN_LEVELS, difference.max()
    assert np.abs(content.mean((0, 1)) - frame.mean((0, 1))).max() > 10  # the maps are not the identity


@pytest.mark.parametrize("size", SIZES)
def test_colour_transfer_coefficients_are_the_closed_form(size: tuple[int, int]) -> None:
    content, style = skimage.data.chelsea(), skimage.data.coffee()
    model = LinearColorTransfer()
    coeffs = model.coefficients(content, model.prepare_style(style), size)
    assert coeffs.shape == (1, 1, 12)  # one global map, the same at every output size
    expected_a, expected_b = monge_kantorovich(_as_sampled(content), _as_sampled(style))
    np.testing.assert_allclose(coeffs[0, 0, :9].reshape(3, 3), expected_a, atol=1e-4)
    np.testing.assert_allclose(coeffs[0, 0, 9:], expected_b, atol=1e-4)


def _as_sampled(image: np.ndarray) -> np.ndarray:
    """The image the colour transfer takes statistics on: area-downsized to at most 256 x 256 pixels."""
    h, w = image.shape[:2]
    scale = min(1.0, (256 * 256 / (h * w)) ** 0.5)
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


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
