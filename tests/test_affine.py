import numpy as np
import pytest
import torch

from edge_worker.model.stylizer import PhotoStylizer
from mobile_sim.affine import AffineCoefficients, AffineRenderer
from mobile_sim.sources import SyntheticCamera, sample_photo

SIZE = (200, 120)
MAX_DIFFERING_SHARE = 0.01
"""Float32 sums in another order than torch's may round a few pixels the other way."""


@pytest.fixture(scope="module")
def stylized_key() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(content BGR, the tiny model's stylization BGR, its coefficients)."""
    torch.manual_seed(0)
    model = PhotoStylizer.from_config("tiny").eval()
    photo = sample_photo("astronaut")
    content = SyntheticCamera(photo, size=SIZE, frames=1).render(0)
    style = model.prepare_style(np.ascontiguousarray(photo[::-1, :, ::-1]))  # any other image
    out_rgb, coeffs = model.stylize_with_coefficients(np.ascontiguousarray(content[..., ::-1]), style, SIZE)
    return content, np.ascontiguousarray(out_rgb[..., ::-1]), coeffs


def test_applied_to_the_key_reproduces_the_model(stylized_key: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    content, expected, coeffs = stylized_key
    assert coeffs.shape[:2] != content.shape[:2], "the grid must be coarser than the frame for this test"
    out = AffineRenderer().apply(content, AffineCoefficients.from_model(coeffs))
    difference = np.abs(out.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1
    assert np.mean(difference > 0) < MAX_DIFFERING_SHARE


def test_zero_flow_leaves_the_maps_and_a_shift_moves_them(
    stylized_key: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    _, _, coeffs = stylized_key
    maps = AffineCoefficients.from_model(coeffs)
    height, width = coeffs.shape[:2]
    still = maps.moved(np.zeros((2 * height, 2 * width, 2), np.float32))
    for a, b in zip(still.planes, maps.planes, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    shift = np.zeros((2 * height, 2 * width, 2), np.float32)
    shift[..., 0] = 4.0  # 4 flow pixels = 2 grid cells to the right in the key
    moved = maps.moved(shift)
    for a, b in zip(moved.planes, maps.planes, strict=True):
        np.testing.assert_allclose(a[:, :-2], b[:, 2:], atol=1e-4)


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="h x w x 12"):
        AffineCoefficients.from_model(np.zeros((4, 4, 9), np.float32))
    maps = AffineCoefficients.from_model(np.zeros((4, 4, 12), np.float32))
    with pytest.raises(ValueError, match="BGR uint8"):
        AffineRenderer().apply(np.zeros((8, 8), np.uint8), maps)
