"""The aggregator's health endpoint (issue 14, item 8): ``/healthz`` is its readiness (started, NATS connected),
``/livez`` its liveness (not closed for good). During a NATS outage it reconnects by itself, forever: unready, not
dead, so the orchestrator does not restart it; it is ready again once NATS is back."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from aggregator.__main__ import run
from aggregator.service import AggregatorConfig
from deploy.nats_servers import NatsServer, free_port
from streaming.tensors import NamedArrays
from tests.support import wait_until

INITIAL: NamedArrays = {"dec.weight": np.full((3, 2), 100.0, np.float32)}
WAIT_S = 20.0


async def _status(http: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with http.get(url) as response:
            return response.status
    except aiohttp.ClientError:
        return None


async def _until(http: aiohttp.ClientSession, base: str, healthz: int, livez: int) -> None:
    async def seen() -> bool:
        return (await _status(http, f"{base}/healthz"), await _status(http, f"{base}/livez")) == (healthz, livez)

    await wait_until(seen, WAIT_S, f"/healthz {healthz} and /livez {livez}")


@pytest.mark.slow
async def test_aggregator_is_unready_not_dead_during_a_nats_outage(tmp_path: Path) -> None:
    nats_port, port = free_port(), free_port()
    store = tmp_path / "jetstream"
    server = NatsServer(port=nats_port, store_dir=store).start()
    config = AggregatorConfig(
        nats_url=server.url, metrics_port=port, durable="health", nats_reconnect_wait_s=0.1, min_updates=1
    )
    task = asyncio.create_task(run(config, INITIAL))
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
            await _until(http, base, healthz=200, livez=200)
            server.stop()  # NATS goes away: unready, still alive (reconnecting)
            await _until(http, base, healthz=503, livez=200)
            await asyncio.sleep(1.0)
            assert not task.done()
            server = NatsServer(port=nats_port, store_dir=store).start()
            await _until(http, base, healthz=200, livez=200)  # back without a restart
            async with http.get(f"{base}/metrics") as response:
                assert response.status == 200 and "mvs_aggregator" in await response.text()
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.stop()
