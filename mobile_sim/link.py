"""The phone's link to its gateway: the WebRTC peer connection, the video track and the data channel.

:class:`GatewayLink` makes the offer/answer exchange (through an :class:`EmulatedLink` when the run
emulates a far region), announces each frame on the data channel as the track sends it, reassembles
key results from their chunks, and probes the gateway's clock (a burst at connect, then one a
second; the least-delay probe counts) so that result stamps land on the phone's clock. What the
results mean is not its business: complete results and reported failures go to two callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from mobile_sim.link_shim import LinkProfile
from mobile_sim.network import EmulatedLink, GatewayClock
from streaming.ice import restrict_host_candidates, rtc_configuration
from streaming.protocol import (
    DATA_CHANNEL_LABEL,
    EXACT_PTS_QUANTUM,
    VIDEO_CLOCK_RATE,
    Chunk,
    ChunkAssembler,
    ClockPing,
    ClockPong,
    ErrorCode,
    FrameMeta,
    KeyLatency,
    KeyResult,
    Offer,
    ProtocolError,
    ResultKind,
    Stamp,
    decode_answer,
    decode_any,
    encode,
    encode_offer,
)

log = logging.getLogger(__name__)

PTS_DITHER_FRACTION = 0.5
"""Sender pts are frame_id * period + a random offset below this share of the period."""
CONNECT_TIMEOUT_S = 15.0
CLOCK_PROBES_AT_START = 5
CLOCK_PROBE_PERIOD_S = 1.0
"""Clock probes to the gateway: a burst at connect, then one a second (the least-delay one counts)."""
BAD_MESSAGES = "bad_messages"
"""Counter: data-channel messages from the gateway that did not decode."""

ResultHandler = Callable[[KeyResult, bytes], None]
"""Called with a key's complete result (header stamped and on the phone's clock) and its payload."""
FailureHandler = Callable[[int, str, str, int], None]
"""Called with (frame id, error code, error text, attempts) when the gateway reports a key failed."""


class SenderPts:
    """Sender pts (90 kHz) of each frame: regular spacing plus a per-frame dither, on the exact grid.

    The gateway recovers frame ids from them even when frames are lost (streaming.gateway.frame_ids).
    """

    def __init__(self, fps: float, frames: int, seed: int) -> None:
        self._period = VIDEO_CLOCK_RATE / fps
        rng = random.Random(seed)
        self._dither = [int(rng.random() * PTS_DITHER_FRACTION * self._period) for _ in range(frames)]

    def __call__(self, frame_id: int) -> int:
        pts = int(frame_id * self._period) + self._dither[frame_id]
        return pts - pts % EXACT_PTS_QUANTUM


@dataclass
class Outgoing:
    """A captured frame on its way to the video encoder."""

    frame_id: int
    image: np.ndarray
    key: bool
    capture_ns: int


class CameraTrack(MediaStreamTrack):
    """Video track fed with captured frames (``next_frame``, e.g. a queue's ``get``).

    ``on_send(meta)`` is told about each frame as the encoder takes it and says whether it really
    goes out (False: emulated loss, the frame is skipped).
    """

    kind = "video"

    def __init__(
        self,
        next_frame: Callable[[], Awaitable[Outgoing]],
        pts_of: Callable[[int], int],
        on_send: Callable[[FrameMeta], bool],
    ) -> None:
        super().__init__()
        self._next_frame = next_frame
        self._pts_of = pts_of
        self._on_send = on_send

    async def recv(self) -> av.VideoFrame:
        """Next frame for the encoder."""
        while True:
            item = await self._next_frame()
            pts = self._pts_of(item.frame_id)
            if not self._on_send(FrameMeta(frame_id=item.frame_id, pts=pts, key=item.key, capture_ns=item.capture_ns)):
                continue
            frame = av.VideoFrame.from_ndarray(item.image, format="bgr24")
            frame.pts = pts
            frame.time_base = Fraction(1, VIDEO_CLOCK_RATE)
            return frame


@dataclass(frozen=True)
class SignalingAuth:
    """What the phone shows a secured gateway: an admission token, and the CA its HTTPS certificate is checked with."""

    token: str | None = None
    """Sent as ``Authorization: Bearer <token>`` (``mvs token``); None: no header."""
    ca_file: Path | None = None
    """CA of an https gateway's certificate; None: the system's CAs."""

    def headers(self) -> dict[str, str]:
        """Headers of ``POST /offer``."""
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def ssl(self) -> ssl.SSLContext | bool:
        """aiohttp's ``ssl`` argument: a context trusting ``ca_file``, or True (default verification)."""
        return True if self.ca_file is None else ssl.create_default_context(cafile=str(self.ca_file))


class GatewayLink:
    """The phone's connection to one gateway: signaling, data channel, chunk reassembly, clock probes."""

    def __init__(
        self,
        gateway_url: str,
        profile: LinkProfile | None,
        ice_hosts: tuple[str, ...],
        on_result: ResultHandler,
        on_failure: FailureHandler,
        auth: SignalingAuth | None = None,
    ) -> None:
        self.gateway_url = gateway_url
        self._auth = auth or SignalingAuth()
        self.clock = GatewayClock()
        self.counters: dict[str, int] = {}
        self._ice_hosts = ice_hosts
        self._on_result = on_result
        self._on_failure = on_failure
        self._emulated = EmulatedLink(profile) if profile is not None else None
        self._assembler = ChunkAssembler()
        self._pc: RTCPeerConnection | None = None
        self._channel: RTCDataChannel | None = None
        self._probes: asyncio.Task[None] | None = None

    @property
    def chunks_discarded(self) -> int:
        """Result chunks dropped by the reassembly (incomplete or out of place)."""
        return self._assembler.discarded

    async def connect(self, track: MediaStreamTrack, style: bytes, result: ResultKind) -> None:
        """Offer ``track``, the style image and the result kind wanted; apply the answer; wait for the data channel."""
        if self._ice_hosts:
            restrict_host_candidates(self._ice_hosts)
        pc = self._pc = RTCPeerConnection(rtc_configuration())
        channel = pc.createDataChannel(DATA_CHANNEL_LABEL, ordered=True)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        channel.on("message", self._on_message)
        self._channel = channel
        pc.addTrack(track)
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        offer = Offer(
            sdp=await self._emulated.offer(sdp) if self._emulated is not None else sdp, style=style, result=result
        )
        async with aiohttp.ClientSession() as http:
            url, payload, auth = f"{self.gateway_url}/offer", encode_offer(offer), self._auth
            async with http.post(url, data=payload, headers=auth.headers(), ssl=auth.ssl()) as response:
                body = await response.read()
                if response.status != 200:
                    raise ConnectionError(f"gateway refused the offer ({response.status}): {body[:200]!r}")
        answer = decode_answer(body)
        sdp_answer = self._emulated.answer(answer.sdp) if self._emulated is not None else answer.sdp
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp_answer, type="answer"))
        await asyncio.wait_for(opened.wait(), CONNECT_TIMEOUT_S)
        for _ in range(CLOCK_PROBES_AT_START):
            self.probe_clock()
        self._probes = asyncio.create_task(self._probe_periodically())
        log.info("phone connected", extra={"stream_id": answer.stream_id, "gateway": self.gateway_url})

    def announce(self, meta: FrameMeta) -> None:
        """Tell the gateway which frame is about to be sent."""
        if self._channel is not None and self._channel.readyState == "open":
            self._channel.send(encode(meta))

    def report_latency(self, frame_id: int, parts_ms: dict[str, float]) -> None:
        """Tell the gateway how long a key took as measured here (negative parts, clock-estimate error, as 0)."""
        if self._channel is not None and self._channel.readyState == "open":
            clamped = {part: max(0.0, value) for part, value in parts_ms.items()}
            self._channel.send(encode(KeyLatency(frame_id=frame_id, parts_ms=clamped)))

    def probe_clock(self) -> None:
        """Ask the gateway for its clock (the answer updates :attr:`clock`)."""
        if self._channel is not None and self._channel.readyState == "open":
            self._channel.send(encode(ClockPing(phone_ns=time.monotonic_ns())))

    async def close(self) -> None:
        """Stop probing, close the peer connection and the emulated link."""
        if self._probes is not None:
            self._probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probes
        if self._pc is not None:
            await self._pc.close()
        if self._emulated is not None:
            self._emulated.close()

    def stats(self) -> dict[str, object]:
        """The report's network section: the emulated link and the gateway clock estimate."""
        return {
            "link": self._emulated.stats() if self._emulated is not None else None,
            "gateway_clock": self.clock.stats(),
        }

    async def _probe_periodically(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_PROBE_PERIOD_S)
            self.probe_clock()

    def _on_message(self, data: bytes | str) -> None:
        try:
            if isinstance(data, str):
                raise ProtocolError(ErrorCode.MALFORMED, "text message on a binary channel")
            message = decode_any(data, (KeyResult, Chunk, ClockPong))
            if isinstance(message, ClockPong):
                self.clock.on_pong(message, time.monotonic_ns())
                return
            if isinstance(message, KeyResult):
                if not message.ok:
                    self._on_failure(message.frame_id, message.error_code, message.error, message.attempts)
                elif message.chunks > 0:
                    self._assembler.start(message)
                return
            assert isinstance(message, Chunk)
            complete = self._assembler.add(message)
        except ProtocolError as exc:
            self.counters[BAD_MESSAGES] = self.counters.get(BAD_MESSAGES, 0) + 1
            log.warning("bad message from gateway", extra={"error": str(exc)})
            return
        if complete is not None:
            header, payload = complete
            header.stamps[Stamp.PHONE_RECEIVED] = time.monotonic_ns()
            self.clock.to_phone_clock(header.stamps)  # gateway and worker hops onto the phone's clock
            self._on_result(header, payload)
