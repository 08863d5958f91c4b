"""One phone at the gateway: its peer connection, frame-id mapping and key-frame pipeline.

Decoded frames wait (bounded) until their frame id is known; frames the phone marked as key are
queued (latest wins) for a few dispatcher tasks that JPEG-encode them off the loop, ask the
region's workers, and send the outcome back over the data channel, chunked and paced on
``bufferedAmount``. Announced key frames overtaken by a later decoded frame were lost on the way
and are reported as failed at once.

A session ends by itself (:meth:`PhoneSession.supervise`): when its peer connection is not connected within the
connect timeout (an offer whose ICE never completes must not hold a slot and its ports), when the phone falls silent
for the idle timeout (a connected phone announces every frame and probes the clock every second; aiortc has no
``disconnected`` state and notices a dead peer only after ~30 s of failed consent checks), when the data channel
closes, or when the connection fails.

What one phone may cost is bounded (issue 22, :class:`SessionLimits`): its data-channel messages pass a token
bucket (the excess is dropped and counted, a flood closes the session), undecodable ones close it after a few, a
session whose decoded frames never match an announced frame id is closed, a result larger than the key frame
allows is refused (``too_large``) before any work, and a phone's latency report is believed once per key served
and only within what the gateway saw (:mod:`streaming.gateway.key_latency`). Every close reason is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from nats.aio.client import Client as NATS
from prometheus_client import Counter, Histogram

from streaming.clock import ClockOffset
from streaming.gateway.frame_ids import FrameIdMapper
from streaming.gateway.key_latency import ServedKey, check_report
from streaming.gateway.rate_limit import TokenBucket
from streaming.gateway.stylize_client import request_stylize
from streaming.images import encode_jpeg
from streaming.protocol import (
    DATA_CHANNEL_LABEL,
    MAX_CONTROL_BYTES,
    MAX_MESSAGE_BYTES,
    ChannelError,
    ClockPing,
    ClockPong,
    ErrorCode,
    FrameMeta,
    KeyLatency,
    KeyResult,
    ProtocolError,
    ResultKind,
    Stamp,
    StylizeRequest,
    check_result_size,
    chunk_payload,
    clip,
    decode_any,
    encode,
    validate_key_latency,
)
from streaming.queues import LatestQueue
from streaming.telemetry import LATENCY_BUCKETS_S, LogLimiter

log = logging.getLogger(__name__)

MAX_PENDING_FRAMES = 32
"""Decoded frames held while their id is unknown (about 1 s at 30 fps)."""
MAX_REMEMBERED_FRAMES = 256
"""Announced frames remembered for mapping."""
BUFFER_HIGH_WATER = 1024 * 1024
BUFFER_LOW_WATER = 256 * 1024
REQUEST_OVERHEAD_BYTES = 4096
SUPERVISION_PERIOD_S = 0.5
"""How often a session checks that it connected, and that its phone is still heard."""
MAX_AWAITED_REPORTS = 64
"""Served keys remembered for the phone's latency report (the oldest forgotten first)."""
CLOSE_GRACE_S = 2.0
"""How long :meth:`PhoneSession.close` waits for the session's tasks to end after cancelling them."""
CLOSE_RETRY_S = 0.1
"""How often it cancels again a task that has not ended (one that swallowed its cancellation)."""

