"""Still-image codecs used on the wire (JPEG, PNG), in one place.

Decoding is bounded before it starts: :func:`image_size` reads the width and height from the
header (a JPEG's start-of-frame segment, a PNG's IHDR chunk) and :func:`decode_image` refuses an
image whose header claims more than :data:`MAX_DECODED_PIXELS` (or ``max_side``) before the codec
allocates anything. An 820-byte JPEG header can claim 30000x30000 pixels (2.7 GB decoded); the
header check answers it in microseconds. Formats whose header we do not read are refused.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

DEFAULT_JPEG_QUALITY = 90
MIN_JPEG_QUALITY = 50
JPEG_QUALITY_STEP = 10

MAX_DECODED_PIXELS = 4096 * 4096
"""Most pixels any decode may produce (about 50 MB as BGR), whatever the caller's side limit."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""Start-of-frame markers (baseline, progressive, lossless, ...): not DHT (C4), JPG (C8) or DAC (CC)."""
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
"""Markers without a length field (TEM, RST0-7)."""


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image, or an image over the size limits."""


def encode_jpeg(image_bgr: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY, max_bytes: int | None = None) -> bytes:
    """JPEG-encode a BGR image; lower the quality step by step until it fits ``max_bytes``."""
    while True:
        ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError(f"JPEG encoding failed for an image of shape {image_bgr.shape}")
        if max_bytes is None or buf.size <= max_bytes:
            return buf.tobytes()
        if quality - JPEG_QUALITY_STEP < MIN_JPEG_QUALITY:
            raise ValueError(f"image of shape {image_bgr.shape} does not fit {max_bytes} B even at quality {quality}")
        quality -= JPEG_QUALITY_STEP


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG or PNG header, without decoding; :class:`ImageDecodeError` otherwise."""
    if data.startswith(PNG_SIGNATURE):
        # The IHDR chunk comes first: length (4), b"IHDR", width (4), height (4), big-endian.
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageDecodeError("PNG without an IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data.startswith(JPEG_SOI):
        return _jpeg_size(data)
    raise ImageDecodeError(f"{len(data)} B are neither a JPEG nor a PNG image")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the JPEG's marker segments up to the first start-of-frame; read its height and width."""
    pos = len(JPEG_SOI)
    while True:
        while pos < len(data) and data[pos] != 0xFF:  # tolerate garbage between segments, as decoders do
            pos += 1
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= len(data):
            raise ImageDecodeError("JPEG without a start-of-frame header")
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            raise ImageDecodeError("JPEG without a start-of-frame header")
        if pos + 2 > len(data):
            raise ImageDecodeError("truncated JPEG header")
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if marker in _JPEG_SOF_MARKERS:
            if length < 7 or pos + 7 > len(data):
                raise ImageDecodeError("truncated JPEG start-of-frame header")
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])  # after length (2) and precision (1)
            return width, height
        if length < 2:
            raise ImageDecodeError("corrupt JPEG segment length")
        pos += length


def check_image_size(data: bytes, max_side: int | None = None, max_pixels: int = MAX_DECODED_PIXELS) -> tuple[int, int]:
    """(width, height) from the header, refused (:class:`ImageDecodeError`) when empty or over the limits."""
    width, height = image_size(data)
    if width == 0 or height == 0:
        raise ImageDecodeError(f"image header claims an empty {width}x{height} image")
    if max_side is not None and max(width, height) > max_side:
        raise ImageDecodeError(f"image of {width}x{height} exceeds {max_side} px per side")
    if width * height > max_pixels:
        raise ImageDecodeError(f"image of {width}x{height} exceeds {max_pixels} pixels")
    return width, height


def decode_image(data: bytes, max_side: int | None = None, max_pixels: int = MAX_DECODED_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG bytes to a BGR uint8 image; :class:`ImageDecodeError` if impossible or over the limits.

    The limits are checked on the header first (:func:`check_image_size`), then again on what was decoded."""
    if not data:
        raise ImageDecodeError("empty image data")
    width, height = check_image_size(data, max_side, max_pixels)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageDecodeError(f"{len(data)} B are not a decodable image")
    if image.shape[:2] not in ((height, width), (width, height)):  # (EXIF orientation may swap the sides)
        raise ImageDecodeError(f"decoded {image.shape[1]}x{image.shape[0]}, header said {width}x{height}")
    return image
