"""A long NATS outage (issue 14, item 8): the gateway and the worker reconnect by themselves, however long it
lasts (the rule of streaming.nats_connect), are unready but alive meanwhile, and a phone streaming across it gets
stylized key frames again without a human. The test's "long" is short: reconnect attempts every 0.1 s, and an
outage of more attempts than the old policy allowed its two minutes of (60)."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from deploy.nats_servers import NatsServer, free_port
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.client import Phone, PhoneConfig
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK
from tests.support import wait_until

pytestmark = pytest.mark.slow  # a phone streaming through a NATS outage


RECONNECT_WAIT_S = 0.1
OUTAGE_S = 7.0
"""70 reconnect attempts at 0.1 s: more than the 60 after which services used to give up."""
FPS = 10.0
RECOVERED_WITHIN_S = 5.0


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as response:
        return response.status


async def test_services_recover_from_a_long_nats_outage_by_themselves() -> None:
    port, region = free_port(), f"t{uuid.uuid4().hex[:8]}"
    server = NatsServer(port=port).start()
    worker = StylizerWorker(
        WorkerConfig(
            nats_url=server.url, region=region, worker_id="w", threads=1, nats_reconnect_wait_s=RECONNECT_WAIT_S
        )
    )
    gateway = Gateway(
        GatewayConfig(
            port=0, nats_url=server.url, region=region, ice_hosts=LOOPBACK, nats_reconnect_wait_s=RECONNECT_WAIT_S
        )
    )
    await worker.start()
    await gateway.start()
    frames = int((2.0 + OUTAGE_S + 6.0) * FPS)
    config = PhoneConfig(
        gateway_urls=(gateway.url,), frames=frames, size=(320, 180), fps=FPS, region=region, ice_hosts=LOOPBACK
    )
    phone = asyncio.create_task(Phone(config).run())
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.sleep(2.0)
            server.stop()
            await asyncio.sleep(OUTAGE_S)
            assert await _status(http, f"{gateway.url}/healthz") == 503  # unready: traffic goes elsewhere
            assert await _status(http, f"{gateway.url}/livez") == 200  # alive: nobody restarts it
            assert not worker.ready() and not worker.closed.is_set()
            server = NatsServer(port=port).start()

            async def recovered() -> bool:
                return worker.ready() and await _status(http, f"{gateway.url}/healthz") == 200

            await wait_until(recovered, RECOVERED_WITHIN_S, "the worker and the gateway recovered", poll_s=0.1)
        result = await asyncio.wait_for(phone, 60.0)
    finally:
        phone.cancel()
        await gateway.stop()
        await worker.stop()
        server.stop()
    recovered_from = int((2.0 + OUTAGE_S) * FPS)
    per_key = result.report["per_key"]
    assert any(k["ok"] for k in per_key if k["frame_id"] < 2 * FPS)
    assert any(k["ok"] for k in per_key if k["frame_id"] > recovered_from), "no key stylized after the outage"
    assert result.report["frames"]["output"] == frames
