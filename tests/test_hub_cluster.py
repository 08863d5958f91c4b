"""A three-server hub (issue 26): real nats-server processes on loopback in one JetStream cluster, one killed with
SIGKILL mid-round, while a style is stored, and as the meta leader; then brought back. Nothing acknowledged is lost
or doubled, every version published loads with its digest, and with two servers of three down the aggregator says
so (``/healthz``, a log line, a metric) and recovers by itself.

The machine is small and shared: every wait is for an event (a version stored, a leader elected, a probe turning),
bounded by a generous timeout; a client's retry of a refused publish is what a worker does, not a test's sleep."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import aiohttp
import nats
import numpy as np
import pytest
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from aggregator.service import Aggregator, AggregatorConfig
from bench.chaos_hub import version_at_least
from deploy.local_deployment import build_parser, config_from_args
from deploy.nats_servers import HUB_DOMAIN, NatsHubAndLeaves, NatsServer, free_port
from deploy.regions import load_hub
from edge_worker.service import WorkerConfig
from edge_worker.service import run as run_worker
from streaming.buckets import BucketMissingError, deployment_stores, stream_name
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK
from streaming.model_store import DeltaStore, ModelStore, submit_delta
from streaming.protocol import FL_DELTA_STREAM, MODEL_BUCKET, STYLE_BUCKET, ModelVersion
from streaming.style_store import StyleStore
from streaming.tensors import NamedArrays
from tests.support import wait_until

pytestmark = pytest.mark.slow  # a three-server hub cluster per test


REGIONS = ["eu", "us"]
WAIT_S = 60.0
"""Patience for any event: generous, the machine is shared by many."""
RETRY_S = 0.2
"""A client's pause between attempts at a publish the cluster refused (no stream leader yet)."""
BASE = 100.0
INITIAL: NamedArrays = {"dec.weight": np.full((3, 2), BASE, np.float32), "dec.bias": np.zeros(2, np.float32)}
STYLES = f"OBJ_{STYLE_BUCKET}"
T = TypeVar("T")


@pytest.fixture
def cluster() -> Iterator[NatsHubAndLeaves]:
    with NatsHubAndLeaves(REGIONS, hub_servers=3) as c:
        yield c


