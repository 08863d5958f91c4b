"""Batched network calls: ``coefficients_batch`` / ``stylize_batch`` equal the item-by-item results.

Tolerance: the batched network sums in another order (oneDNN and cuDNN choose kernels and blocking by batch size,
fp32 reassociation), and the guided filter's per-window 3x3 ridge solve amplifies those ~1e-7 relative
differences: on a randomly initialized tiny net the maps move by up to ~2e-3 (of values up to ~4), the rendered
frames by at most one level on well under 1 % of the values. The bundled model came out identical on this CPU.
A batch of one is exactly the single call (the same operations on the same tensors).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import skimage.data
import torch

from edge_worker.model.color_transfer import LinearColorTransfer
from edge_worker.model.meta_smoothing import GAIN_PRIOR_WEIGHT
from edge_worker.model.stylizer import CONFIGS, DEFAULT_MODEL_PATH, PhotoStylizer, resize

MAPS_RTOL, MAPS_ATOL = 1e-3, 5e-3
FRAME_MAX_LEVELS = 1
FRAME_MAX_CHANGED_SHARE = 0.01
FRAME = (320, 180)
Batch = tuple[list[np.ndarray], list[np.ndarray], list[tuple[int, int]]]


def _tiny() -> PhotoStylizer:
    torch.manual_seed(0)
    config = dataclasses.replace(CONFIGS["tiny"], smoothing_downsample=2, smoothing_gain_prior=GAIN_PRIOR_WEIGHT)
    return PhotoStylizer(config).eval()


def _bundled() -> PhotoStylizer:
    return PhotoStylizer.load(DEFAULT_MODEL_PATH)


@pytest.fixture(scope="module")
def batch() -> Batch:
    """Three different frames (one of another aspect ratio: its own network size), two styles, and output sizes
    of two widths (two upscale factors r in one network batch)."""
    frames = [
        resize(skimage.data.chelsea(), FRAME),
        resize(skimage.data.astronaut(), FRAME),
        resize(skimage.data.rocket(), FRAME),
        resize(skimage.data.coffee(), (200, 200)),
    ]
    styles = [skimage.data.coffee(), skimage.data.hubble_deep_field()]
    picks = [styles[0], styles[1], styles[0], styles[1]]
    sizes = [FRAME, FRAME, (FRAME[0] // 2, FRAME[1] // 2), (200, 200)]
    return frames, picks, sizes


@pytest.mark.slow
@pytest.mark.parametrize("make", [_tiny, _bundled], ids=["tiny", "bundled"])
def test_batched_equals_item_by_item(make: Callable[[], PhotoStylizer], batch: Batch) -> None:
    model = make()
    frames, style_images, sizes = batch
    states = [model.prepare_style(s) for s in style_images]
    batched = model.coefficients_batch(frames, states, sizes)
    single = [model.coefficients(f, s, o) for f, s, o in zip(frames, states, sizes, strict=True)]
    for got, expected in zip(batched, single, strict=True):
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=MAPS_RTOL, atol=MAPS_ATOL)
    rendered = model.stylize_batch(frames, states, sizes)
    for got, f, s, o in zip(rendered, frames, states, sizes, strict=True):
        expected = model.stylize(f, s, o)
        assert got.shape == (o[1], o[0], 3) and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - expected)
        assert diff.max() <= FRAME_MAX_LEVELS and (diff > 0).mean() <= FRAME_MAX_CHANGED_SHARE


def test_a_lone_request_is_the_single_call_exactly(batch: Batch) -> None:
    model = _tiny()
    frames, style_images, sizes = batch
    state = model.prepare_style(style_images[0])
    np.testing.assert_array_equal(
        model.coefficients_batch(frames[:1], [state], sizes[:1])[0], model.coefficients(frames[0], state, sizes[0])
    )
    np.testing.assert_array_equal(
        model.stylize_batch(frames[:1], [state], sizes[:1])[0], model.stylize(frames[0], state, sizes[0])
    )


def test_empty_and_ragged_batches() -> None:
    model = _tiny()
    assert model.coefficients_batch([], [], []) == [] and model.stylize_batch([], [], []) == []
    frame = resize(skimage.data.chelsea(), FRAME)
    state = model.prepare_style(skimage.data.coffee())
    with pytest.raises(ValueError, match="batch lengths differ"):
        model.coefficients_batch([frame, frame], [state], [FRAME, FRAME])
    with pytest.raises(ValueError, match="content"):
        model.coefficients_batch([frame[..., 0]], [state], [FRAME])


def test_literal_smoothing_batches_have_no_coefficients() -> None:
    literal = PhotoStylizer(dataclasses.replace(CONFIGS["tiny"], smoothing="literal", colour_alignment=False)).eval()
    frame = resize(skimage.data.chelsea(), FRAME)
    state = literal.prepare_style(skimage.data.coffee())
    assert [m.size for m in literal.coefficients_batch([frame, frame], [state, state], [FRAME, FRAME])] == [0, 0]
    frames = literal.stylize_batch([frame], [state], [FRAME])
    np.testing.assert_array_equal(frames[0], literal.stylize(frame, state, FRAME))


def test_colour_transfer_batches_are_its_single_calls(batch: Batch) -> None:
    stylizer = LinearColorTransfer()
    frames, style_images, sizes = batch
    states = [stylizer.prepare_style(s) for s in style_images]
    for got, f, s, o in zip(stylizer.coefficients_batch(frames, states, sizes), frames, states, sizes, strict=True):
        np.testing.assert_array_equal(got, stylizer.coefficients(f, s, o))
    for got, f, s, o in zip(stylizer.stylize_batch(frames, states, sizes), frames, states, sizes, strict=True):
        np.testing.assert_array_equal(got, stylizer.stylize(f, s, o))
