"""The colour transfer against closed forms on known Gaussians, computed here with numpy/scipy, not the module.

Pitie & Kokaram's map takes the content Gaussian N(mu_c, S_c) onto the style's N(mu_s, S_s):
A = S_c^-1/2 (S_c^1/2 S_s S_c^1/2)^1/2 S_c^-1/2, b = mu_s - A mu_c. So the output's colour mean and covariance
are the style's; A is symmetric positive definite (the least-displacement map, not just any map with the right
covariance); for independent channels A is the diagonal of the style's over the content's standard deviations.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_worker.model.color_transfer import COV_EPS, LinearColorTransfer
from tests.oracles import colour_moments, monge_kantorovich

SIDE = 200  # 40 000 pixels: below the statistics' resize threshold, so every pixel counts
MEAN_TOLERANCE = 0.5 / 255  # uint8 rounding of the output
COV_RTOL = 0.03  # rounding adds ~1/12 level^2 per channel; clipping of the rare tail pixels


def _gaussian_image(mean: np.ndarray, cov: np.ndarray, seed: int) -> np.ndarray:
    """An RGB uint8 image whose colours (in [0, 1]) are samples of N(mean, cov), whitened so that the sample
    statistics are exactly the asked ones before rounding."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((SIDE * SIDE, 3))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z.T))).T  # sample covariance exactly I
    pixels = mean + z @ np.linalg.cholesky(cov).T
    assert pixels.min() > 0 and pixels.max() < 1, "choose Gaussians well inside the colour cube"
    return np.round(pixels * 255).astype(np.uint8).reshape(SIDE, SIDE, 3)


CONTENT = (
    np.array([0.45, 0.5, 0.4]),
    np.array([[0.006, 0.002, 0.001], [0.002, 0.005, 0.0015], [0.001, 0.0015, 0.007]]),
)
STYLE = (np.array([0.6, 0.4, 0.3]), np.array([[0.004, -0.001, 0.0005], [-0.001, 0.003, 0.0], [0.0005, 0.0, 0.002]]))


def _map(content: np.ndarray, style: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model = LinearColorTransfer()
    coeffs = model.coefficients(content, model.prepare_style(style), (SIDE, SIDE))
    assert coeffs.shape == (1, 1, 12)
    return coeffs[0, 0, :9].reshape(3, 3).astype(np.float64), coeffs[0, 0, 9:].astype(np.float64)


def test_output_has_the_styles_mean_and_covariance() -> None:
    content, style = _gaussian_image(*CONTENT, seed=1), _gaussian_image(*STYLE, seed=2)
    model = LinearColorTransfer()
    out = model.stylize(content, model.prepare_style(style), (SIDE, SIDE))
    (out_mean, out_cov), (style_mean, style_cov) = colour_moments(out), colour_moments(style)
    np.testing.assert_allclose(out_mean, style_mean, atol=MEAN_TOLERANCE)
    np.testing.assert_allclose(out_cov, style_cov, rtol=0, atol=COV_RTOL * np.abs(style_cov).max())
    # ... and is not the content's: the test can tell.
    content_mean, content_cov = colour_moments(content)
    assert np.abs(content_mean - style_mean).max() > 0.1
    assert np.abs(content_cov - style_cov).max() > 5 * COV_RTOL * np.abs(style_cov).max()


def test_map_is_the_monge_kantorovich_closed_form() -> None:
    content, style = _gaussian_image(*CONTENT, seed=3), _gaussian_image(*STYLE, seed=4)
    expected_a, expected_b = monge_kantorovich(content, style)
    cov_c, cov_s = (colour_moments(image)[1] + COV_EPS * np.eye(3) for image in (content, style))
    a, b = _map(content, style)
    np.testing.assert_allclose(a, expected_a, atol=1e-4)
    np.testing.assert_allclose(b, expected_b, atol=1e-5)
    np.testing.assert_allclose(a, a.T, atol=1e-5)  # the least-displacement map is symmetric ...
    assert np.linalg.eigvalsh((a + a.T) / 2).min() > 0  # ... and positive definite
    np.testing.assert_allclose(a @ cov_c @ a.T, cov_s, atol=1e-6)  # and it carries S_c onto S_s


@pytest.mark.parametrize("seed", [5, 6])
def test_independent_channels_are_scaled_by_the_ratio_of_standard_deviations(seed: int) -> None:
    content_std, style_std = np.array([0.08, 0.05, 0.1]), np.array([0.04, 0.09, 0.06])
    content = _gaussian_image(np.array([0.5, 0.45, 0.5]), np.diag(content_std**2), seed)
    style = _gaussian_image(np.array([0.3, 0.6, 0.55]), np.diag(style_std**2), seed + 100)
    (mu_c, cov_c), (mu_s, cov_s) = colour_moments(content), colour_moments(style)
    ratio = np.sqrt((np.diag(cov_s) + COV_EPS) / (np.diag(cov_c) + COV_EPS))
    a, b = _map(content, style)
    np.testing.assert_allclose(np.diag(a), ratio, rtol=2e-3)
    assert np.abs(a - np.diag(np.diag(a))).max() < 0.02  # rounding leaves a trace of correlation, no more
    np.testing.assert_allclose(b, mu_s - a @ mu_c, atol=1e-5)
    np.testing.assert_allclose(np.diag(a), style_std / content_std, rtol=0.05)  # the distributions asked for


def test_a_style_equal_to_the_content_gives_the_identity() -> None:
    content = _gaussian_image(*CONTENT, seed=7)
    a, b = _map(content, content)
    np.testing.assert_allclose(a, np.eye(3), atol=1e-4)
    np.testing.assert_allclose(b, np.zeros(3), atol=1e-4)
