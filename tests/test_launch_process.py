"""deploy.launch.ServiceProcess with real services: ready on /healthz, stopped by SIGTERM with its exit status, a
start-up failure told at once with its log, and a hung service killed after its grace."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from deploy.launch import ServiceProcess, StartupError, http_answers
from deploy.nats_servers import NatsServer, free_port
from edge_worker.service import WorkerConfig
from streaming.cli import ServiceOptions
from streaming.gateway.server import GatewayConfig
from streaming.ice import LOOPBACK

pytestmark = pytest.mark.slow  # service processes started, awaited and killed


READY_S = 60.0


async def test_a_gateway_is_awaited_ready_and_stops_cleanly_on_sigterm(
    nats_server: NatsServer, region: str, tmp_path: Path
) -> None:
    port = free_port()
    config = GatewayConfig(nats_url=nats_server.url, region=region, port=port, ice_hosts=LOOPBACK)
    gateway = ServiceProcess(config, options=ServiceOptions(log_level="info"), log_path=tmp_path / "gateway.log")
    gateway.start()
    try:
        # Up, though not ready (no worker in the region): any answer of /healthz means the HTTP server serves.
        await gateway.wait_ready(http_answers(f"http://127.0.0.1:{port}/healthz", statuses=None), READY_S)
        assert gateway.returncode is None
    finally:
        status = await gateway.stop_async()
    assert status == 0 and "gateway" in (tmp_path / "gateway.log").read_text()


async def test_a_service_that_exits_during_start_up_is_told_at_once(tmp_path: Path) -> None:
    worker = ServiceProcess(WorkerConfig(model="no-such-model"), log_path=tmp_path / "worker.log").start()
    with pytest.raises(StartupError, match="exited during start-up"):
        await worker.wait_ready(http_answers("http://127.0.0.1:9/never"), READY_S)
    assert "unknown model 'no-such-model'" in (tmp_path / "worker.log").read_text()


async def test_a_hung_service_is_killed_after_its_grace(nats_server: NatsServer, region: str, tmp_path: Path) -> None:
    port = free_port()
    config = GatewayConfig(nats_url=nats_server.url, region=region, port=port, ice_hosts=LOOPBACK)
    gateway = ServiceProcess(config, log_path=tmp_path / "gateway.log", stop_grace_s=0.5).start()
    await gateway.wait_ready(http_answers(f"http://127.0.0.1:{port}/healthz", statuses=None), READY_S)
    gateway.send_signal(signal.SIGSTOP)  # hung: SIGTERM stays pending
    assert await gateway.stop_async() == -signal.SIGKILL