@pytest.fixture
async def edge(cluster: NatsHubAndLeaves) -> AsyncIterator[NATS]:
    """A client of region eu's leaf node: what a worker uses (the hub's JetStream through its domain)."""
    nc = await nats.connect(cluster.leaves["eu"].url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    yield nc
    await nc.close()


async def _answered(call: Callable[[], Awaitable[T]]) -> T:
    """``call`` (a publish, a read) retried until JetStream answers: a stream electing a leader, or a client moving
    to another server, refuses or times out for a moment. A missing or damaged object is no such refusal."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return await call()
        except (NatsError, asyncio.TimeoutError, BucketMissingError):  # the last: no responder to a direct get
            assert time.monotonic() < deadline, "JetStream never answered"
            await asyncio.sleep(RETRY_S)


async def _leader(js: JetStreamContext, stream: str, cluster: NatsHubAndLeaves) -> NatsServer:
    """The hub server leading ``stream`` (a running one, once the stream has elected it)."""

    async def check() -> NatsServer | None:
        try:
            info = await js.stream_info(stream)
        except (NatsError, asyncio.TimeoutError):
            return None
        leader = info.cluster.leader if info.cluster else None
        return next((h for h in cluster.hubs if h.name == leader and h.pid is not None), None)

    return await wait_until(check, WAIT_S, f"a leader of {stream}")


def _delta(value: float) -> NamedArrays:
    return {"dec.weight": np.full((3, 2), value, np.float32), "dec.bias": np.full(2, value / 2, np.float32)}


def _value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_mvs_local_runs_three_hub_servers_and_the_demo_one() -> None:
    parse = build_parser().parse_args
    assert load_hub().servers == 3  # deploy/regions.toml
    assert config_from_args(parse(["--regions", "deploy/regions.toml"])).hub_servers == 3
    assert config_from_args(parse(["--region", "x"])).hub_servers == 3
    assert config_from_args(parse(["--region", "x", "--hub-servers", "1"])).hub_servers == 1


async def test_the_hub_is_one_jetstream_cluster_with_three_replicas_of_every_store(
    cluster: NatsHubAndLeaves, edge: NATS
) -> None:
    assert cluster.meta_leader() is not None
    for leaf in cluster.leaves.values():  # every leaf knows every hub server
        assert all(f":{hub.leaf_port}" in leaf.config() for hub in cluster.hubs)
    js = edge.jetstream(domain=HUB_DOMAIN)
    for store in deployment_stores(REGIONS):
        info = await js.stream_info(stream_name(store))
        assert info.config.num_replicas == 3 and info.cluster is not None
        assert len(info.cluster.replicas or []) == 2  # two followers beside the leader


async def test_a_hub_server_killed_mid_round_loses_no_acknowledged_delta(cluster: NatsHubAndLeaves, edge: NATS) -> None:
    """Twelve workers' deltas, the second half submitted while the delta stream's leader is killed (-9): the round
    closes with every acknowledged delta exactly once (the weighted mean says so), while the server is down; back
    up, it catches up and the version loads with its digest from the restarted server too."""
    workers = [f"eu-{i}" for i in range(12)]
    aggregator = Aggregator(
        AggregatorConfig(
            nats_url=cluster.hub_url("aggregator"),
            min_updates=len(workers),
            durable=f"a{uuid.uuid4().hex[:6]}",
            ack_wait_s=1.0,
            nats_reconnect_wait_s=0.1,
        )
    )
    await aggregator.start(INITIAL)
    rounds = asyncio.create_task(aggregator.run())
    js = edge.jetstream(domain=HUB_DOMAIN)
    deltas = DeltaStore(js, "eu")

    async def submit(i: int) -> None:
        await _answered(
            lambda: submit_delta(js, deltas, worker_id=workers[i], base_version=0, samples=i + 1, delta=_delta(i))
        )

    try:
        for i in range(6):
            await submit(i)
        victim = await _leader(js, FL_DELTA_STREAM, cluster)
        in_flight = [asyncio.create_task(submit(i)) for i in range(6, 12)]
        victim.kill()
        await asyncio.gather(*in_flight)
        store = await ModelStore.open(js)
        meta = await wait_until(lambda: version_at_least(store, 1), WAIT_S, "version 1 with one server down")
        assert victim.pid is None
        victim.start()
        cluster.wait_for_meta_leader(WAIT_S)
    finally:
        rounds.cancel()
        await asyncio.gather(rounds, return_exceptions=True)
        await aggregator.stop()
    assert sorted(meta.contributors) == sorted(workers) and meta.samples == sum(range(1, 13))
    expected = sum((i + 1) * i for i in range(12)) / sum(range(1, 13))  # each delta weighted by its samples, once
    assert np.allclose((await _answered(lambda: store.weights(meta)))["dec.weight"], BASE + expected)
    for stream in (FL_DELTA_STREAM, f"OBJ_{MODEL_BUCKET}"):  # the restarted server's replicas caught up
        await wait_until(
            lambda s=stream: _caught_up(js, s, victim), WAIT_S, f"{victim.name}'s replica of {stream} current"
        )


async def _caught_up(js: JetStreamContext, stream: str, server: NatsServer) -> bool | None:
    """True once ``server`` leads ``stream`` or follows it as a current replica."""
    try:
        info = await js.stream_info(stream)
    except (NatsError, asyncio.TimeoutError):
        return None
    if info.cluster is None:
        return None
    if info.cluster.leader == server.name:
        return True
    return True if any(p.name == server.name and p.current for p in info.cluster.replicas or []) else None


async def test_a_style_stored_while_its_leader_is_killed_loads_with_its_digest(
    cluster: NatsHubAndLeaves, edge: NATS
) -> None:
    """A phone's new style (1 MB: eight chunks) stored through the edge while the style bucket's leader is killed
    mid-upload: the store either acknowledges it or refuses and the retry stores it; then it reads back whole, and
    another new style is stored and read while the server is down."""
    js = edge.jetstream(domain=HUB_DOMAIN)
    styles = await StyleStore.open(js)
    first, second = (np.random.default_rng(seed).bytes(1 << 20) for seed in (1, 2))
    victim = await _leader(js, STYLES, cluster)
    upload = asyncio.create_task(_answered(lambda: styles.put(first)))
    await wait_until(lambda: _stored_any(js), WAIT_S, "a chunk of the style stored")
    victim.kill()
    style_id = await upload
    assert hashlib.sha256(await _answered(lambda: styles.get(style_id))).digest() == hashlib.sha256(first).digest()
    other = await _answered(lambda: styles.put(second))  # a new session's new style, one server down
    assert await _answered(lambda: styles.get(other)) == second
    victim.start()
    cluster.wait_for_meta_leader(WAIT_S)
    await wait_until(lambda: _caught_up(js, STYLES, victim), WAIT_S, f"{victim.name}'s replica of the styles current")
    assert (
        await _answered(lambda: styles.get(style_id)) == first and await _answered(lambda: styles.get(other)) == second
    )


async def _stored_any(js: JetStreamContext) -> bool | None:
    info = await js.stream_info(STYLES)
    return True if info.state.messages > 0 else None


async def test_the_meta_leader_killed_a_new_one_serves_and_two_down_is_said(
    cluster: NatsHubAndLeaves, edge: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    """Kill the JetStream meta leader: another is elected and rounds go on. Then a second server: no quorum, the
    aggregator turns unready (probe, log, metric) but stays alive; both back, it is ready again by itself and the
    next round publishes."""
    aggregator = Aggregator(
        AggregatorConfig(
            nats_url=cluster.hub_url("aggregator"),
            min_updates=1,
            durable=f"a{uuid.uuid4().hex[:6]}",
            nats_reconnect_wait_s=0.1,
        )
    )
    await aggregator.start(INITIAL)
    rounds = asyncio.create_task(aggregator.run())
    js = edge.jetstream(domain=HUB_DOMAIN)
    deltas = DeltaStore(js, "eu")
    store = await ModelStore.open(js)

    async def round_(version: int) -> ModelVersion:
        worker = f"eu-{version}"
        await _answered(
            lambda: submit_delta(js, deltas, worker_id=worker, base_version=version - 1, samples=1, delta=_delta(1.0))
        )
        return await wait_until(lambda: version_at_least(store, version), WAIT_S, f"version {version}")

    try:
        leader = cluster.hubs[cluster.wait_for_meta_leader(WAIT_S)]
        leader.kill()
        assert cluster.hubs[cluster.wait_for_meta_leader(WAIT_S)] is not leader
        await round_(1)
        second = next(
            h for h in cluster.hubs if h.pid is not None and h is not cluster.hubs[cluster.meta_leader() or 0]
        )
        second.kill()
        await wait_until(lambda: _no_jetstream(aggregator), WAIT_S, "the aggregator noticing two servers of three down")
        assert not aggregator.ready() and aggregator.live()  # unready (probe), alive: nobody restarts it
        assert _value("mvs_aggregator_jetstream_available") == 0
        assert any(r.getMessage() == "jetstream unavailable" and r.levelname == "WARNING" for r in caplog.records)
        leader.start()
        second.start()
        cluster.wait_for_meta_leader(WAIT_S)
        await wait_until(lambda: _ready(aggregator), WAIT_S, "the aggregator ready again")
        assert _value("mvs_aggregator_jetstream_available") == 1
        meta = await round_(2)
    finally:
        rounds.cancel()
        await asyncio.gather(rounds, return_exceptions=True)
        await aggregator.stop()
    assert (await _answered(lambda: store.weights(meta)))["dec.weight"].shape == (3, 2)  # loads, digest checked


async def _no_jetstream(aggregator: Aggregator) -> bool | None:
    return True if not aggregator.jetstream_available else None


async def _ready(aggregator: Aggregator) -> bool | None:
    return True if aggregator.ready() else None


async def test_two_hub_servers_down_gateways_and_workers_say_so_and_recover(
    cluster: NatsHubAndLeaves, caplog: pytest.LogCaptureFixture
) -> None:
    """Two of three hub servers killed: a region's gateway and worker (on its leaf node, which stays up) say JetStream
    is unavailable (a ``jetstream`` field in ``/healthz``, the ``mvs_jetstream_available`` gauge, a warning) while
    staying alive and, the gateway, ready (the worker still answers); both servers back, they say so by themselves."""
    caplog.set_level(logging.INFO, logger="streaming.jetstream_health")
    leaf = cluster.leaves["eu"].url
    worker_port = free_port()
    worker_config = WorkerConfig(
        nats_url=leaf, region="eu", worker_id="eu-w", js_domain=HUB_DOMAIN, metrics_port=worker_port, threads=1
    )
    worker = asyncio.create_task(run_worker(worker_config))
    gateway = Gateway(GatewayConfig(port=0, nats_url=leaf, region="eu", js_domain=HUB_DOMAIN, ice_hosts=LOOPBACK))
    await gateway.start()
    urls = {"gateway": gateway.url, "worker": f"http://127.0.0.1:{worker_port}"}
    try:
        async with aiohttp.ClientSession() as http:
            await wait_until(
                lambda: _health(http, urls, jetstream=True), WAIT_S, "gateway and worker up, JetStream answering"
            )
            down = [h for h in cluster.hubs if h is not cluster.hubs[cluster.wait_for_meta_leader(WAIT_S)]]
            for hub in down:
                hub.kill()
            health = await wait_until(
                lambda: _health(http, urls, jetstream=False), WAIT_S, "both saying JetStream is down"
            )
            assert health["gateway"][0] == 200 and health["gateway"][1]["workers"] == ["eu-w"]  # still takes phones
            for service, url in urls.items():
                assert await _gauge(http, url, service) == 0
                async with http.get(f"{url}/livez") as response:
                    assert response.status == 200  # alive: no orchestrator restarts it
            warned = {r.service for r in caplog.records if r.getMessage() == "jetstream unavailable"}  # type: ignore[attr-defined]
            assert warned == {"gateway", "worker"}
            for hub in down:
                hub.start()
            cluster.wait_for_meta_leader(WAIT_S)
            await wait_until(lambda: _health(http, urls, jetstream=True), WAIT_S, "both saying JetStream is back")
            for service, url in urls.items():
                assert await _gauge(http, url, service) == 1
                assert await _series(http, url, "mvs_asyncio_tasks ") >= 1  # what bench.soak watches for leaks
    finally:
        await gateway.stop()
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    back = {r.service for r in caplog.records if r.getMessage() == "jetstream available again"}  # type: ignore[attr-defined]
    assert back == {"gateway", "worker"}


async def _health(
    http: aiohttp.ClientSession, urls: dict[str, str], jetstream: bool
) -> dict[str, tuple[int, dict[str, object]]] | None:
    """Each service's /healthz (status, body) once every one says ``jetstream`` is ``jetstream``."""
    found = {}
    for service, url in urls.items():
        try:
            async with http.get(f"{url}/healthz") as response:
                found[service] = (response.status, await response.json())
        except aiohttp.ClientError:
            return None  # the worker's endpoint is not up yet
        if found[service][1].get("jetstream") is not jetstream:
            return None
    return found


async def _gauge(http: aiohttp.ClientSession, url: str, service: str) -> float:
    return await _series(http, url, f'mvs_jetstream_available{{region="eu",service="{service}"}} ')


async def _series(http: aiohttp.ClientSession, url: str, series: str) -> float:
    """The value of the series (its name and labels, then a space) at ``url``'s /metrics."""
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    return float(next(line for line in text.splitlines() if line.startswith(series)).split()[1])
