"""The random photographic looks: seeded, per-pixel colour functions that change a photo plausibly."""

from __future__ import annotations

import numpy as np
import pytest

from edge_worker.looks import HslBand, Look, random_look
from edge_worker.quality import luminance, structure_ssim
from edge_worker.training import bundled_photo


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return bundled_photo("coffee.png")[::2, ::2].copy()


def test_the_default_look_is_the_identity(photo: np.ndarray) -> None:
    assert np.abs(Look().apply(photo).astype(int) - photo).max() <= 1  # float round trip


def test_a_seed_gives_one_look_and_seeds_differ(photo: np.ndarray) -> None:
    assert random_look(7) == random_look(7)
    assert np.array_equal(random_look(7).apply(photo), random_look(7).apply(photo))
    assert np.abs(random_look(7).apply(photo).astype(int) - random_look(8).apply(photo)).mean() > 3


def test_a_look_is_a_colour_function_of_each_pixel(photo: np.ndarray) -> None:
    """The same colour maps to the same colour wherever it is: shuffling pixels commutes with the look."""
    look = random_look(3)
    order = np.random.default_rng(0).permutation(photo.shape[0] * photo.shape[1])
    shuffled = photo.reshape(-1, 1, 3)[order]
    assert np.array_equal(look.apply(shuffled), look.apply(photo).reshape(-1, 1, 3)[order])


def test_random_looks_change_colours_but_keep_the_photo(photo: np.ndarray) -> None:
    for seed in range(12):
        out = random_look(seed).apply(photo)
        assert out.shape == photo.shape and out.dtype == np.uint8
        change = np.abs(out.astype(int) - photo).mean()
        assert 4 < change < 60, (seed, change)  # visibly another look, not another picture
        assert structure_ssim(photo, out) > 0.75, seed
        assert np.corrcoef(luminance(photo).ravel(), luminance(out).ravel())[0, 1] > 0.9, seed


def test_each_step_does_what_a_photographer_expects(photo: np.ndarray) -> None:
    grey = Look(saturation=0.0).apply(photo).astype(int)
    assert np.abs(grey[..., 0] - grey[..., 2]).max() <= 1
    warm = Look(white_balance=(1.2, 1.0, 0.8)).apply(photo).astype(float)
    assert warm[..., 0].mean() > photo[..., 0].mean() and warm[..., 2].mean() < photo[..., 2].mean()
    assert Look(fade=0.1).apply(np.zeros((2, 2, 3), np.uint8)).min() == round(0.1 * 255)
    dark = Look(curve=(0.0, 0.2, 0.4, 0.7, 1.0)).apply(photo)
    assert luminance(dark).mean() < luminance(photo).mean()
    red = np.full((1, 1, 3), (200, 40, 40), np.uint8)
    shifted = Look(hsl=(HslBand(centre=0.0, hue_shift=30.0, saturation=1.0, lightness=0.0),)).apply(red)
    assert shifted[0, 0, 1] > 60  # red turned toward orange
    blue = np.full((1, 1, 3), (40, 40, 200), np.uint8)
    assert np.array_equal(Look(hsl=(HslBand(0.0, 30.0, 1.0, 0.0),)).apply(blue), blue)  # other hues untouched


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        Look().apply(np.zeros((4, 4), np.uint8))