KEY_FRAMES = Counter("mvs_gateway_key_frames_total", "Key frames by outcome", ["region", "outcome"])
FRAMES = Counter("mvs_gateway_frames_total", "Decoded video frames by fate", ["region", "fate"])
BAD_MESSAGES = Counter("mvs_gateway_bad_messages_total", "Undecodable data-channel messages", ["region"])
DROPPED_MESSAGES = Counter(
    "mvs_gateway_dropped_messages_total", "Data-channel messages dropped over a session's rate limit", ["region"]
)
REFUSED_REPORTS = Counter(
    "mvs_gateway_refused_latency_reports_total",
    "KeyLatency reports not believed (no such served key, already reported, or outside the gateway's own timing)",
    ["region"],
)
SESSIONS_CLOSED = Counter("mvs_gateway_sessions_closed_total", "Sessions closed, by why", ["region", "why"])
STUCK_TASKS = Counter(
    "mvs_gateway_stuck_session_tasks_total",
    "Session tasks still running when close() gave up waiting for them (the peer connection was closed anyway)",
    ["region"],
)
KEY_SECONDS = Histogram(
    "mvs_gateway_key_seconds",
    "Key frames served: time from decoded at the gateway to the result handed to the data channel",
    ["region"],
    buckets=LATENCY_BUCKETS_S,
)
KEY_HOP_SECONDS = Histogram(
    "mvs_gateway_key_hop_seconds",
    "Key frames served, time by hop: queue (decoded -> request sent: dispatcher wait and JPEG), "
    "nats (request -> reply, retry included), send (reply -> result handed to the data channel)",
    ["region", "hop"],
    buckets=LATENCY_BUCKETS_S,
)
GATEWAY_HOPS = ("queue", "nats", "send")
"""The hops of :data:`KEY_HOP_SECONDS`; they add up to :data:`KEY_SECONDS`."""
PHONE_KEY_SECONDS = Histogram(
    "mvs_gateway_phone_key_seconds",
    "Key frames as the phone measured them (KeyLatency over the data channel), by part: uplink, queue, "
    "inference, downlink and the whole round_trip",
    ["region", "part"],
    buckets=LATENCY_BUCKETS_S,
)
NS_PER_S = 1e9
MS_PER_S = 1e3


@dataclass(frozen=True)
class SessionLimits:
    """What one phone may cost a gateway (issue 22)."""

    message_rate: float = 100.0
    """Data-channel messages a second (a phone sends one per frame, a clock probe a second, one report per key)."""
    message_burst: float = 200.0
    """Messages a phone may send at once beyond the rate (a link that stalled delivers its backlog together)."""
    max_dropped_messages: int = 300
    """Messages over the rate after which the session is closed (a flood)."""
    max_bad_messages: int = 20
    """Undecodable or invalid messages (each answered with a ChannelError) after which the session is closed."""
    unmapped_timeout_s: float = 10.0
    """Close a session whose decoded frames matched no announced frame id for this long."""
    latency_slack_ms: float = 1000.0
    """How far a phone's latency report may stray from the gateway's own timing (its clock estimate, one-way
    delays; streaming.gateway.key_latency)."""


@dataclass(frozen=True)
class SessionSettings:
    """What the gateway gives each session."""

    region: str
    subject: str
    deadline_ms: float
    first_attempt_ms: float
    max_inflight: int
    max_waiting: int
    jpeg_quality: int
    limits: SessionLimits = field(default_factory=SessionLimits)


@dataclass
class _Decoded:
    pts: int
    frame: av.VideoFrame
    decoded_ns: int


@dataclass
class _Announced:
    meta: FrameMeta
    received_ns: int


@dataclass
class _KeyJob:
    meta: FrameMeta
    frame: av.VideoFrame
    decoded_ns: int
    announced_ns: int


