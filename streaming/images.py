"""Still-image codecs used on the wire (JPEG), in one place."""

from __future__ import annotations

import cv2
import numpy as np

DEFAULT_JPEG_QUALITY = 90
MIN_JPEG_QUALITY = 50
JPEG_QUALITY_STEP = 10


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image."""


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


def decode_image(data: bytes, max_side: int | None = None) -> np.ndarray:
    """Decode JPEG/PNG/... bytes to a BGR uint8 image; :class:`ImageDecodeError` if impossible."""
    if not data:
        raise ImageDecodeError("empty image data")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageDecodeError(f"{len(data)} B are not a decodable image")
    if max_side is not None and max(image.shape[:2]) > max_side:
        raise ImageDecodeError(f"image of {image.shape[1]}x{image.shape[0]} exceeds {max_side} px per side")
    return image
