"""The phone's link to its gateway: the WebRTC peer connection, the video track and the data channel.

:class:`GatewayLink` makes the offer/answer exchange (through an :class:`EmulatedLink` when the run
emulates a far region), announces each frame on the data channel as the track sends it, reassembles
key results from their chunks, and probes the gateway's clock (a burst at connect, then one a
second; the least-delay probe counts) so that result stamps land on the phone's clock. What the
results mean is not its business: complete results and reported failures go to two callbacks.

It keeps the phone connected (issue 14, item 9): the connection counts as lost when the peer connection
fails or closes, when the data channel closes, or when the gateway has not answered a clock probe for
:data:`LIVENESS_S` (a gateway killed with -9 says nothing; aiortc would notice only after ~30 s of failed ICE
consent checks); sooner when, silent for :data:`SUSPECT_S`, the gateway's address refuses ``GET /livez`` or a
restarted gateway answers it (another process id). It then tells the phone (``on_lost``: keys in flight will
never be answered), and offers again with backoff (:data:`RECONNECT_FIRST_WAIT_S` doubling to
:data:`RECONNECT_MAX_WAIT_S`), first to the same gateway, then to the next of its list. Each outage is recorded:
when it began, why, and how long the phone took to be connected again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
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
from streaming.ice import gathering_on, rtc_configuration
from streaming.protocol import (
    DATA_CHANNEL_LABEL,
    EXACT_PTS_QUANTUM,
    GATEWAY_INSTANCE_HEADER,
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
    clip,
    decode_answer,
    decode_any,
    encode,
    encode_offer,
)

log = logging.getLogger(__name__)

PTS_DITHER_FRACTION = 0.5
"""Sender pts are frame_id * period + a random offset below this share of the period."""
CONNECT_TIMEOUT_S = 15.0
"""Signaling plus data channel open, per attempt."""
LIVENESS_S = 5.0
"""A connected gateway that answers no clock probe for this long is taken for dead."""
SUSPECT_S = 2.0
"""A gateway silent this long is asked ``GET /livez`` once a probe period: refused, or answered by another process
(its :data:`~streaming.protocol.GATEWAY_INSTANCE_HEADER` differs), it is lost at once; no answer in
:data:`SUSPECT_CHECK_TIMEOUT_S` settles nothing (a loaded host), :data:`LIVENESS_S` decides."""
SUSPECT_CHECK_TIMEOUT_S = 2.0
RECONNECT_FIRST_WAIT_S = 0.25
RECONNECT_MAX_WAIT_S = 2.0
"""Backoff between offers after a loss or a failed attempt: the first wait, doubling up to the last (a restarted
gateway is found within this of coming up)."""
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

    The gateway recovers frame ids from them even when frames are lost (streaming.gateway.frame_ids). A frame's
    dither is drawn again while its gap to the previous frame equals the gap before: two equal gaps in a row let
    one frame's shift match as well as the truth, so the mapper could not lock on the third frame (3 seeds in
    1,000 did that).
    """

    def __init__(self, fps: float, frames: int, seed: int) -> None:
        self._period = VIDEO_CLOCK_RATE / fps
        rng = random.Random(seed)
        self._pts: list[int] = []
        for frame_id in range(frames):
            pts = self._dithered(frame_id, rng)
            while frame_id >= 2 and pts - self._pts[-1] == self._pts[-1] - self._pts[-2]:
                pts = self._dithered(frame_id, rng)
            self._pts.append(pts)

    def _dithered(self, frame_id: int, rng: random.Random) -> int:
        pts = int(frame_id * self._period) + int(rng.random() * PTS_DITHER_FRACTION * self._period)
        return pts - pts % EXACT_PTS_QUANTUM

    def __call__(self, frame_id: int) -> int:
        return self._pts[frame_id]


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


class OfferRejected(ConnectionError):
    """The gateway refused the phone itself (401 or 403): trying the same gateway again cannot help."""


REJECTED_STATUSES = (401, 403)


