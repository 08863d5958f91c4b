"""The emulated accelerator (a stand-in for a GPU): its service-time profile, and a real colour transfer as output."""

from __future__ import annotations

import time

import numpy as np
import pytest
import skimage.data

from edge_worker.model.base import CoefficientStylizer
from edge_worker.model.emulated import EmulatedAccelerator, ServiceTimeProfile
from edge_worker.model.stylizer import resize

PROFILE = ServiceTimeProfile(fixed_ms=20.0, per_item_ms=5.0)
SLACK_S = 0.25
"""Generous: the shared 2-core machine may stall a thread, but a profile ignored or applied twice shows."""
OUT_SIZE = (320, 180)
Photos = tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def photos() -> Photos:
    return resize(skimage.data.chelsea(), OUT_SIZE), skimage.data.coffee()


def test_is_a_coefficient_stylizer() -> None:
    model = EmulatedAccelerator()
    assert isinstance(model, CoefficientStylizer) and model.name == "emulated"


def test_profile_arithmetic_and_validation() -> None:
    assert PROFILE.batch_seconds(4) == pytest.approx(0.040)
    with pytest.raises(ValueError, match=">= 0 ms"):
        ServiceTimeProfile(fixed_ms=-1.0)


@pytest.mark.parametrize("n", [1, 4, 16])
def test_a_batch_takes_fixed_plus_n_per_item(photos: Photos, n: int) -> None:
    content, style = photos
    model = EmulatedAccelerator(PROFILE)
    state = model.prepare_style(style)
    for call in (model.coefficients_batch, model.stylize_batch):
        tic = time.perf_counter()
        out = call([content] * n, [state] * n, [OUT_SIZE] * n)
        elapsed = time.perf_counter() - tic
        assert len(out) == n
        assert PROFILE.batch_seconds(n) <= elapsed <= 1.5 * PROFILE.batch_seconds(n) + SLACK_S


def test_a_single_call_is_a_batch_of_one(photos: Photos) -> None:
    content, style = photos
    model = EmulatedAccelerator(PROFILE)
    state = model.prepare_style(style)
    for call in (model.coefficients, model.stylize):
        tic = time.perf_counter()
        call(content, state, OUT_SIZE)
        assert PROFILE.batch_seconds(1) <= time.perf_counter() - tic <= 1.5 * PROFILE.batch_seconds(1) + SLACK_S


def test_output_is_a_real_colour_transfer(photos: Photos) -> None:
    content, style = photos
    model = EmulatedAccelerator(ServiceTimeProfile(0.0, 0.0))
    state = model.prepare_style(style)
    out, coeffs = model.stylize_with_coefficients(content, state, (640, 360))
    assert coeffs.shape == (1, 1, 12) and coeffs.dtype == np.float32
    assert out.shape == (360, 640, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(coeffs, model.coefficients(content, state, (640, 360)))
    style_mean = style.reshape(-1, 3).mean(0)
    before = np.linalg.norm(content.reshape(-1, 3).mean(0) - style_mean)
    after = np.linalg.norm(out.reshape(-1, 3).mean(0) - style_mean)
    assert after < 0.5 * before  # the mean colour moves most of the way to the style's
