"""streaming.nats_connect: connection events of a real client against a real nats-server that goes away and back."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prometheus_client import REGISTRY

from deploy.nats_servers import NatsServer
from streaming.nats_connect import connect_nats
from tests.support import wait_until

WAIT_S = 10.0


def _events(service: str, event: str) -> float:
    return REGISTRY.get_sample_value("mvs_nats_connection_events_total", {"service": service, "event": event}) or 0.0


def _connected(service: str) -> float | None:
    return REGISTRY.get_sample_value("mvs_nats_connected", {"service": service})


@pytest.mark.slow
async def test_events_are_counted_and_closed_cb_runs() -> None:
    service = f"s{uuid.uuid4().hex[:8]}"
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    server = NatsServer()
    server.__enter__()
    port = server.port  # bound by nats-server; the restart below reuses it
    try:
        nc = await connect_nats(server.url, "test-client", service=service, closed_cb=on_closed, reconnect_wait_s=1)
        assert _events(service, "connected") == 1 and _connected(service) == 1
    finally:
        server.__exit__(None, None, None)
    await wait_until(lambda: _events(service, "disconnected") >= 1, WAIT_S, "a disconnection counted")
    assert _connected(service) == 0
    with NatsServer(port=port):
        await wait_until(lambda: _events(service, "reconnected") >= 1, WAIT_S, "a reconnection counted")
        assert _connected(service) == 1
        await nc.close()
    assert closed.is_set() and _events(service, "closed") == 1 and _connected(service) == 0
