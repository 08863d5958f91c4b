"""The per-role NATS users and permissions (deploy/nats_auth.py) on a real hub + leaf nodes.

The real flows run as the restricted users and the servers log no violation; forbidden actions are
refused by the server (a permissions violation on the client's connection, nothing delivered)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import nats
import numpy as np
import pytest
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from test_federated_edge import _serve_key_frames, _tiny_dnn, _until

from aggregator.service import Aggregator, AggregatorConfig
from deploy.nats import HUB_DOMAIN, NatsHubAndLeaves, NatsServer
from deploy.nats_auth import AGGREGATOR_USER, gateway_user, worker_user
from edge_worker.federated import FederatedConfig
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.client import Phone, PhoneConfig
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK
from streaming.model_store import ModelStore
from streaming.protocol import (
    FL_GLOBAL_SUBJECT,
    MODEL_BUCKET,
    MODEL_LATEST_BUCKET,
    ModelVersion,
    encode,
    fl_delta_subject,
    stylize_subject,
)

FRAMES = 20
MODEL_SIZED_BYTES = 4 * 1024 * 1024
"""About a version of the bundled model (3.3 MB zlib'd)."""
READ_TIMEOUT_S = 30.0
REFUSAL_WAIT_S = 5.0
SILENCE_S = 0.5
"""How long a subscriber waits to be sure a refused message was not delivered."""


@pytest.fixture
def cluster() -> Iterator[NatsHubAndLeaves]:
    """Hub + leaf nodes "eu" and "fl" with permissions on ("fl" is the federated tests' region)."""
    with NatsHubAndLeaves(["eu", "fl"], secure=True) as c:
        yield c


def _violations(cluster: NatsHubAndLeaves) -> list[str]:
    """Permission violations the servers logged."""
    servers: list[NatsServer] = [cluster.hub, *cluster.leaves.values()]
    return [
        line for s in servers for line in s.log_path.read_text(errors="replace").splitlines() if "Violation" in line
    ]


class Client:
    """A connection as one user that records the errors the server sends it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc = NATS()

    async def connect(self, url: str) -> Client:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        await self.nc.connect(url, error_cb=on_error, allow_reconnect=False)
        return self

    async def refused(self, what: str, subject: str) -> None:
        """Wait for the server's violation of ``what`` ("publish" or "subscription") on ``subject``."""
        expected = f'permissions violation for {what} to "{subject}"'.lower()  # nats-py lower-cases the error

        async def arrived() -> None:
            while not any(expected in e.lower() for e in self.errors):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(arrived(), REFUSAL_WAIT_S)
        assert self.nc.is_connected  # a violation is refused, the connection lives on

    async def close(self) -> None:
        await self.nc.close()


async def _client(cluster: NatsHubAndLeaves, server: NatsServer, user: str) -> Client:
    return await Client().connect(cluster.client_url(server, user))


async def test_gateway_to_worker_round_trip_as_restricted_users(cluster: NatsHubAndLeaves) -> None:
    leaf = cluster.leaves["eu"]
    worker = StylizerWorker(
        WorkerConfig(
            nats_url=cluster.client_url(leaf, worker_user("eu")),
            region="eu",
            worker_id="eu-1",
            threads=1,
            js_domain=HUB_DOMAIN,
        )
    )
    gateway = Gateway(
        GatewayConfig(
            port=0,
            nats_url=cluster.client_url(leaf, gateway_user("eu")),
            region="eu",
            js_domain=HUB_DOMAIN,
            ice_hosts=LOOPBACK,
        )
    )
    await worker.start()  # first on the site: creates the style bucket
    await gateway.start()
    try:
        config = PhoneConfig(
            gateway_urls=(gateway.url,), frames=FRAMES, size=(320, 180), region="eu", ice_hosts=LOOPBACK
        )
        report = (await Phone(config).run()).report
        keys = report["key_frames"]
        assert report["frames"]["output"] == FRAMES and keys["ok"] == keys["marked"] > 0, keys
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/healthz") as response:
            assert response.status == 200 and (await response.json())["workers"] == ["eu-1"]
    finally:
        await gateway.stop()
        await worker.stop()
    assert _violations(cluster) == []


async def test_federated_round_as_restricted_users(cluster: NatsHubAndLeaves, tmp_path: Path) -> None:
    """A worker on the "fl" leaf adopts v0, trains, sends its delta; the aggregator in the cloud publishes v1."""
    model = _tiny_dnn()
    initial = {name: value + 0.01 for name, value in model.learned_state().items()}
    aggregator = Aggregator(AggregatorConfig(nats_url=cluster.client_url(cluster.hub, AGGREGATOR_USER), min_updates=1))
    await aggregator.start(initial)
    rounds = asyncio.create_task(aggregator.run())
    leaf = cluster.leaves["fl"]
    worker = StylizerWorker(
        WorkerConfig(
            nats_url=cluster.client_url(leaf, worker_user("fl")),
            region="fl",
            worker_id="edge-1",
            threads=1,
            js_domain=HUB_DOMAIN,
            federated=FederatedConfig(buffer_dir=tmp_path / "buffer", idle_s=0.3, publish_every=4),
        ),
        stylizer=model,
    )
    # Stores the style and sends key frames (through the hub: the helper uses JetStream without a domain).
    phone_side = await nats.connect(cluster.client_url(cluster.hub, gateway_user("fl")))
    try:
        await worker.start()
        assert worker.learner is not None and worker.learner.base_version == 0
        await _serve_key_frames(phone_side, 4)
        await _until(lambda: worker.learner.base_version == 1, "worker never adopted v1")
        v1 = aggregator.current
        assert v1 is not None and aggregator.store is not None and v1.contributors == ["edge-1"]
        published = await aggregator.store.weights(v1)
        assert all(np.array_equal(model.learned_state()[k], v) for k, v in published.items())
    finally:
        rounds.cancel()
        await asyncio.gather(rounds, return_exceptions=True)
        await worker.stop()
        await aggregator.stop()
        await phone_side.close()
    assert _violations(cluster) == []


async def test_model_sized_reads_pass_flow_control(cluster: NatsHubAndLeaves) -> None:
    """Reading a model version (a few MB) makes the server ask for flow control ($JS.FC...): without
    leave to answer, the aggregator's read would stall for good."""
    blob = os.urandom(MODEL_SIZED_BYTES)
    aggregator = await _client(cluster, cluster.hub, AGGREGATOR_USER)
    worker = await _client(cluster, cluster.leaves["eu"], worker_user("eu"))
    try:
        store = await ModelStore.open(aggregator.nc.jetstream())
        await store.put_blob("global/v0", blob)
        assert await asyncio.wait_for(store.get_blob("global/v0"), READ_TIMEOUT_S) == blob
        edge = await ModelStore.open(worker.nc.jetstream(domain=HUB_DOMAIN))
        assert await asyncio.wait_for(edge.get_blob("global/v0"), READ_TIMEOUT_S) == blob
    finally:
        await aggregator.close()
        await worker.close()
    assert _violations(cluster) == [] and aggregator.errors == worker.errors == []


async def test_only_the_aggregator_announces_global_versions(cluster: NatsHubAndLeaves) -> None:
    listener = await _client(cluster, cluster.leaves["fl"], worker_user("fl"))
    forger = await _client(cluster, cluster.leaves["eu"], worker_user("eu"))
    aggregator = await _client(cluster, cluster.hub, AGGREGATOR_USER)
    try:
        heard = await listener.nc.subscribe(FL_GLOBAL_SUBJECT)
        await listener.nc.flush()
        await forger.nc.publish(FL_GLOBAL_SUBJECT, encode(ModelVersion(version=99, object_name="global/v99")))
        await forger.refused("publish", FL_GLOBAL_SUBJECT)
        with pytest.raises(NatsTimeoutError):
            await heard.next_msg(timeout=SILENCE_S)
        await aggregator.nc.publish(FL_GLOBAL_SUBJECT, b"v1")  # the control: the aggregator's gets through
        assert (await heard.next_msg(timeout=REFUSAL_WAIT_S)).data == b"v1"
    finally:
        for client in (listener, forger, aggregator):
            await client.close()


Action = Callable[[NATS], Awaitable[object]]


def _publish(subject: str) -> Action:
    async def act(nc: NATS) -> None:
        await nc.publish(subject, b"x")
        await nc.flush()

    return act


def _subscribe(subject: str, queue: str = "") -> Action:
    async def act(nc: NATS) -> None:
        await nc.subscribe(subject, queue=queue)
        await nc.flush()

    return act


def _stream_publish(subject: str) -> Action:
    """A JetStream publish: refused, so no stream ever acknowledges it."""

    async def act(nc: NATS) -> None:
        with pytest.raises(NatsTimeoutError):
            await nc.jetstream().publish(subject, b"x", timeout=1.0)

    return act


@pytest.mark.parametrize(
    ("user", "server", "action", "what", "subject"),
    [
        # A worker cannot move the model's "latest" pointer, delete the model store, or speak for another region.
        (
            "worker-eu",
            "eu",
            _publish(f"$KV.{MODEL_LATEST_BUCKET}.latest"),
            "publish",
            f"$KV.{MODEL_LATEST_BUCKET}.latest",
        ),
        (
            "worker-eu",
            "eu",
            _publish(f"$JS.hub.API.STREAM.DELETE.OBJ_{MODEL_BUCKET}"),
            "publish",
            f"$JS.hub.API.STREAM.DELETE.OBJ_{MODEL_BUCKET}",
        ),
        ("worker-eu", "eu", _publish(fl_delta_subject("fl")), "publish", fl_delta_subject("fl")),
        # ... nor read every frame of its region outside the queue group, nor another region's frames.
        ("worker-eu", "eu", _subscribe(stylize_subject("eu")), "subscription", stylize_subject("eu")),
        ("worker-eu", "eu", _subscribe(stylize_subject("fl"), "stylizers"), "subscription", stylize_subject("fl")),
        # A gateway cannot feed the delta stream, write the model KV, or listen to versions.
        ("gateway-eu", "eu", _stream_publish(fl_delta_subject("eu")), "publish", fl_delta_subject("eu")),
        (
            "gateway-eu",
            "eu",
            _publish(f"$KV.{MODEL_LATEST_BUCKET}.latest"),
            "publish",
            f"$KV.{MODEL_LATEST_BUCKET}.latest",
        ),
        ("gateway-eu", "eu", _subscribe(FL_GLOBAL_SUBJECT), "subscription", FL_GLOBAL_SUBJECT),
        ("gateway-eu", "eu", _publish(stylize_subject("fl")), "publish", stylize_subject("fl")),
        # The cloud aggregator never sees frames.
        ("aggregator", "hub", _publish(stylize_subject("eu")), "publish", stylize_subject("eu")),
        ("aggregator", "hub", _subscribe(stylize_subject("eu"), "stylizers"), "subscription", stylize_subject("eu")),
    ],
)
async def test_forbidden_actions_are_refused(
    cluster: NatsHubAndLeaves, user: str, server: str, action: Action, what: str, subject: str
) -> None:
    client = await _client(cluster, cluster.hub if server == "hub" else cluster.leaves[server], user)
    try:
        await action(client.nc)
        await client.refused(what, subject)
    finally:
        await client.close()


async def test_unknown_users_and_other_regions_users_cannot_log_in(cluster: NatsHubAndLeaves) -> None:
    """A leaf knows only its region's users; nobody gets in without a password."""
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(cluster.client_url(cluster.leaves["fl"], worker_user("eu")), allow_reconnect=False)
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(cluster.leaves["eu"].url, allow_reconnect=False)
