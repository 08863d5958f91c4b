"""Wire format of the affine colour coefficients (streaming.coefficients)."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.coefficients import COEFF_CHANNELS, QUANT_LEVELS, SHRINK, decode_coefficients, encode_coefficients
from streaming.protocol import ProtocolError
from streaming.tensors import encode_tensors


def _smooth_maps(height: int = 64, width: int = 114) -> np.ndarray:
    """Maps that vary linearly over the grid, with a different range per channel (like the stylizer's)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    gains = np.linspace(-3.0, 7.0, COEFF_CHANNELS, dtype=np.float32)
    return (gains * (x / width + 0.5 * y / height)[:, :, None] + np.arange(COEFF_CHANNELS)).astype(np.float32)


def test_round_trip_half_grid_within_a_quantization_step() -> None:
    coeffs = _smooth_maps()
    decoded = decode_coefficients(encode_coefficients(coeffs))
    assert decoded.shape == (coeffs.shape[0] // SHRINK, coeffs.shape[1] // SHRINK, COEFF_CHANNELS)
    block_means = coeffs.reshape(decoded.shape[0], SHRINK, decoded.shape[1], SHRINK, COEFF_CHANNELS).mean((1, 3))
    ranges = block_means.max((0, 1)) - block_means.min((0, 1))
    assert (np.abs(decoded - block_means).max(axis=(0, 1)) <= ranges / QUANT_LEVELS / 2 + 1e-5).all()


def test_constant_maps_are_exact() -> None:
    coeffs = np.broadcast_to(np.arange(COEFF_CHANNELS, dtype=np.float32), (10, 20, COEFF_CHANNELS))
    np.testing.assert_array_equal(decode_coefficients(encode_coefficients(coeffs)), coeffs[::2, ::2])


def test_smaller_than_fp16_maps() -> None:
    coeffs = _smooth_maps()
    assert len(encode_coefficients(coeffs)) < coeffs.size * 2 / 8


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 3), np.float32),
        np.zeros((0, 4, COEFF_CHANNELS), np.float32),
        np.full((4, 4, COEFF_CHANNELS), np.nan, np.float32),
        np.zeros((300, 300, COEFF_CHANNELS), np.float32),
    ],
)
def test_bad_maps_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_coefficients(bad)


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"\x00garbage",
        encode_tensors({"codes": np.zeros((2, 2, 3), np.uint8)}),
        encode_tensors(
            {
                "codes": np.zeros((2, 2, 12), np.float32),
                "low": np.zeros(12, np.float32),
                "step": np.ones(12, np.float32),
            }
        ),
        encode_tensors(
            {"codes": np.zeros((2, 2, 12), np.uint8), "low": np.full(12, np.inf, np.float32), "step": np.ones(12)}
        ),
    ],
)
def test_junk_is_a_protocol_error(junk: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_coefficients(junk)
