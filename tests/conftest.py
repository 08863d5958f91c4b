"""Shared fixtures: one real nats-server (JetStream, monitoring) for the session; real workers and
gateways per test, each test on its own region so that tests never see each other's traffic."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
import torch
from nats.aio.client import Client as NATS

from deploy.certs import CA_FILE, kept_ca
from deploy.nats_servers import NatsServer
from edge_worker.service import StylizerWorker, WorkerConfig
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK
from tests.browser_support import firefox_process
from tests.firefox_bidi import Firefox

# One intra-op thread: tests run real models beside real servers on 2 cores; more threads only contend.
torch.set_num_threads(1)

SLOW_S = 3.0
"""A test whose call takes longer than this even on a busy machine belongs under ``@pytest.mark.slow`` (``make
test-fast`` leaves those out: the marker goes on anything over ~0.5 s here); the run's summary names the ones that
are not marked."""
_unmarked_slow: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.duration > SLOW_S and "slow" not in report.keywords:
        _unmarked_slow[report.nodeid] = report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _unmarked_slow:
        terminalreporter.section(f"over {SLOW_S:g} s without the slow marker")
        for nodeid, seconds in sorted(_unmarked_slow.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"{seconds:6.1f} s  {nodeid}")


@pytest.fixture(scope="session")
def shared_nats_server() -> Iterator[NatsServer]:
    with NatsServer(monitor_port=0) as server:
        yield server


@pytest.fixture
def nats_server(request: pytest.FixtureRequest, shared_nats_server: NatsServer) -> Iterator[NatsServer]:
    """The session's server; one of the test's own under ``@pytest.mark.fresh_nats_server`` (for what is global on a
    server: the model store, the delta stream), its setup having made regions "eu" and "us"'s delta buckets."""
    if request.node.get_closest_marker("fresh_nats_server") is None:
        yield shared_nats_server
        return
    with NatsServer(regions=["eu", "us"]) as server:
        yield server


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    """A client of the test's ``nats_server``."""
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ``mvs local`` state directory with its kept CA, made before the test browsers start, which trust it (as
    a person installs it on a phone once)."""
    directory = tmp_path_factory.mktemp("mvs-state")
    kept_ca(directory)
    return directory


@pytest.fixture(scope="session")
def firefox(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Iterator[Firefox]:
    """One Firefox for every browser test (started at the first that asks for it: its start is the slow part)."""
    with firefox_process(tmp_path_factory.mktemp("firefox-profile"), state_dir / CA_FILE) as browser:
        yield browser


@pytest.fixture
def region() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def worker(nats_server: NatsServer, region: str) -> AsyncIterator[StylizerWorker]:
    w = StylizerWorker(WorkerConfig(nats_url=nats_server.url, region=region, worker_id="w-inproc", threads=1))
    await w.start()
    yield w
    await w.stop()


@pytest.fixture
async def gateway(nats_server: NatsServer, region: str) -> AsyncIterator[Gateway]:
    g = Gateway(GatewayConfig(port=0, nats_url=nats_server.url, region=region, ice_hosts=LOOPBACK))
    await g.start()
    yield g
    await g.stop()
