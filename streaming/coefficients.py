"""Local affine colour coefficients on the wire (the affine-coefficient interpolation mode).

The stylizer's output is ``A(x) · content(x) + b(x)`` with 12 smooth low-resolution maps
(``edge_worker.model.meta_smoothing``). Sent instead of a stylized frame, they let the phone
restyle every intermediate frame itself. The maps are smooth (the meta-smoothing filters them
twice), so they travel at half their grid size, each quantized to 8 bits over its own range and
delta-coded along rows, in a zlib-compressed :mod:`streaming.tensors` map: ~17 KB for the bundled
model at any output size, against 21-54 KB for a 640x360 JPEG key (applying the decoded maps
reproduces the full maps' output at 43-53 dB PSNR on three photo pairs).
"""

from __future__ import annotations

import cv2
import numpy as np

from streaming.protocol import ErrorCode, ProtocolError
from streaming.tensors import decode_tensors, encode_tensors

COEFF_CHANNELS = 12
"""A 3x3 colour matrix (row-major) and a 3-vector offset per pixel."""
QUANT_LEVELS = 255
SHRINK = 2
"""The grid is sent this many times smaller (area filter): 4x fewer bytes, no measurable loss (see above)."""
CV_MAX_CHANNELS = 4
"""cv2.resize takes at most this many channels."""
MAX_COEFF_PIXELS = 1 << 16
"""Largest coefficient grid accepted (the stylizer's is ~114 x 64)."""
_CODES, _LOW, _STEP = "codes", "low", "step"


def resize_coefficients(coeffs: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """Resize ``h x w x C`` float32 maps to ``size`` = (width, height) with any number of channels."""
    coeffs = np.asarray(coeffs, dtype=np.float32)
    parts = [
        cv2.resize(np.ascontiguousarray(coeffs[:, :, i : i + CV_MAX_CHANNELS]), size, interpolation=interpolation)
        for i in range(0, coeffs.shape[2], CV_MAX_CHANNELS)
    ]
    return np.dstack([p.reshape(size[1], size[0], -1) for p in parts])


def encode_coefficients(coeffs: np.ndarray) -> bytes:
    """``h x w x 12`` float coefficient maps → bytes (half-size grid, 8-bit codes per map over its own range)."""
    coeffs = np.asarray(coeffs, dtype=np.float32)
    if coeffs.ndim != 3 or coeffs.shape[2] != COEFF_CHANNELS or min(coeffs.shape[:2]) < 1:
        raise ValueError(f"coefficients must be h x w x {COEFF_CHANNELS}, got {coeffs.shape}")
    if coeffs.shape[0] * coeffs.shape[1] > MAX_COEFF_PIXELS:
        raise ValueError(f"coefficient grid {coeffs.shape[:2]} is larger than {MAX_COEFF_PIXELS} pixels")
    if not np.isfinite(coeffs).all():
        raise ValueError("coefficients must be finite")
    small = (max(1, coeffs.shape[1] // SHRINK), max(1, coeffs.shape[0] // SHRINK))
    coeffs = resize_coefficients(coeffs, small, cv2.INTER_AREA)
    low = coeffs.min(axis=(0, 1))
    step = (coeffs.max(axis=(0, 1)) - low) / QUANT_LEVELS
    step = np.where(step > 0, step, 1.0).astype(np.float32)
    codes = np.rint((coeffs - low) / step).astype(np.uint8)
    deltas = np.diff(codes, axis=1, prepend=np.zeros_like(codes[:, :1]))  # uint8 wraps: cumsum undoes it
    return encode_tensors({_CODES: deltas, _LOW: low, _STEP: step})


def decode_coefficients(data: bytes) -> np.ndarray:
    """Parse :func:`encode_coefficients` output into ``h x w x 12`` float32 (the half-size grid: resample it to
    the frame as the stylizer does, bilinear with pixel centres aligned); :class:`ProtocolError` on junk."""
    tensors = decode_tensors(data)
    codes, low, step = tensors.get(_CODES), tensors.get(_LOW), tensors.get(_STEP)
    if (
        codes is None
        or low is None
        or step is None
        or codes.dtype != np.uint8
        or codes.ndim != 3
        or codes.shape[2] != COEFF_CHANNELS
        or codes.size == 0
        or codes.shape[0] * codes.shape[1] > MAX_COEFF_PIXELS
        or low.shape != (COEFF_CHANNELS,)
        or step.shape != (COEFF_CHANNELS,)
    ):
        raise ProtocolError(ErrorCode.INVALID, "not a coefficient blob")
    codes = np.cumsum(codes, axis=1, dtype=np.uint8)
    out = codes.astype(np.float32) * step.astype(np.float32) + low.astype(np.float32)
    if not np.isfinite(out).all():
        raise ProtocolError(ErrorCode.INVALID, "coefficients are not finite")
    return out
