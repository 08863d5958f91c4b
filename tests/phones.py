"""A phone reduced to the gateway's side of the contract, for tests that must do what ``mobile_sim.Phone`` never does
(ask for an output size, announce frames wrongly or not at all, flood the data channel) and see every message the
gateway sends back. Built from the phone's real parts: camera track, dithered sender pts, chunk reassembly."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import cv2
from aiortc import RTCPeerConnection, RTCSessionDescription

from mobile_sim.link import CameraTrack, Outgoing, SenderPts
from mobile_sim.sources import default_style_photo, sample_photo
from streaming.gateway.server import Gateway
from streaming.ice import LOOPBACK, restrict_host_candidates, rtc_configuration
from streaming.images import encode_jpeg
from streaming.protocol import (
    ChannelError,
    Chunk,
    ChunkAssembler,
    ClockPong,
    FrameMeta,
    KeyResult,
    decode_any,
    encode,
)

STYLE_B64 = base64.b64encode(encode_jpeg(default_style_photo())).decode()
CHANNEL_OPEN_TIMEOUT_S = 15.0


def offer_body(**fields: object) -> bytes:
    """A ``POST /offer`` body with these JSON fields."""
    return json.dumps(fields).encode()


class BarePhone:
    """Streams ``frames`` frames of ``size`` at 30 fps, a key every ``key_every``; every message the gateway sends
    lands in a queue: complete results, failed keys, clock pongs and channel errors."""

    def __init__(self, frames: int, size: tuple[int, int], key_every: int = 5, announce: bool = True) -> None:
        restrict_host_candidates(LOOPBACK)
        self.pc = RTCPeerConnection(rtc_configuration())
        self.channel = self.pc.createDataChannel("mvs")
        self.opened = asyncio.Event()
        self.channel.on("open", self.opened.set)
        self.channel.on("message", self._on_message)
        self.results: asyncio.Queue[tuple[KeyResult, bytes]] = asyncio.Queue()
        self.failures: asyncio.Queue[KeyResult] = asyncio.Queue()
        self.pongs: asyncio.Queue[ClockPong] = asyncio.Queue()
        self.errors: asyncio.Queue[ChannelError] = asyncio.Queue()
        self._assembler = ChunkAssembler()
        self._frames: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._image = cv2.resize(sample_photo(), size)
        self._count, self._key_every, self._announce_frames = frames, key_every, announce
        self.pc.addTrack(CameraTrack(self._next_frame, SenderPts(30.0, frames, seed=0), self._on_send))

    def feed(self) -> None:
        """Start the camera: its frames go out at 30 fps."""
        for i in range(self._count):
            key = i % self._key_every == 0
            self._frames.put_nowait(Outgoing(frame_id=i, image=self._image, key=key, capture_ns=time.monotonic_ns()))

    async def _next_frame(self) -> Outgoing:
        await asyncio.sleep(1 / 30)  # the camera's pace, not a synchronisation
        return await self._frames.get()

    def _on_send(self, meta: FrameMeta) -> bool:
        if self._announce_frames:
            self.announce(meta)
        return True

    def announce(self, meta: FrameMeta) -> None:
        """Tell the gateway about a frame handed to the encoder (a test may announce something else)."""
        self.channel.send(encode(meta))

    def _on_message(self, data: bytes) -> None:
        message = decode_any(data, (KeyResult, Chunk, ClockPong, ChannelError))
        if isinstance(message, KeyResult) and not message.ok:
            self.failures.put_nowait(message)
        elif isinstance(message, KeyResult):
            self._assembler.start(message)
        elif isinstance(message, Chunk) and (complete := self._assembler.add(message)) is not None:
            self.results.put_nowait(complete)
        elif isinstance(message, ClockPong):
            self.pongs.put_nowait(message)
        elif isinstance(message, ChannelError):
            self.errors.put_nowait(message)

    async def connect(self, gateway: Gateway, **fields: object) -> dict[str, str]:
        """Offer, apply the answer, wait for the data channel; the answer (stream and style ids)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = offer_body(type="offer", sdp=self.pc.localDescription.sdp, style=STYLE_B64, **fields)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{gateway.url}/offer", data=body) as response:
                assert response.status == 200, await response.text()
                answer = await response.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await asyncio.wait_for(self.opened.wait(), CHANNEL_OPEN_TIMEOUT_S)
        return {"stream_id": answer["stream_id"], "style_id": answer["style_id"]}
