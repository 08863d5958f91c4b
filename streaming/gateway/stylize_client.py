"""Gateway side of ``mvs.<region>.stylize``: one request with a deadline and one retry.

Live frames are worth nothing late. The first attempt gets part of the budget; on a timeout (a
worker died or stalled), no responders (no worker subscribed at that moment) or a retryable error
reply (a worker shed the frame), the rest of the budget goes to one more attempt, which the queue
group routes to any live worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from streaming.clock import ClockOffset
from streaming.protocol import (
    RETRYABLE_CODES,
    WORKER_STAMP_PREFIX,
    ErrorCode,
    ProtocolError,
    Stamp,
    StylizeReply,
    StylizeRequest,
    WorkerInfo,
    decode,
    encode,
    workers_subject,
)

MAX_ATTEMPTS = 2
NO_RESPONDERS_BACKOFF_S = 0.05
"""Pause before retrying when no worker was subscribed (one may be restarting)."""


@dataclass
class StylizeOutcome:
    """The reply (ok or a worker's error) or the gateway's own error, and how many attempts it took."""

    reply: StylizeReply | None
    attempts: int
    error_code: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        """True when a worker returned a stylized frame."""
        return self.reply is not None and self.reply.ok


def to_gateway_clock(reply: StylizeReply, clocks: dict[str, ClockOffset]) -> None:
    """Learn the worker's clock offset from this exchange and move its stamps onto the gateway's clock."""
    s = reply.stamps
    if not all(k in s for k in (Stamp.GW_SENT, Stamp.W_RECEIVED, Stamp.W_SENT, Stamp.GW_REPLY)):
        return
    clock = clocks.setdefault(reply.worker_id, ClockOffset())
    clock.add(s[Stamp.GW_SENT], s[Stamp.W_RECEIVED], s[Stamp.W_SENT], s[Stamp.GW_REPLY])
    for key in [k for k in s if k.startswith(WORKER_STAMP_PREFIX)]:
        s[key] = clock.to_local(s[key])


async def request_stylize(
    nc: NATS,
    subject: str,
    request: StylizeRequest,
    budget_ms: float,
    first_attempt_ms: float,
    clocks: dict[str, ClockOffset] | None = None,
) -> StylizeOutcome:
    """Send ``request`` within ``budget_ms``; the first attempt may use ``first_attempt_ms`` of it.

    With ``clocks`` (one estimator per worker id, kept by the caller), the reply's worker stamps are
    converted to this process's clock.
    """
    deadline = time.monotonic() + budget_ms / 1000.0
    outcome = StylizeOutcome(reply=None, attempts=0, error_code=ErrorCode.TIMEOUT, error="budget spent")
    for attempt in range(MAX_ATTEMPTS):
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            break
        timeout_s = remaining_s if attempt == MAX_ATTEMPTS - 1 else min(remaining_s, first_attempt_ms / 1000.0)
        sent = dataclasses.replace(request, attempt=attempt, budget_ms=timeout_s * 1000.0, stamps=dict(request.stamps))
        sent.stamps[Stamp.GW_SENT] = time.monotonic_ns()
        outcome.attempts = attempt + 1
        try:
            msg = await nc.request(subject, encode(sent), timeout=timeout_s)
        except NoRespondersError:
            outcome.error_code, outcome.error = ErrorCode.NO_WORKERS, f"no worker subscribed to {subject}"
            await asyncio.sleep(min(NO_RESPONDERS_BACKOFF_S, max(0.0, deadline - time.monotonic())))
            continue
        except (NatsTimeoutError, asyncio.TimeoutError):
            outcome.error_code, outcome.error = ErrorCode.TIMEOUT, f"no reply within {timeout_s * 1000:.0f} ms"
            continue
        try:
            reply = decode(msg.data, StylizeReply)
        except ProtocolError as exc:
            outcome.error_code, outcome.error = exc.code, f"bad reply from worker: {exc}"
            continue
        reply.stamps[Stamp.GW_REPLY] = time.monotonic_ns()
        if clocks is not None:
            to_gateway_clock(reply, clocks)
        outcome.reply = reply
        outcome.error_code, outcome.error = reply.error_code, reply.error
        if reply.ok or reply.error_code not in RETRYABLE_CODES:
            break
    return outcome


async def discover_workers(nc: NATS, region: str, wait_s: float) -> list[WorkerInfo]:
    """Every worker of ``region`` that answers on ``mvs.<region>.workers`` within ``wait_s``."""
    inbox = nc.new_inbox()
    found: list[WorkerInfo] = []
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(workers_subject(region), b"", reply=inbox)
        deadline = time.monotonic() + wait_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=remaining)
            except (NatsTimeoutError, asyncio.TimeoutError):
                break
            try:
                found.append(decode(msg.data, WorkerInfo))
            except ProtocolError:
                continue
    finally:
        await sub.unsubscribe()
    return found