class PhoneSession:
    """Serves one phone's peer connection until it closes."""

    def __init__(
        self,
        stream_id: str,
        pc: RTCPeerConnection,
        nc: NATS,
        executor: Executor,
        settings: SessionSettings,
        style_id: str,
        out_size: tuple[int, int] | None,
        worker_clocks: dict[str, ClockOffset],
        background: set[asyncio.Future[None]],
        result: str = ResultKind.FRAME,
        address: str = "",
    ) -> None:
        self.stream_id = stream_id
        self._background = background
        """The gateway's tasks that outlive their session (a close, a peer connection still closing): kept referenced
        here until they end."""
        self.address = address
        """The client address the offer came from."""
        self.pc = pc
        self._nc = nc
        self._executor = executor
        self._settings = settings
        self._style_id = style_id
        self._out_size = out_size
        self._result = result
        self._worker_clocks = worker_clocks
        self._mapper = FrameIdMapper()
        self._meta: OrderedDict[int, _Announced] = OrderedDict()
        self._awaited_keys: set[int] = set()
        self._pending: deque[_Decoded] = deque()
        self._newest_mapped = -1
        self._jobs: LatestQueue[_KeyJob] = LatestQueue(settings.max_waiting)
        self._channel: RTCDataChannel | None = None
        self._drained = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()
        self.connected = asyncio.Event()
        """Set once the peer connection is connected and the data channel open."""
        self.close_reason = ""
        self.last_heard = time.monotonic()
        """When the phone was last heard (a data-channel message or a video frame)."""
        self.counts: dict[str, int] = {}
        limits = settings.limits
        self._limits = limits
        self._messages = TokenBucket(limits.message_rate, limits.message_burst, time.monotonic())
        self._mapped_at: float | None = None
        """When a decoded frame last matched a frame id (or the first frame was decoded)."""
        self._served: OrderedDict[int, ServedKey] = OrderedDict()
        """Served keys whose latency report may still come."""
        self._log = LogLimiter()
        """This session's bad input is logged rate-limited, per kind."""
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)

    def _count(self, what: str) -> int:
        self.counts[what] = self.counts.get(what, 0) + 1
        return self.counts[what]

    def _warn(self, kind: str, msg: str, error: str) -> None:
        """Log bad input from the phone, rate-limited per kind."""
        self._log.log(log, logging.WARNING, kind, msg, {"stream_id": self.stream_id, "error": error})

    def _end(self, why: str, reason: str) -> None:
        """Close the session for misbehaviour ``why`` (a metric label), saying ``reason``."""
        if not self.closed.is_set():
            SESSIONS_CLOSED.labels(self._settings.region, why).inc()
            self._spawn(self.close(reason))

    # --- signaling callbacks -------------------------------------------------------------
    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        refusal = None
        if channel.label != DATA_CHANNEL_LABEL:
            refusal = f"data channel {channel.label[:40]!r} refused: the protocol's channel is {DATA_CHANNEL_LABEL!r}"
        elif self._channel is not None:
            refusal = f"data channel {DATA_CHANNEL_LABEL!r} refused: this session already has one"
        if refusal is not None or self.closed.is_set():
            refusals = self._count("refused_channels")
            self._warn("channel", "data channel refused", refusal or "session closed")
            channel.send(encode(ChannelError(code=ErrorCode.INVALID, error=refusal or "session closed")))
            channel.close()
            if refusals >= self._limits.max_bad_messages:
                self._end("bad_messages", f"{refusals} data channels refused")
            return
        self._channel = channel
        channel.bufferedAmountLowThreshold = BUFFER_LOW_WATER
        channel.on("bufferedamountlow", self._drained.set)
        channel.on("message", self._on_message)
        channel.on("close", self._on_channel_closed)
        self._heard()
        for _ in range(self._settings.max_inflight):
            self._tasks.append(asyncio.create_task(self._dispatch(), name=f"{self.stream_id}-dispatch"))

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and not self.closed.is_set():
            self._tasks.append(asyncio.create_task(self._consume(track), name=f"{self.stream_id}-video"))

    async def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            await self.close(f"peer connection {self.pc.connectionState}")
        elif self.pc.connectionState == "connected":
            self._heard()

    def _on_channel_closed(self) -> None:
        self._spawn(self.close("data channel closed"))

    def _heard(self) -> None:
        self.last_heard = time.monotonic()
        if (
            not self.connected.is_set()
            and self.pc.connectionState == "connected"
            and self._channel is not None
            and self._channel.readyState == "open"
        ):
            self.connected.set()

    def start_supervision(self, connect_timeout_s: float, idle_timeout_s: float) -> None:
        """Run :meth:`supervise` for the life of the session."""
        self._tasks.append(asyncio.create_task(self.supervise(connect_timeout_s, idle_timeout_s)))

    async def supervise(self, connect_timeout_s: float, idle_timeout_s: float) -> None:
        """Close the session if it does not connect within ``connect_timeout_s``, or once connected, when the
        phone is silent for ``idle_timeout_s``."""
        deadline = time.monotonic() + connect_timeout_s
        while not self.connected.is_set():
            if time.monotonic() >= deadline:
                self._spawn(self.close(f"not connected after {connect_timeout_s:g} s"))
                return
            self._heard()  # the data channel may have opened before the connection state said so
            await asyncio.sleep(min(SUPERVISION_PERIOD_S, connect_timeout_s))
        while True:
            silent = time.monotonic() - self.last_heard
            if silent >= idle_timeout_s:
                self._spawn(self.close(f"phone silent for {silent:.1f} s"))
                return
            await asyncio.sleep(min(SUPERVISION_PERIOD_S, idle_timeout_s - silent))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, kept referenced (not one of the tasks close() cancels)."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self, reason: str = "closed by the gateway") -> None:
        """Stop every task of this session and close its peer connection (its ports are freed), whatever the tasks
        do, within about :data:`CLOSE_GRACE_S`.

        Cancelling a task is not enough: Python 3.11's ``asyncio.wait_for`` (inside nats-py's request) returns the
        reply instead of raising when the cancel lands together with it, and the task runs on (issue 22: after 600
        sessions 8 closes waited for good on such a task, their peer connections never closed). So the peer
        connection is closed at once, beside the tasks; a task that has not ended is cancelled again every
        :data:`CLOSE_RETRY_S` (its loops also stop once :attr:`closed` is set), and one still running after the grace
        is counted, logged and left to end on its own. Nothing here relies on ``wait_for``."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.close_reason = reason
        loop = asyncio.get_running_loop()
        closing = asyncio.ensure_future(self.pc.close())
        deadline = loop.time() + CLOSE_GRACE_S
        pending = {task for task in (*self._tasks, *self._sends) if task is not asyncio.current_task()}
        while pending and (left := deadline - loop.time()) > 0:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=min(left, CLOSE_RETRY_S))
        if not closing.done():
            await asyncio.wait({closing}, timeout=max(0.0, deadline - loop.time()))
        if pending or not closing.done():
            STUCK_TASKS.labels(self._settings.region).inc(len(pending))
            stuck = sorted(task.get_name() for task in pending)
            log.error(
                "session tasks did not end",
                extra={"stream_id": self.stream_id, "tasks": stuck, "peer_closed": closing.done()},
            )
            if not closing.done():
                self._background.add(closing)
                closing.add_done_callback(self._background.discard)
        elif not closing.cancelled() and closing.exception() is not None:
            log.warning("peer connection close failed", exc_info=closing.exception())
        log.info("session closed", extra={"stream_id": self.stream_id, "reason": reason, **self.counts})

    # --- frame ids -----------------------------------------------------------------------
    def _on_message(self, data: bytes | str) -> None:
        if self.closed.is_set():
            return
        received = time.monotonic_ns()
        if not self._messages.take(received / NS_PER_S):  # before any decoding: a flood costs little
            DROPPED_MESSAGES.labels(self._settings.region).inc()
            dropped = self._count("dropped_messages")
            if dropped >= self._limits.max_dropped_messages:
                self._end("flood", f"data-channel flood: {dropped} messages over {self._limits.message_rate:g}/s")
            return
        try:
            if isinstance(data, str):
                raise ProtocolError(ErrorCode.MALFORMED, "text message on a binary channel")
            self._heard()
            message = decode_any(data, (FrameMeta, ClockPing, KeyLatency), max_bytes=MAX_CONTROL_BYTES)
            if isinstance(message, KeyLatency):
                validate_key_latency(message)
        except ProtocolError as exc:
            BAD_MESSAGES.labels(self._settings.region).inc()
            bad = self._count("bad_messages")
            self._warn("message", "bad data-channel message", str(exc))
            self._spawn_send([encode(ChannelError.of(exc))])
            if bad >= self._limits.max_bad_messages:
                self._end("bad_messages", f"{bad} bad data-channel messages (the last: {exc})")
            return
        if isinstance(message, ClockPing):
            pong = ClockPong(phone_ns=message.phone_ns, gw_received_ns=received, gw_sent_ns=time.monotonic_ns())
            self._spawn_send([encode(pong)])
            return
        if isinstance(message, KeyLatency):
            self._on_report(message, received)
            return
        assert isinstance(message, FrameMeta)
        meta = message
        self._mapper.announce(meta.frame_id, meta.pts)
        self._meta[meta.frame_id] = _Announced(meta, received)
        while len(self._meta) > MAX_REMEMBERED_FRAMES:
            forgotten, _ = self._meta.popitem(last=False)
            if forgotten in self._awaited_keys:
                self._awaited_keys.discard(forgotten)
                self._fail(forgotten, ErrorCode.LOST, "key frame never matched a decoded frame", 0)
        if meta.key:
            self._awaited_keys.add(meta.frame_id)
        self._match()

    def _on_report(self, report: KeyLatency, received_ns: int) -> None:
        """Observe a phone's latency report if it is the first for a key served here and fits the gateway's own
        timing (:func:`streaming.gateway.key_latency.check_report`); otherwise count it and move on."""
        served = self._served.pop(report.frame_id, None)
        try:
            if served is None:
                raise ProtocolError(
                    ErrorCode.INVALID, f"latency: frame {report.frame_id} is no key served here, or was reported"
                )
            check_report(report, served, received_ns, self._limits.latency_slack_ms)
        except ProtocolError as exc:
            REFUSED_REPORTS.labels(self._settings.region).inc()
            self._count("refused_reports")
            self._warn("report", "latency report refused", str(exc))
            return
        for part, ms in report.parts_ms.items():
            PHONE_KEY_SECONDS.labels(self._settings.region, part).observe(ms / MS_PER_S)

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.VideoFrame)
            self._heard()
            pts = int(frame.pts or 0)
            self._mapper.observe(pts)
            self._pending.append(_Decoded(pts=pts, frame=frame, decoded_ns=time.monotonic_ns()))
            if len(self._pending) > MAX_PENDING_FRAMES:
                self._pending.popleft()
                self._count("unmapped_frames_dropped")
                FRAMES.labels(self._settings.region, "unmapped").inc()
            self._match()
            now = time.monotonic()
            self._mapped_at = self._mapped_at or now
            if now - self._mapped_at >= self._limits.unmapped_timeout_s:
                self._end(
                    "unmapped",
                    f"no decoded frame matched an announced frame id for {now - self._mapped_at:.1f} s "
                    f"({self.counts.get('unmapped_frames_dropped', 0)} frames dropped unmapped)",
                )
                return

    def _match(self) -> None:
        """Resolve pending decoded frames to frame ids; queue key frames; report lost ones."""
        still_pending: deque[_Decoded] = deque()
        for decoded in self._pending:
            frame_id = self._mapper.locate(decoded.pts)
            announced = self._meta.get(frame_id) if frame_id is not None else None
            if announced is None:
                still_pending.append(decoded)
                continue
            meta = announced.meta
            self._mapped_at = time.monotonic()
            log.debug(
                "frame mapped", extra={"stream_id": self.stream_id, "pts": decoded.pts, "frame_id": meta.frame_id}
            )
            self._newest_mapped = max(self._newest_mapped, meta.frame_id)
            if meta.key and meta.frame_id in self._awaited_keys:
                self._awaited_keys.discard(meta.frame_id)
                FRAMES.labels(self._settings.region, "key").inc()
                dropped = self._jobs.put(_KeyJob(meta, decoded.frame, decoded.decoded_ns, announced.received_ns))
                if dropped is not None:
                    self._fail(dropped.meta.frame_id, ErrorCode.DROPPED, "replaced by a newer key frame", 0)
            else:
                FRAMES.labels(self._settings.region, "intermediate").inc()
        self._pending = still_pending
        for frame_id in sorted(k for k in self._awaited_keys if k < self._newest_mapped):
            self._awaited_keys.discard(frame_id)
            self._fail(frame_id, ErrorCode.LOST, "key frame never arrived (lost on the way)", 0)

    # --- key frames ----------------------------------------------------------------------
    def _fail(self, frame_id: int, code: str, text: str, attempts: int) -> None:
        KEY_FRAMES.labels(self._settings.region, code).inc()
        self._count(f"key_{code}")
        result = KeyResult(frame_id=frame_id, ok=False, attempts=attempts, error_code=code, error=clip(text))
        self._spawn_send([encode(result)])

    def _spawn_send(self, messages: list[bytes]) -> None:
        """Send in the background (kept referenced until done)."""
        if self.closed.is_set():
            return
        task = asyncio.create_task(self._send(messages))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.closed.is_set():  # a cancel swallowed by wait_for must not keep it waiting for jobs
            job = await self._jobs.get()
            try:
                await self._stylize(loop, job)
            except Exception:  # one bad frame must not end the session
                log.exception("key frame failed", extra={"stream_id": self.stream_id, "frame_id": job.meta.frame_id})
                self._fail(job.meta.frame_id, ErrorCode.INTERNAL, "gateway error", 0)

    async def _stylize(self, loop: asyncio.AbstractEventLoop, job: _KeyJob) -> None:
        frame_id = job.meta.frame_id
        out_size = self._out_size or (job.frame.width, job.frame.height)
        try:
            check_result_size((job.frame.width, job.frame.height), out_size)
        except ProtocolError as exc:  # refused here, before any JPEG or worker time
            self._fail(frame_id, exc.code, str(exc), 0)
            return
        jpeg = await loop.run_in_executor(self._executor, _frame_to_jpeg, job.frame, self._settings.jpeg_quality)
        request = StylizeRequest(
            stream_id=self.stream_id,
            frame_id=frame_id,
            style_id=self._style_id,
            image=jpeg,
            out_width=out_size[0],
            out_height=out_size[1],
            budget_ms=self._settings.deadline_ms,
            result=self._result,
            stamps={Stamp.PHONE_CAPTURE: job.meta.capture_ns, Stamp.GW_DECODED: job.decoded_ns},
        )
        asked_ns = time.monotonic_ns()
        outcome = await request_stylize(
            self._nc,
            self._settings.subject,
            request,
            self._settings.deadline_ms,
            self._settings.first_attempt_ms,
            self._worker_clocks,
        )
        if not outcome.ok or outcome.reply is None:
            self._fail(frame_id, outcome.error_code, outcome.error, outcome.attempts)
            return
        reply = outcome.reply
        chunks = chunk_payload(frame_id, reply.image)
        header = KeyResult(
            frame_id=frame_id,
            ok=True,
            chunks=len(chunks),
            size=len(reply.image),
            kind=reply.kind,
            worker_id=reply.worker_id,
            attempts=outcome.attempts,
            stamps=reply.stamps,
        )
        KEY_FRAMES.labels(self._settings.region, "ok").inc()
        self._count("key_ok")
        await self._send([encode(header), *(encode(c) for c in chunks)])
        sent_ns = time.monotonic_ns()
        self._observe(job.decoded_ns, asked_ns, reply.stamps.get(Stamp.GW_REPLY, asked_ns), sent_ns)
        self._served[frame_id] = ServedKey(job.announced_ns, job.decoded_ns, sent_ns, dict(reply.stamps))
        while len(self._served) > MAX_AWAITED_REPORTS:
            self._served.popitem(last=False)

    def _observe(self, decoded_ns: int, asked_ns: int, reply_ns: int, sent_ns: int) -> None:
        """Record a served key's time at this site and its hops (:data:`GATEWAY_HOPS`)."""
        region = self._settings.region
        KEY_SECONDS.labels(region).observe((sent_ns - decoded_ns) / NS_PER_S)
        for hop, ns in zip(GATEWAY_HOPS, (asked_ns - decoded_ns, reply_ns - asked_ns, sent_ns - reply_ns), strict=True):
            KEY_HOP_SECONDS.labels(region, hop).observe(ns / NS_PER_S)

    async def _send(self, messages: list[bytes]) -> None:
        """Send messages in order, waiting whenever the channel's buffer is above the high-water mark."""
        channel = self._channel
        if channel is None:
            return
        for message in messages:
            while channel.bufferedAmount > BUFFER_HIGH_WATER and channel.readyState == "open":
                self._drained.clear()
                await self._drained.wait()
            if channel.readyState != "open":
                return
            channel.send(message)


def _frame_to_jpeg(frame: av.VideoFrame, quality: int) -> bytes:
    """Decoded video frame -> JPEG bytes for the request (runs in the executor)."""
    return encode_jpeg(frame.to_ndarray(format="bgr24"), quality, MAX_MESSAGE_BYTES - REQUEST_OVERHEAD_BYTES)
