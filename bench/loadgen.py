"""An open-loop load generator for the stylizer workers: N virtual phone streams' key frames, straight to NATS.

Each virtual stream sends ``keys_per_stream_s`` key frames a second (K=5 at 30 fps: 6), paced (evenly, a random
phase per stream) or Poisson (exponential gaps), for ``duration_s`` seconds, as :class:`StylizeRequest`\\ s of one
pre-encoded JPEG, a stored style and ``budget_ms`` each. It does not wait for a reply before sending the next
request (open loop): the offered rate is the schedule's, whatever the workers do.

Design, chosen so the generator is not the bottleneck: the whole schedule (every stream's arrival times) is
computed up front and merged into one timeline that a single coroutine walks, publishing every request that is
due (late ones at once, in a burst) instead of one timer per stream; each request is a plain publish with its own
reply subject under one wildcard inbox subscription (``<inbox>.<seq>``), so there is no future, timer or task per
request (nats-py's ``request()`` makes all three). A reply is matched to its request by the subject's sequence
number; the server's no-responders status (503) is told apart from a worker's reply; whatever has no answer once
the last request's budget (plus :data:`REPLY_GRACE_S`) has passed is a ``timeout``. How late the publisher ran
behind its schedule is recorded (:attr:`LoadResult.publish_lag_ms`), so a run shows whether the generator kept up.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import Header

from streaming.protocol import (
    ErrorCode,
    ProtocolError,
    ResultKind,
    Stamp,
    StylizeReply,
    StylizeRequest,
    decode,
    encode,
    stylize_subject,
)

Arrivals = Literal["paced", "poisson"]
ARRIVALS: tuple[Arrivals, ...] = ("paced", "poisson")
KEY_INTERVAL = 5
"""Frames per key frame of a virtual stream."""
STREAM_FPS = 30.0
"""Frame rate of a virtual stream."""
KEYS_PER_STREAM_S = STREAM_FPS / KEY_INTERVAL
"""Key frames a second of one virtual stream: K=5 at 30 fps."""
REPLY_GRACE_S = 1.0
"""How long after the last request's budget has passed the generator still waits for replies."""
NO_RESPONDERS_STATUS = "503"
"""The status header nats-server sends to a reply subject when no subscriber took the message."""
OK = "ok"
LATE = "late"
"""An ok reply that came after the request's budget had passed."""
PENDING = "pending"
PERCENTILES = (50, 95, 99)
STEADY_SHARE = 0.75
"""Share of a step, at its end, over which the steady throughput is counted."""


@dataclass(frozen=True)
class LoadSpec:
    """What to offer: ``streams`` virtual streams for ``duration_s`` seconds.

    ``streams`` may be fractional: the last stream then sends its fraction of ``keys_per_stream_s`` (a phone with
    a longer key interval), so the offered rate can be set finer than one stream."""

    streams: float
    duration_s: float
    budget_ms: float
    keys_per_stream_s: float = KEYS_PER_STREAM_S
    arrivals: Arrivals = "poisson"
    result: str = ResultKind.COEFFICIENTS
    out_size: tuple[int, int] = (640, 360)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.streams <= 0 or self.duration_s <= 0 or self.budget_ms <= 0 or self.keys_per_stream_s <= 0:
            raise ValueError(f"streams, duration, budget and rate must be > 0: {self}")
        if self.arrivals not in ARRIVALS:
            raise ValueError(f"arrivals must be one of {ARRIVALS}, got {self.arrivals!r}")

    @property
    def offered_keys_s(self) -> float:
        """The offered rate, key frames a second, all streams together."""
        return self.streams * self.keys_per_stream_s

    def stream_rates(self) -> list[float]:
        """Key frames a second of each stream (the last one a fraction when ``streams`` is)."""
        whole = math.floor(self.streams)
        rates = [self.keys_per_stream_s] * whole
        if self.streams > whole:
            rates.append((self.streams - whole) * self.keys_per_stream_s)
        return rates


