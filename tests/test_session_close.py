"""Sessions always close (issue 22): close() frees the peer connection whatever the session's tasks do, and a churn
of sessions leaves tasks, file descriptors and memory where they were."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.msg import Msg

from deploy.faults import BarePhone, unanswered_offer_sdp
from deploy.nats_servers import NatsServer
from edge_worker.service import StylizerWorker
from mobile_sim.sources import default_style_photo
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.gateway.session import CLOSE_GRACE_S
from streaming.ice import LOOPBACK
from streaming.images import encode_jpeg
from tests.support import phone_offer

CLOSE_WITHIN_S = CLOSE_GRACE_S + 3.0
RACE_STEPS = 4


def _waiting_on_a_resolved_reply(task: asyncio.Task[None]) -> bool:
    """Whether ``task`` is suspended in ``asyncio.wait_for`` whose future is already resolved: the moment a cancel is
    swallowed (followed down the chain of coroutines the task awaits)."""
    coro: Any = task.get_coro()
    while coro is not None:
        if getattr(coro, "__qualname__", "") == "wait_for" and coro.cr_frame is not None:
            future = coro.cr_frame.f_locals.get("fut")
            return future is not None and future.done()
        coro = getattr(coro, "cr_await", None)
    return False


@pytest.mark.slow
async def test_a_close_landing_with_the_workers_reply_still_closes_the_session(
    worker: StylizerWorker, gateway: Gateway
) -> None:
    """The cancel of close() lands after the worker's reply resolved a key's request but before the dispatcher
    resumed: Python 3.11's ``wait_for`` inside nats-py's request then returns the reply instead of raising, and the
    dispatcher runs on. The test watches the gateway's reply inboxes with a second subscription and closes the
    session at exactly that moment (found by following the dispatcher's chain of awaits; a reply that does not
    find it there is let pass, the next key tries again). On main, close() then waited for that dispatcher for good
    and never closed the peer connection."""
    phone = BarePhone(frames=60, size=(160, 96))
    closed = asyncio.Event()
    try:
        session = gateway.sessions[(await phone.connect(gateway))["stream_id"]]
        nc = gateway._nc
        assert nc is not None

        async def close_on_reply(msg: Msg) -> None:
            for _ in range(RACE_STEPS):
                if session.closed.is_set():
                    return
                if any(_waiting_on_a_resolved_reply(t) for t in session._tasks if t.get_name().endswith("dispatch")):
                    await session.close("closed as the reply landed")
                    closed.set()
                    return
                await asyncio.sleep(0)  # nats-py resolves the request one loop step after this callback starts

        await nc.subscribe("_INBOX.>", cb=close_on_reply)
        phone.feed()
        await asyncio.wait_for(session.closed.wait(), 30)
        await asyncio.wait_for(closed.wait(), CLOSE_WITHIN_S)
        assert session.pc.connectionState == "closed"
        assert session.close_reason == "closed as the reply landed"
    finally:
        await phone.pc.close()


CHURN_SESSIONS = 500
WARM_UP_SESSIONS = 100
CHURN_CONCURRENCY = 16
"""Offers at once (the gateway below lets one address have that many pending)."""
MAX_RSS_GROWTH_MB = 20.0
"""Main grew 105 -> 173 MB over 600 sessions (issue 22). The allocator's high-water mark rises over the first few
hundred sessions and then stays (measured: flat from the 500th to the 800th), hence the warm-up; a session that
stayed alive would also keep its sockets, which the file descriptor count catches at once."""
SETTLE_S = 10.0
QUIET_S = 1.0
"""The baseline is taken once tasks and descriptors stayed the same this long (it waited out all of SETTLE_S)."""


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def roomy_gateway(nats_server: NatsServer, region: str) -> AsyncIterator[Gateway]:
    """A gateway taking :data:`CHURN_CONCURRENCY` offers at once from one address, and all the churn's."""
    config = GatewayConfig(
        port=0,
        nats_url=nats_server.url,
        region=region,
        ice_hosts=LOOPBACK,
        max_sessions=CHURN_CONCURRENCY,
        max_pending_per_address=CHURN_CONCURRENCY,
        offer_burst_per_address=CHURN_SESSIONS + WARM_UP_SESSIONS,
    )
    gateway = Gateway(config)
    await gateway.start()
    yield gateway
    await gateway.stop()


@pytest.mark.slow
async def test_a_churn_of_sessions_returns_tasks_fds_and_memory_to_their_baseline(roomy_gateway: Gateway) -> None:
    """500 sessions opened and closed; tasks, file descriptors and RSS come back to where they were.

    The sessions carry no media: each is a real offer to the real gateway (its RTCPeerConnection with ICE gathered
    on loopback sockets, its DTLS certificate and SCTP transport, its supervision task and reaper) closed by the
    gateway's own close() before it connects. That is the part of a session that holds sockets, tasks and memory;
    connecting 500 aiortc pairs would take minutes of CI cores, and the close of a connected session with a key in
    flight is the test above."""
    sdp = await unanswered_offer_sdp()
    body = phone_offer(sdp, encode_jpeg(default_style_photo()[:64, :64]))  # the style is decoded at every offer
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:

        async def churn(count: int) -> None:
            limit = asyncio.Semaphore(CHURN_CONCURRENCY)

            async def one() -> None:
                async with limit:
                    async with http.post(f"{roomy_gateway.url}/offer", data=body) as response:
                        assert response.status == 200, await response.text()
                        stream_id = (await response.json())["stream_id"]
                    await roomy_gateway.sessions[stream_id].close("churn")

            await asyncio.gather(*(one() for _ in range(count)))

        async def settled(tasks: int, fds: int) -> tuple[int, int]:
            deadline = time.monotonic() + SETTLE_S
            while (len(asyncio.all_tasks()) > tasks or _fds() > fds) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # reapers and transports finish a loop step or two after close()
            return len(asyncio.all_tasks()), _fds()

        async def quiet() -> tuple[int, int]:
            """Tasks and file descriptors once unchanged for :data:`QUIET_S` (at most :data:`SETTLE_S`)."""
            seen, since = (len(asyncio.all_tasks()), _fds()), time.monotonic()
            deadline = since + SETTLE_S
            while time.monotonic() - since < QUIET_S and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                if (now := (len(asyncio.all_tasks()), _fds())) != seen:
                    seen, since = now, time.monotonic()
            return seen

        await churn(WARM_UP_SESSIONS)
        gc.collect()
        tasks, fds = await quiet()  # where things stand once the warm-up's sessions are gone
        rss = _rss_mb()
        start = time.monotonic()
        await churn(CHURN_SESSIONS)
        seconds = time.monotonic() - start
        gc.collect()
        after_tasks, after_fds = await settled(tasks, fds)
    assert not roomy_gateway.sessions
    assert after_tasks <= tasks and after_fds <= fds, (tasks, after_tasks, fds, after_fds)
    assert _rss_mb() - rss < MAX_RSS_GROWTH_MB, (rss, _rss_mb(), seconds)
