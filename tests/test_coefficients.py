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


def _blob(codes: np.ndarray | None = None, low: np.ndarray | None = None, step: np.ndarray | None = None) -> bytes:
    """A coefficient blob with every part valid unless given (None leaves a valid default, ... drops it)."""
    parts = {
        "codes": np.zeros((2, 3, COEFF_CHANNELS), np.uint8) if codes is None else codes,
        "low": np.zeros(COEFF_CHANNELS, np.float32) if low is None else low,
        "step": np.ones(COEFF_CHANNELS, np.float32) if step is None else step,
    }
    return encode_tensors({k: v for k, v in parts.items() if v is not ...})


@pytest.mark.parametrize(
    "blob",
    [
        _blob(codes=...),
        _blob(low=...),
        _blob(step=...),
        _blob(codes=np.zeros((2, 3), np.uint8)),
        _blob(codes=np.zeros((2, 3, 11), np.uint8)),
        _blob(codes=np.zeros((0, 3, COEFF_CHANNELS), np.uint8)),
        _blob(codes=np.zeros((257, 256, COEFF_CHANNELS), np.uint8)),  # one row more than the largest grid
        _blob(low=np.zeros(11, np.float32)),
        _blob(step=np.ones(13, np.float32)),
    ],
    ids=["no-codes", "no-low", "no-step", "2d", "11-maps", "empty", "too-big", "short-low", "long-step"],
)
def test_each_malformed_part_is_refused(blob: bytes) -> None:
    """One part wrong at a time, the others valid: every check counts on its own."""
    with pytest.raises(ProtocolError, match="not a coefficient blob"):
        decode_coefficients(blob)
    assert decode_coefficients(_blob()).shape == (2, 3, COEFF_CHANNELS)  # the valid blob it was made from


def test_grids_from_one_cell_to_the_largest_travel() -> None:
    """A global colour map (1 x 1) stays 1 x 1; a 1-cell-high grid keeps a row; the largest grid is accepted."""
    single = np.arange(COEFF_CHANNELS, dtype=np.float32).reshape(1, 1, COEFF_CHANNELS)
    np.testing.assert_array_equal(decode_coefficients(encode_coefficients(single)), single)
    row = np.tile(single, (1, 6, 1))
    assert decode_coefficients(encode_coefficients(row)).shape == (1, 3, COEFF_CHANNELS)
    column = np.tile(single, (6, 1, 1))
    assert decode_coefficients(encode_coefficients(column)).shape == (3, 1, COEFF_CHANNELS)
    largest = np.zeros((256, 256, COEFF_CHANNELS), np.float32)  # MAX_COEFF_PIXELS exactly
    assert decode_coefficients(encode_coefficients(largest)).shape == (128, 128, COEFF_CHANNELS)
    with pytest.raises(ValueError, match="larger than"):
        encode_coefficients(np.zeros((257, 256, COEFF_CHANNELS), np.float32))
    with pytest.raises(ValueError, match="larger than"):
        encode_coefficients(np.zeros((1, 65537, COEFF_CHANNELS), np.float32))


def test_float64_maps_are_sent_as_float32() -> None:
    maps = _smooth_maps(8, 10).astype(np.float64)
    decoded = decode_coefficients(encode_coefficients(maps))
    assert decoded.dtype == np.float32 and decoded.shape == (4, 5, COEFF_CHANNELS)
