"""MS-SSIM, PSNR and warping error used by bench/interpolation.py."""

import cv2
import numpy as np
import pytest

from bench.metrics import WarpingError, ms_ssim
from edge_worker.quality import psnr
from mobile_sim.sources import SyntheticCamera, sample_photo

CAMERA = SyntheticCamera(sample_photo(), size=(256, 192), pan_px_per_frame=2.0)
IMAGE = CAMERA.render(0)


def noisy(sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, IMAGE.shape)
    return np.clip(IMAGE + noise, 0, 255).astype(np.uint8)


def test_identical_images_score_one() -> None:
    assert ms_ssim(IMAGE, IMAGE) == pytest.approx(1.0, abs=1e-6)
    assert psnr(IMAGE, IMAGE) == float("inf")


def test_ms_ssim_falls_monotonically_with_noise() -> None:
    scores = [ms_ssim(IMAGE, noisy(sigma)) for sigma in (1, 3, 8, 20, 50)]
    assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), scores
    assert scores[0] > 0.995 and scores[-1] < 0.9, scores  # measured: 0.9997 ... 0.841


def test_ms_ssim_is_symmetric_and_checks_sizes() -> None:
    other = noisy(10)
    assert ms_ssim(IMAGE, other) == pytest.approx(ms_ssim(other, IMAGE), abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        ms_ssim(IMAGE, IMAGE[:-2])
    with pytest.raises(ValueError, match="176"):
        ms_ssim(IMAGE[:100], IMAGE[:100])


def test_psnr_of_known_error() -> None:
    shifted = IMAGE.astype(np.int16) + 5
    assert psnr(IMAGE, np.clip(shifted, 0, 255).astype(np.uint8)) == pytest.approx(34.15, abs=0.3)


def test_warping_error_is_low_for_the_video_itself_and_high_for_flicker() -> None:
    frames = [CAMERA.render(i) for i in range(4)]
    error = WarpingError(frames)
    flicker = [frame if i % 2 else 255 - frame for i, frame in enumerate(frames)]
    consistent, flickering = error(frames), error(flicker)
    # Measured: 0.00004 vs 1.25.
    assert consistent < 0.002 and flickering > 100 * consistent, (consistent, flickering)


def test_warping_error_skips_pairs_across_a_cut() -> None:
    other = cv2.resize(sample_photo("coffee"), (256, 192), interpolation=cv2.INTER_AREA)
    frames = [CAMERA.render(0), CAMERA.render(1), other, other]
    error = WarpingError(frames)
    assert error.cuts == 1
    # Only the pairs inside a shot count: frames that jump at the cut are not penalized there...
    assert error(frames) < 0.002
    # ...while a jump inside a shot is.
    assert error([frames[0], 255 - frames[1], other, other]) > 0.05
