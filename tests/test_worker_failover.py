"""A stylizer worker process dies mid-stream: the gateway retries on another worker, the stream goes on."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from deploy.nats_servers import NatsServer
from deploy.worker_site import LOCAL_WORKER, WorkerSite
from mobile_sim.client import Phone, PhoneConfig
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK
from streaming.protocol import stylize_subject
from tests.support import wait_until

pytestmark = pytest.mark.slow  # worker processes and a phone streaming


FRAMES = 120
POLL_S = 0.05
WAIT_S = 20.0


async def _stylize_requests(monitor_url: str, name: str, region: str) -> int:
    """Stylize requests the server delivered to a worker connection (its subscription's count: the connection's own
    message counts also hold its JetStream probes' answers and discovery)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{monitor_url}/connz", params={"subs": "detail"}) as response:
            conns: list[dict[str, Any]] = (await response.json())["connections"] or []
    conn = next((c for c in conns if c.get("name") == name), {})
    subs = conn.get("subscriptions_list_detail") or []
    return sum(int(sub.get("msgs", 0)) for sub in subs if sub.get("subject") == stylize_subject(region))


@pytest.fixture
async def topology(nats_server: NatsServer, region: str) -> AsyncIterator[WorkerSite]:
    topo = WorkerSite(nats_server.url, dataclasses.replace(LOCAL_WORKER, region=region))
    yield topo
    topo.stop()


async def test_gateway_retries_on_another_worker_when_one_is_killed(
    nats_server: NatsServer, region: str, topology: WorkerSite
) -> None:
    doomed, survivor = topology.start_worker("a"), topology.start_worker("b")

    await topology.wait_for_workers()
    gateway = Gateway(
        GatewayConfig(
            port=0, nats_url=nats_server.url, region=region, ice_hosts=LOOPBACK, first_attempt_ms=500, deadline_ms=2500
        )
    )
    await gateway.start()
    try:
        phone = asyncio.create_task(
            Phone(
                PhoneConfig(
                    gateway_urls=(gateway.url,),
                    frames=FRAMES,
                    size=(320, 180),
                    key_interval=5,
                    region=region,
                    ice_hosts=LOOPBACK,
                    keep_frames=True,
                )
            ).run()
        )

        async def both_serving() -> bool:
            served = [await _stylize_requests(nats_server.monitor_url, f"worker-{w}", region) for w in ("a", "b")]
            return all(n > 0 for n in served)

        await wait_until(
            both_serving, WAIT_S, "the phone's key frames reaching both workers", poll_s=POLL_S
        )  # streaming
        doomed.send_signal(signal.SIGSTOP)
        stopped_at = await _stylize_requests(nats_server.monitor_url, "worker-a", region)

        async def request_in_flight_to_doomed() -> bool:
            return await _stylize_requests(nats_server.monitor_url, "worker-a", region) > stopped_at

        await wait_until(request_in_flight_to_doomed, WAIT_S, "a key frame routed to the worker to stop", poll_s=POLL_S)
        doomed.kill()  # SIGKILL while it holds a request
        result = await phone
    finally:
        await gateway.stop()
    assert survivor.returncode is None
    report = result.report
    assert report["frames"]["captured"] == FRAMES and report["frames"]["output"] == FRAMES
    per_key = report["per_key"]
    rescued = [k for k in per_key if k["ok"] and k["attempts"] == 2]
    assert rescued and all(k["worker_id"] == "b" for k in rescued)
    assert set(report["key_frames"]["workers"]) == {"a", "b"}
    # After the kill every key frame is served by the survivor.
    last_rescued = max(k["frame_id"] for k in rescued)
    later = [k for k in per_key if k["frame_id"] > last_rescued]
    assert later and all(k["ok"] and k["worker_id"] == "b" for k in later)
