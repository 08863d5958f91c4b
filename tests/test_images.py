"""Image decoding is bounded before it starts: sizes come from the JPEG/PNG header, and bombs are refused
without allocating what they claim."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from deploy.faults import jpeg_bomb, png_bomb
from streaming.images import MAX_DECODED_PIXELS, ImageDecodeError, decode_image, encode_jpeg, image_size

REFUSED_WITHIN_S = 0.05


def _image(width: int, height: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "encode",
    [
        lambda img: encode_jpeg(img),
        lambda img: cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        lambda img: cv2.imencode(".png", img)[1].tobytes(),
    ],
    ids=["baseline-jpeg", "progressive-jpeg", "png"],
)
def test_size_is_read_from_the_header(encode: object) -> None:
    data = encode(_image(80, 60))  # type: ignore[operator]
    assert image_size(data) == (80, 60)
    assert decode_image(data).shape == (60, 80, 3)


@pytest.mark.parametrize(
    ("bomb", "message"),
    [
        (jpeg_bomb(30_000, 30_000), "per side"),
        (png_bomb(16_000, 16_000), "per side"),
        (png_bomb(4096, 4096 + 1), "per side"),
    ],
)
def test_bombs_are_refused_before_decoding(bomb: bytes, message: str) -> None:
    assert len(bomb) < 1024
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(bomb, max_side=4096)
    assert time.perf_counter() - start < REFUSED_WITHIN_S


def test_pixel_cap_holds_without_a_side_limit() -> None:
    with pytest.raises(ImageDecodeError, match="pixels"):
        decode_image(png_bomb(16_000, 16_000))
    assert 4096 * 4096 == MAX_DECODED_PIXELS


@pytest.mark.parametrize(
    "data",
    [b"GIF89a....", b"\xff\xd8", b"\xff\xd8\xff\xe0\x00", b"\xff\xd8\xff\xe0\x00\x01", b"\x89PNG\r\n\x1a\n", b""],
)
def test_unreadable_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data)