def failure_cause(url: str, exc: BaseException, ca_file: Path | None) -> str:
    """One line for a person: why an offer to ``url`` failed."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        ca = f"the CA {ca_file}" if ca_file is not None else "the system's CAs (--gateway-ca names another)"
        return f"TLS verification of {url} failed against {ca}: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        return f"{url} unreachable: {os.strerror(error.errno) if error.errno else error}"
    if isinstance(exc, asyncio.TimeoutError):
        return f"{url} did not answer within {CONNECT_TIMEOUT_S:g} s"
    return clip(f"{url}: {exc}" if isinstance(exc, ConnectionError) else f"{url}: {type(exc).__name__}: {exc}")


def _refusal(status: int, body: bytes) -> str:
    """The gateway's reason for refusing an offer, from its JSON ``{"error": ...}`` body (else the raw body)."""
    try:
        reason = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        reason = body[:200].decode(errors="replace")
    return f"gateway refused the offer ({status}): {reason}"


@dataclass
class Outage:
    """One loss of the gateway: when it began (monotonic s), why, and when the phone was connected again."""

    began: float
    reason: str
    gateway: str
    reconnected: float | None = None
    reconnected_to: str = ""
    attempts: int = 0

    def seconds(self, now: float) -> float:
        """How long the phone was without a gateway (up to ``now`` if still out)."""
        return (self.reconnected if self.reconnected is not None else now) - self.began


