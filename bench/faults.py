"""The fault kit of the hardening campaign (issue 14): hostile inputs built on the spot, shared by the tests,
the fuzz test and ``python -m bench.chaos``. Nothing here is stored: every bomb is a tiny real image whose
header is patched to claim a huge size."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
from aiortc import RTCPeerConnection, VideoStreamTrack

from streaming.ice import LOOPBACK, restrict_host_candidates, rtc_configuration
from streaming.images import PNG_SIGNATURE, encode_jpeg
from streaming.protocol import DATA_CHANNEL_LABEL

JPEG_SOF0 = b"\xff\xc0"


def _tiny_image(side: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (side, side, 3), dtype=np.uint8)


def jpeg_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A baseline JPEG of 8x8 pixels whose start-of-frame header claims ``width`` x ``height`` (the issue's
    820-byte, 30000x30000 one drove a worker to 4.1 GB)."""
    data = encode_jpeg(_tiny_image())
    sof = data.index(JPEG_SOF0)
    # SOF0: marker (2), length (2), precision (1), height (2), width (2)
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def png_bomb(width: int = 16_000, height: int = 16_000) -> bytes:
    """A PNG of 8x8 pixels whose IHDR claims ``width`` x ``height``, its CRC made right, so that only a size check
    stands between it and a decoder allocating ``width * height * 3`` bytes."""
    ok, buf = cv2.imencode(".png", _tiny_image())
    assert ok
    data = buf.tobytes()
    assert data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR"
    ihdr = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


async def unanswered_offer_sdp() -> str:
    """A genuine aiortc SDP offer with a video track and the data channel, whose peer is closed at once: a phone
    that will never finish ICE (loopback host candidates only)."""
    restrict_host_candidates(LOOPBACK)
    pc = RTCPeerConnection(rtc_configuration())
    pc.createDataChannel(DATA_CHANNEL_LABEL)
    pc.addTrack(VideoStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp
