"""Temporal smoothing of the output video: flicker is damped, moving content is not ghosted, cuts reset it."""

import cv2
import numpy as np
import pytest

from mobile_sim.flow import FlowEstimator
from mobile_sim.reconstruct import Reconstructor
from mobile_sim.sources import sample_photo
from mobile_sim.temporal import TemporalFilter
from mobile_sim.warp import Warper

WIDTH, HEIGHT = 256, 192
PHOTO = cv2.resize(sample_photo("astronaut"), (WIDTH + 64, HEIGHT), interpolation=cv2.INTER_AREA)
OTHER = cv2.resize(sample_photo("coffee"), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
PAN_PX = 3
WEIGHT = 0.5


def pan(t: int) -> np.ndarray:
    """A camera pan over a photo, PAN_PX pixels per frame."""
    return np.ascontiguousarray(PHOTO[:, PAN_PX * t : PAN_PX * t + WIDTH])


def recolour(frame: np.ndarray, gain: float) -> np.ndarray:
    """A stylization of the frame: one colour map, whose gain may flicker."""
    return np.clip(frame.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def smoothing() -> TemporalFilter:
    return TemporalFilter(FlowEstimator(), Warper(), WEIGHT)


def test_flicker_on_a_static_scene_is_damped_by_the_weight() -> None:
    temporal = smoothing()
    frame = pan(0)
    gains = [0.8, 1.0] * 4
    outputs = [temporal(frame, recolour(frame, g)).astype(np.float32) for g in gains]
    raw_step = np.abs(recolour(frame, 1.0).astype(np.float32) - recolour(frame, 0.8)).mean()
    for before, after in zip(outputs[3:], outputs[4:], strict=False):
        step = np.abs(after - before).mean()
        assert step < 0.45 * raw_step  # a recursive blend at weight 0.5 settles to a third of the jump


def test_moving_content_is_not_ghosted() -> None:
    temporal = smoothing()
    for t in range(6):
        frame = pan(t)
        out = temporal(frame, recolour(frame, 0.9))
    error = np.abs(out.astype(np.float32) - recolour(pan(5), 0.9)).mean()
    assert error < 2.0  # bilinear resampling of the previous output, not a double image


def test_a_cut_passes_the_new_frame_unchanged() -> None:
    temporal = smoothing()
    temporal(pan(0), recolour(pan(0), 0.6))
    out = temporal(OTHER, recolour(OTHER, 1.0))
    assert np.abs(out.astype(np.float32) - recolour(OTHER, 1.0)).mean() < 2.0


def test_bad_weights_and_sizes_are_rejected() -> None:
    for weight in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="weight"):
            TemporalFilter(FlowEstimator(), Warper(), weight)
    with pytest.raises(ValueError, match="temporal_weight"):
        Reconstructor(FlowEstimator(), Warper(), temporal_weight=1.0)
    with pytest.raises(ValueError, match="same shape"):
        smoothing()(pan(0), pan(0)[:100])


def test_reconstructor_smooths_stylized_frames_and_passes_failed_ones() -> None:
    rec = Reconstructor(FlowEstimator(), Warper(), temporal_weight=WEIGHT)
    rec.add_frame(0, pan(0), 0)
    rec.add_stylized(0, recolour(pan(0), 0.6))
    rec.add_frame(1, pan(1), 0)
    rec.add_frame(2, pan(2), 2)
    rec.key_failed(2, "test")
    rec.add_frame(3, OTHER, 3)
    rec.key_failed(3, "test")
    out = {frame.frame_id: frame for frame in rec.pop_ready()}
    assert out[0].kind == "key" and out[1].kind == "warped"
    assert out[2].kind == "fallback"
    np.testing.assert_array_equal(out[0].image, recolour(pan(0), 0.6))  # the first frame has nothing to blend
    assert np.abs(out[1].image.astype(np.float32) - recolour(pan(1), 0.6)).mean() < 3.0