class GatewayLink:
    """The phone's connection to one of its gateways: signaling, data channel, chunk reassembly, clock probes, and
    reconnection (see the module docstring). ``on_lost(reason)`` is called when a connection is lost,
    ``on_connected()`` each time one is made."""

    def __init__(
        self,
        gateway_urls: tuple[str, ...],
        profile: LinkProfile | None,
        ice_hosts: tuple[str, ...],
        on_result: ResultHandler,
        on_failure: FailureHandler,
        auth: SignalingAuth | None = None,
        on_lost: Callable[[str], None] = lambda reason: None,
        on_connected: Callable[[], None] = lambda: None,
    ) -> None:
        if not gateway_urls:
            raise ValueError("a phone needs at least one gateway URL")
        self.gateway_urls = gateway_urls
        self.gateway_url = gateway_urls[0]
        """The gateway of the current (or last) connection."""
        self._auth = auth or SignalingAuth()
        self.clock = GatewayClock()
        self.counters: dict[str, int] = {}
        self.outages: list[Outage] = []
        self.connected = asyncio.Event()
        self.ever_connected = False
        self.last_failure = ""
        """Why the last offer failed, one line (empty before any failure)."""
        self.rejected: set[str] = set()
        """Gateways that refused this phone (401/403) or whose certificate it cannot verify: not offered to again."""
        self.given_up = asyncio.Event()
        """Set when every gateway refused this phone: the link stops trying."""
        self._ice_hosts = ice_hosts
        self._profile = profile
        self._on_result = on_result
        self._on_failure = on_failure
        self._on_lost = on_lost
        self._on_connected = on_connected
        self._emulated: EmulatedLink | None = None
        self._emulated_stats: dict[str, object] | None = None
        self._assembler = ChunkAssembler()
        self._discarded = 0
        self._pc: RTCPeerConnection | None = None
        self._channel: RTCDataChannel | None = None
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._last_pong = 0.0
        self._instance: str | None = None
        """The connected gateway's process id (from its answer), None if it sent none."""
        self._probes: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def chunks_discarded(self) -> int:
        """Result chunks dropped by the reassembly (incomplete or out of place), over every connection."""
        return self._discarded + self._assembler.discarded

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    async def start(self, make_track: Callable[[], MediaStreamTrack], style: bytes, result: ResultKind) -> None:
        """Keep a connection up (offering ``make_track()``'s track, the style and the result kind) until
        :meth:`close`; returns at once (see :meth:`wait_connected`)."""
        self._supervisor = asyncio.create_task(self._supervise(make_track, style, result), name="phone-link")

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a connection (less when every gateway refused this phone); True if there is
        one."""
        waits = [asyncio.ensure_future(event.wait()) for event in (self.connected, self.given_up)]
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return self.connected.is_set()

    async def _supervise(self, make_track: Callable[[], MediaStreamTrack], style: bytes, result: ResultKind) -> None:
        index, wait_s = 0, RECONNECT_FIRST_WAIT_S
        outage: Outage | None = None
        while True:
            url = self.gateway_urls[index % len(self.gateway_urls)]
            if url in self.rejected:
                index += 1
                continue
            self._count("connect_attempts")
            if outage is not None:
                outage.attempts += 1
            try:
                await self._connect(url, make_track(), style, result)
            except Exception as exc:  # refused, unreachable, timed out, a bad answer: all mean "try again"
                self._count("connect_failures")
                self.last_failure = failure_cause(url, exc, self._auth.ca_file)
                log.info("offer failed", extra={"gateway": url, "error": self.last_failure})
                await self._teardown()
                if isinstance(exc, OfferRejected | aiohttp.ClientConnectorCertificateError):  # the same again: stop
                    self.rejected.add(url)
                    if self.rejected >= set(self.gateway_urls):
                        self.given_up.set()
                        return
                index += 1  # the same gateway was tried first after a loss; now the next one
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, RECONNECT_MAX_WAIT_S)
                continue
            wait_s = RECONNECT_FIRST_WAIT_S
            if outage is not None:
                outage.reconnected, outage.reconnected_to = time.monotonic(), url
                log.warning("phone reconnected", extra={"gateway": url, "after_s": round(outage.seconds(0), 3)})
                outage = None
            self.connected.set()
            self.ever_connected = True
            self._on_connected()
            await self._lost.wait()
            self.connected.clear()
            outage = Outage(began=time.monotonic(), reason=self._lost_reason, gateway=url)
            self.outages.append(outage)
            log.warning("gateway lost", extra={"gateway": url, "reason": self._lost_reason})
            self._on_lost(self._lost_reason)
            await self._teardown()
            await asyncio.sleep(wait_s)

    async def _connect(self, url: str, track: MediaStreamTrack, style: bytes, result: ResultKind) -> None:
        """One attempt: offer ``track``, the style image and the result kind wanted; apply the answer; wait for
        the data channel."""
        self._lost.clear()
        self._discarded += self._assembler.discarded
        self._assembler = ChunkAssembler()
        self.clock = GatewayClock()  # the next gateway may be another host
        if self._profile is not None:
            self._emulated = EmulatedLink(self._profile)
        pc = self._pc = RTCPeerConnection(rtc_configuration())
        channel = pc.createDataChannel(DATA_CHANNEL_LABEL, ordered=True)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._lose("data channel closed"))
        pc.on("connectionstatechange", lambda: self._on_state(pc))
        self._channel = channel
        pc.addTrack(track)
        with gathering_on(self._ice_hosts):
            await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        offer = Offer(
            sdp=await self._emulated.offer(sdp) if self._emulated is not None else sdp, style=style, result=result
        )
        timeout = aiohttp.ClientTimeout(total=CONNECT_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            auth = self._auth
            async with http.post(
                f"{url}/offer", data=encode_offer(offer), headers=auth.headers(), ssl=auth.ssl()
            ) as response:
                body = await response.read()
                if response.status in REJECTED_STATUSES:
                    raise OfferRejected(_refusal(response.status, body))
                if response.status != 200:
                    raise ConnectionError(_refusal(response.status, body))
                instance = response.headers.get(GATEWAY_INSTANCE_HEADER)
        answer = decode_answer(body)
        sdp_answer = self._emulated.answer(answer.sdp) if self._emulated is not None else answer.sdp
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp_answer, type="answer"))
        await asyncio.wait_for(opened.wait(), CONNECT_TIMEOUT_S)
        self.gateway_url, self._instance = url, instance
        self._last_pong = time.monotonic()
        for _ in range(CLOCK_PROBES_AT_START):
            self.probe_clock()
        self._probes = asyncio.create_task(self._probe_periodically())
        log.info("phone connected", extra={"stream_id": answer.stream_id, "gateway": url})

    def _on_state(self, pc: RTCPeerConnection) -> None:
        if pc is self._pc and pc.connectionState in ("failed", "closed"):
            self._lose(f"peer connection {pc.connectionState}")

    def _lose(self, reason: str) -> None:
        """The current connection is gone (the supervisor reconnects); only the first reason counts."""
        if self.connected.is_set() and not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    async def _teardown(self) -> None:
        """Close the current peer connection (if any), its probes and its emulated link."""
        if self._probes is not None:
            self._probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probes
            self._probes = None
        pc, self._pc, self._channel = self._pc, None, None
        if pc is not None:
            await pc.close()
        if self._emulated is not None:
            self._emulated_stats = self._emulated.stats()
            self._emulated.close()
            self._emulated = None

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
        """Stop reconnecting and probing, close the peer connection and the emulated link."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self.connected.clear()
        await self._teardown()

    def stats(self) -> dict[str, object]:
        """The report's network section: the emulated link, the gateway clock estimate, and the outages."""
        now = time.monotonic()
        reconnects = [o.seconds(now) for o in self.outages if o.reconnected is not None]
        return {
            "link": self._emulated.stats() if self._emulated is not None else self._emulated_stats,
            "gateway_clock": self.clock.stats(),
            "gateway": self.gateway_url,
            "outages": {
                "count": len(self.outages),
                "reconnected": len(reconnects),
                "reconnect_s": [round(s, 3) for s in reconnects],
                "total_s": round(sum(o.seconds(now) for o in self.outages), 3),
                "events": [
                    {
                        "reason": o.reason,
                        "gateway": o.gateway,
                        "reconnected_to": o.reconnected_to,
                        "attempts": o.attempts,
                        "seconds": round(o.seconds(now), 3),
                    }
                    for o in self.outages
                ],
            },
        }

    async def _probe_periodically(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_PROBE_PERIOD_S)
            silent = time.monotonic() - self._last_pong
            if silent > LIVENESS_S:
                self._lose(f"no answer from the gateway for {silent:.1f} s")
                return
            if silent > SUSPECT_S and (reason := await self._gateway_gone()) is not None:
                self._lose(f"{reason} after {silent:.1f} s of silence")
                return
            self.probe_clock()

    async def _gateway_gone(self) -> str | None:
        """Why the silent gateway is surely gone (its address refuses ``GET /livez``, or another process answers
        it), or None when that cannot be told (it answers as itself, or not in time)."""
        timeout = aiohttp.ClientTimeout(total=SUSPECT_CHECK_TIMEOUT_S)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                async with http.get(f"{self.gateway_url}/livez", ssl=self._auth.ssl()) as response:
                    instance = response.headers.get(GATEWAY_INSTANCE_HEADER)
        except aiohttp.ClientConnectorError:
            return "gateway unreachable"
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None
        if self._instance is not None and instance is not None and instance != self._instance:
            return "gateway restarted"
        return None

    def _on_message(self, data: bytes | str) -> None:
        try:
            if isinstance(data, str):
                raise ProtocolError(ErrorCode.MALFORMED, "text message on a binary channel")
            message = decode_any(data, (KeyResult, Chunk, ClockPong))
            self._last_pong = time.monotonic()  # anything the gateway says shows it is alive
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
            self._count(BAD_MESSAGES)
            log.warning("bad message from gateway", extra={"error": str(exc)})
            return
        if complete is not None:
            header, payload = complete
            header.stamps[Stamp.PHONE_RECEIVED] = time.monotonic_ns()
            self.clock.to_phone_clock(header.stamps)  # gateway and worker hops onto the phone's clock
            self._on_result(header, payload)
