"""Whether the hub's JetStream answers, said by every service (issue 26): a hub cluster with two servers of three
down is still connected (the leaf node and the one server left answer) but no store has a leader, so nothing can
be stored.

Gateways and workers probe with a publish the stream's leader refuses unstored (:class:`JetStreamProbe`); the
aggregator notices on its own calls. Each reports it three ways: the ``mvs_jetstream_available{service,region}``
gauge (1/0), a warning log line when it stops answering (rate-limited) and an info line when it answers again, and
a ``jetstream`` field in its ``/healthz`` body. Gateways and workers keep their readiness (the status code) as it
was: every one of them shares the hub, so taking them out of rotation would turn the stores' outage into a total
one, and phones whose style is already cached keep streaming; the aggregator, which does nothing but JetStream
work, turns unready. No service's liveness depends on it: they all recover by themselves when a quorum is back.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import APIError
from prometheus_client import Gauge

from streaming.buckets import chunk_subject
from streaming.protocol import token
from streaming.telemetry import LogLimiter

log = logging.getLogger(__name__)

JETSTREAM_AVAILABLE = Gauge(
    "mvs_jetstream_available",
    "1 while the hub's JetStream answers this service (a store has a leader: a quorum of the hub's servers), else 0",
    ["service", "region"],
)
PROBE_EVERY_S = 2.0
"""How often gateways and workers ask."""
PROBE_TIMEOUT_S = 2.0
PROBE_EXPECTED_STREAM = "mvs-jetstream-probe"
"""The stream name a probe expects: no stream has it, so the leader of the one that gets it refuses it, unstored."""
JS_STREAM_MISMATCH = 10060
"""JetStream's error code for a publish whose expected stream is another."""
FAILURES_TO_REPORT = 2
"""Consecutive failed probes before a service says JetStream is unavailable (a stream electing a new leader after one
server died takes a moment; that is not an outage)."""


def probe_subject(bucket: str, owner: str | None = None) -> str:
    """The subject a :class:`JetStreamProbe` publishes on: a chunk subject of ``bucket`` its writer may use (under
    ``owner``'s token in a bucket whose writers each own their objects: a worker's in its region's deltas)."""
    return chunk_subject(bucket, "jetstream-probe" if owner is None else f"{token(owner)}.jetstream-probe")


class JetStreamStatus:
    """A service's view of JetStream: :attr:`available`, its gauge and its log lines."""

    def __init__(self, service: str, region: str = "") -> None:
        self.service = service
        self.region = region
        self.available = True
        self._gauge = JETSTREAM_AVAILABLE.labels(service, region)
        self._gauge.set(1)
        self._log = LogLimiter()

    def note(self, available: bool, error: BaseException | None = None) -> None:
        """Record whether the last JetStream call was answered; log each change (a warning when it stops)."""
        if available != self.available:
            extra: dict[str, object] = {"service": self.service, "region": self.region}
            if available:
                self._log.log(log, logging.INFO, self.service, "jetstream available again", extra)
            else:
                extra["error"] = f"{type(error).__name__}: {error}" if error is not None else "unknown"
                self._log.log(log, logging.WARNING, self.service, "jetstream unavailable", extra)
        self.available = available
        self._gauge.set(1 if available else 0)


class JetStreamProbe:
    """Every :data:`PROBE_EVERY_S` while NATS is connected, publishes an empty message that a bucket's stream must
    refuse unstored (it expects another stream's name, :data:`PROBE_EXPECTED_STREAM`) and keeps :attr:`status` up to
    date: available when the refusal comes, which only the stream's leader sends (so a quorum of its servers is up).
    It takes no permission a service lacks: ``subject`` is one it may write to (a chunk subject of its bucket)."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        subject: str,
        service: str,
        region: str = "",
        every_s: float = PROBE_EVERY_S,
    ) -> None:
        self.status = JetStreamStatus(service, region)
        self._nc = nc
        self._js = js
        self._subject = subject
        self._every_s = every_s
        self._failures = 0

    @property
    def available(self) -> bool:
        """JetStream answered lately (or failed fewer than :data:`FAILURES_TO_REPORT` probes in a row)."""
        return self.status.available

    async def probe(self) -> None:
        """One probe (nothing while NATS is disconnected: its own gauge says so)."""
        if not self._nc.is_connected:
            return
        try:
            await self._js.publish(self._subject, b"", timeout=PROBE_TIMEOUT_S, stream=PROBE_EXPECTED_STREAM)
            error: BaseException = RuntimeError(f"the probe on {self._subject} was stored")  # cannot: no such stream
        except APIError as exc:
            if exc.err_code == JS_STREAM_MISMATCH:
                self._failures = 0
                self.status.note(True)
                return
            error = exc
        except (NatsError, asyncio.TimeoutError) as exc:  # no response from the stream: it has no leader
            error = exc
        self._failures += 1
        if self._failures >= FAILURES_TO_REPORT:
            self.status.note(False, error)

    async def run(self) -> None:
        """Probe until cancelled. nats-py swallows a cancellation that lands while it flushes a publish (the request
        then times out as a NATS error), so a pending cancel request is honoured here after each probe."""
        cancelling = getattr(asyncio.current_task(), "cancelling", None)  # Python >= 3.11
        while True:
            await self.probe()
            if cancelling is not None and cancelling():
                raise asyncio.CancelledError
            await asyncio.sleep(self._every_s)