def schedule(spec: LoadSpec) -> list[tuple[float, int]]:
    """(seconds from the start, stream index) of every request, in time order."""
    rng = np.random.default_rng(spec.seed)
    arrivals: list[tuple[float, int]] = []
    for stream, rate in enumerate(spec.stream_rates()):
        if spec.arrivals == "paced":
            times = rng.uniform(0.0, 1.0 / rate) + np.arange(0.0, spec.duration_s * rate) / rate
        else:
            gaps = rng.exponential(1.0 / rate, size=int(spec.duration_s * rate * 2 + 20))
            times = np.cumsum(gaps)
        arrivals += [(float(t), stream) for t in times if t < spec.duration_s]
    arrivals.sort()
    return arrivals


@dataclass
class RequestRecord:
    """One request: when it was due and sent, when and how it was answered (times: ``time.monotonic_ns``)."""

    stream: int
    frame_id: int
    due_ns: int
    sent_ns: int = 0
    reply_ns: int = 0
    outcome: str = PENDING
    """``ok``, ``late`` (ok after the budget), a worker's error code, ``no_workers`` or ``timeout``."""
    worker_id: str = ""
    stamps: dict[str, int] = field(default_factory=dict)

    @property
    def latency_ms(self) -> float:
        """Send to reply, ms."""
        return (self.reply_ns - self.sent_ns) / 1e6


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {f"p{p}": float("nan") for p in PERCENTILES}
    return {f"p{p}": round(float(np.percentile(values, p)), 2) for p in PERCENTILES}


@dataclass
class LoadResult:
    """Every request of a run and what the run amounted to."""

    spec: LoadSpec
    records: list[RequestRecord]
    started_ns: int
    publish_seconds: float
    """Wall time from the first due request to the last one sent."""

    def outcomes(self) -> Counter[str]:
        """Requests by outcome."""
        return Counter(r.outcome for r in self.records)

    def ok_fraction(self) -> float:
        """Share of the requests answered ok within their budget."""
        return self.outcomes()[OK] / len(self.records) if self.records else 0.0

    def ok_in_window(self, skip_s: float = 0.0) -> int:
        """Ok replies that arrived within the load's ``duration_s`` (after its first ``skip_s``): the queues' drain
        after it does not count, so a short step cannot show more than its workers did in it."""
        start_ns = self.started_ns + int(skip_s * 1e9)
        end_ns = self.started_ns + int(self.spec.duration_s * 1e9)
        return sum(1 for r in self.records if r.outcome == OK and start_ns <= r.reply_ns <= end_ns)

    def steady_throughput(self) -> float:
        """Ok keys/s over the last :data:`STEADY_SHARE` of the step: the workers' first batches, which nothing
        completes before, do not count, so a short step (many workers) is not penalised against a long one."""
        skip_s = (1.0 - STEADY_SHARE) * self.spec.duration_s
        return self.ok_in_window(skip_s) / (self.spec.duration_s - skip_s)

    def publish_lag_ms(self) -> dict[str, float]:
        """How late requests were sent against the schedule, ms (the generator's own health)."""
        return _percentiles([(r.sent_ns - r.due_ns) / 1e6 for r in self.records])

    def batches(self) -> int:
        """Distinct stylizer calls the ok replies came from: items of one batch share worker and inference start."""
        return len({(r.worker_id, r.stamps.get(Stamp.W_INFER_START)) for r in self.records if r.outcome in (OK, LATE)})

    def summary(self) -> dict[str, Any]:
        """The run's figures: offered and achieved rates, outcomes, latency of the ok replies, batch size."""
        answered_ok = [r for r in self.records if r.outcome in (OK, LATE)]
        outcomes = self.outcomes()
        batches = self.batches()
        return {
            "streams": self.spec.streams,
            "offered_keys_s": round(self.spec.offered_keys_s, 2),
            "requests": len(self.records),
            "sent_keys_s": round(len(self.records) / self.spec.duration_s, 2),
            "ok": outcomes[OK],
            "ok_fraction": round(self.ok_fraction(), 4),
            "throughput_keys_s": round(self.ok_in_window() / self.spec.duration_s, 2),
            "steady_throughput_keys_s": round(self.steady_throughput(), 2),
            "outcomes": {str(k): v for k, v in sorted(outcomes.items())},
            "deadline_misses": outcomes[LATE] + outcomes[ErrorCode.DEADLINE] + outcomes[ErrorCode.TIMEOUT],
            "latency_ms": _percentiles([r.latency_ms for r in answered_ok]),
            "mean_batch": round(len(answered_ok) / batches, 3) if batches else 0.0,
            "publish_lag_ms": self.publish_lag_ms(),
            "by_stream": dict(sorted(Counter(r.stream for r in answered_ok).items())),
            "by_worker": dict(sorted(Counter(r.worker_id for r in answered_ok).items())),
        }


