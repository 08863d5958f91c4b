"""Quality metrics against scikit-image and against outputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from skimage.color import rgb2lab
from skimage.metrics import structural_similarity

from edge_worker import quality

NOISE_STD = 25.0


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    return skimage.data.chelsea(), skimage.data.coffee()[:300, :451]


def _noisy(image: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(0).normal(0, NOISE_STD, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _affine(image: np.ndarray) -> np.ndarray:
    matrix = np.array([[0.8, 0.1, 0.0], [0.0, 0.9, 0.1], [0.1, 0.0, 0.7]])
    return np.clip(image @ matrix.T + 12, 0, 255).astype(np.uint8)


def test_lab_matches_scikit_image(pair) -> None:
    np.testing.assert_allclose(quality.rgb_to_lab(pair[0]), rgb2lab(pair[0]), atol=1e-3)


def test_ssim_matches_scikit_image(pair) -> None:
    content, other = pair
    expected = structural_similarity(
        quality.luminance(content),
        quality.luminance(other),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
    )
    assert quality.structure_ssim(content, other) == pytest.approx(expected, abs=1e-6)
    assert quality.structure_ssim(content, content) == pytest.approx(1.0)


@pytest.mark.slow
def test_colour_distances(pair) -> None:
    content, style = pair
    for distance in (quality.gaussian_w2, quality.sliced_w2):
        assert distance(content, content) == pytest.approx(0.0, abs=1e-3)
        assert distance(content, style) > distance(content, _noisy(content))
        assert distance(content, style) > 5.0


@pytest.mark.slow
def test_matting_residual_separates_affine_from_noisy(pair) -> None:
    content = pair[0]
    affine = quality.matting_laplacian_residual(content, _affine(content))
    noisy = quality.matting_laplacian_residual(content, _noisy(content))
    assert affine < 1e-4 < noisy
    assert noisy > 100 * affine
