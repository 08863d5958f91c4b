"""The random photographic looks of the look-transfer check (and of the lite model's training): seeded, per-pixel
colour functions that change a photo plausibly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge_worker.looks import Look, random_look
from edge_worker.quality import luminance, structure_ssim
from edge_worker.training import bundled_photo

NEUTRAL = Look(
    gains=np.ones(3, np.float32),
    gammas=np.ones(3, np.float32),
    contrast=0.0,
    mix=np.eye(3, dtype=np.float32),
    saturation=1.0,
    shadow_tint=np.zeros(3, np.float32),
    highlight_tint=np.zeros(3, np.float32),
    fade=0.0,
    hue_centre=0.0,
    hue_width=0.0,
    hue_shift=0.0,
    hue_saturation=1.0,
    hue_lightness=0.0,
)


def look(seed: int) -> Look:
    return random_look(np.random.default_rng(seed))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return bundled_photo("coffee.png")[::2, ::2].copy()


def test_the_neutral_look_is_the_identity(photo: np.ndarray) -> None:
    assert np.abs(NEUTRAL.apply_uint8(photo).astype(int) - photo).max() <= 1  # float round trip


def test_a_seed_gives_one_look_and_seeds_differ(photo: np.ndarray) -> None:
    assert np.array_equal(look(7).apply_uint8(photo), look(7).apply_uint8(photo))
    assert np.abs(look(7).apply_uint8(photo).astype(int) - look(8).apply_uint8(photo)).mean() > 3


def test_a_look_is_a_colour_function_of_each_pixel(photo: np.ndarray) -> None:
    """The same colour maps to the same colour wherever it is: shuffling pixels commutes with the look."""
    for seed in range(4):
        order = np.random.default_rng(0).permutation(photo.shape[0] * photo.shape[1])
        shuffled = photo.reshape(-1, 1, 3)[order]
        moved = look(seed).apply_uint8(photo).reshape(-1, 1, 3)[order].astype(int)
        assert np.abs(look(seed).apply_uint8(shuffled) - moved).max() <= 1  # float32 sums differ by layout


def test_random_looks_change_colours_but_keep_the_photo(photo: np.ndarray) -> None:
    changes = []
    for seed in range(12):
        out = look(seed).apply_uint8(photo)
        assert out.shape == photo.shape and out.dtype == np.uint8
        changes.append(np.abs(out.astype(int) - photo).mean())
        assert changes[-1] < 80, seed  # another look, not another picture
        assert structure_ssim(photo, out) > 0.5, seed
        assert np.corrcoef(luminance(photo).ravel(), luminance(out).ravel())[0, 1] > 0.8, seed
    assert np.median(changes) > 8  # most looks are visibly different


def test_each_step_does_what_a_photographer_expects(photo: np.ndarray) -> None:
    grey = dataclasses.replace(NEUTRAL, saturation=0.0).apply_uint8(photo).astype(int)
    assert np.abs(grey[..., 0] - grey[..., 2]).max() <= 1
    warm = dataclasses.replace(NEUTRAL, gains=np.array([1.2, 1.0, 0.8], np.float32)).apply_uint8(photo).astype(float)
    assert warm[..., 0].mean() > photo[..., 0].mean() and warm[..., 2].mean() < photo[..., 2].mean()
    assert dataclasses.replace(NEUTRAL, fade=0.1).apply_uint8(np.zeros((2, 2, 3), np.uint8)).min() == round(0.1 * 255)
    darker = dataclasses.replace(NEUTRAL, gammas=np.full(3, 1.5, np.float32)).apply_uint8(photo)
    assert luminance(darker).mean() < luminance(photo).mean()
    hue = dataclasses.replace(NEUTRAL, hue_centre=0.0, hue_width=40.0, hue_shift=30.0)
    red = np.full((1, 1, 3), (200, 40, 40), np.uint8)
    assert hue.apply_uint8(red)[0, 0, 1] > 60  # red turned toward orange
    blue = np.full((1, 1, 3), (40, 40, 200), np.uint8)
    assert np.array_equal(hue.apply_uint8(blue), blue)  # other hues untouched