class LoadGenerator:
    """Offers :class:`LoadSpec` loads of one key frame and one style to a region's stylizer workers over ``nc``."""

    def __init__(self, nc: NATS, region: str, image: bytes, style_id: str) -> None:
        self._nc = nc
        self._subject = stylize_subject(region)
        self._image = image
        self._style_id = style_id

    async def run(self, spec: LoadSpec) -> LoadResult:
        """Offer ``spec``'s load, wait for the answers (at most each budget plus :data:`REPLY_GRACE_S`), report."""
        arrivals = schedule(spec)
        records = [RequestRecord(stream, frame_id=i, due_ns=0) for i, (_, stream) in enumerate(arrivals)]
        inbox = self._nc.new_inbox()
        pending = len(records)
        all_answered = asyncio.Event()
        if not records:
            all_answered.set()

        async def on_reply(msg: Msg) -> None:
            nonlocal pending
            now = time.monotonic_ns()
            try:
                record = records[int(msg.subject.rsplit(".", 1)[1])]
            except (ValueError, IndexError):
                return
            if record.outcome != PENDING:
                return
            record.reply_ns = now
            _classify(record, msg, spec.budget_ms)
            pending -= 1
            if pending == 0:
                all_answered.set()

        sub = await self._nc.subscribe(f"{inbox}.*", cb=on_reply, pending_msgs_limit=len(records) + 1024)
        await self._nc.flush()
        stream_ids = [f"load-{spec.seed}-{s}" for s in range(len(spec.stream_rates()))]
        started_ns = time.monotonic_ns()
        for record, (offset, _) in zip(records, arrivals, strict=True):
            record.due_ns = started_ns + int(offset * 1e9)
        try:
            for index, record in enumerate(records):
                wait_ns = record.due_ns - time.monotonic_ns()
                if wait_ns > 0:
                    await asyncio.sleep(wait_ns / 1e9)
                record.sent_ns = time.monotonic_ns()
                request = StylizeRequest(
                    stream_id=stream_ids[record.stream],
                    frame_id=record.frame_id,
                    style_id=self._style_id,
                    image=self._image,
                    out_width=spec.out_size[0],
                    out_height=spec.out_size[1],
                    budget_ms=spec.budget_ms,
                    result=spec.result,
                    stamps={Stamp.GW_SENT: record.sent_ns},
                )
                await self._nc.publish(self._subject, encode(request), reply=f"{inbox}.{index}")
            publish_seconds = (time.monotonic_ns() - started_ns) / 1e9
            await self._nc.flush()
            last_sent = records[-1].sent_ns if records else started_ns
            wait_s = (last_sent - time.monotonic_ns()) / 1e9 + spec.budget_ms / 1000.0 + REPLY_GRACE_S
            try:
                await asyncio.wait_for(all_answered.wait(), max(0.0, wait_s))
            except asyncio.TimeoutError:
                pass
        finally:
            await sub.unsubscribe()
        for record in records:
            if record.outcome == PENDING:
                record.outcome = ErrorCode.TIMEOUT
        return LoadResult(spec, records, started_ns, publish_seconds)


def _classify(record: RequestRecord, msg: Msg, budget_ms: float) -> None:
    """Set ``record``'s outcome (and worker, stamps) from its reply message."""
    if msg.headers and msg.headers.get(Header.STATUS) == NO_RESPONDERS_STATUS:
        record.outcome = ErrorCode.NO_WORKERS
        return
    try:
        reply = decode(msg.data, StylizeReply)
    except ProtocolError as exc:
        record.outcome = exc.code
        return
    record.worker_id = reply.worker_id
    record.stamps = reply.stamps
    if not reply.ok:
        record.outcome = reply.error_code or ErrorCode.INTERNAL
    else:
        record.outcome = OK if record.latency_ms <= budget_ms else LATE
