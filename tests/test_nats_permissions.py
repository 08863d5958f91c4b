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
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from test_federated_edge import _serve_key_frames, _tiny_dnn, _until

from aggregator.service import Aggregator, AggregatorConfig
from deploy.nats import HUB_DOMAIN, NatsHubAndLeaves, NatsServer
from deploy.nats_auth import AGGREGATOR_USER, gateway_user, worker_user
from edge_worker.federated import FederatedConfig
from edge_worker.retrain import RetrainableStylizer
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.client import Phone, PhoneConfig
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK
from streaming.model_store import ModelStore
from streaming.nats_connect import inbox_prefix, url_user
from streaming.protocol import (
    FL_GLOBAL_SUBJECT,
    MODEL_BUCKET,
    MODEL_LATEST_BUCKET,
    STYLIZE_QUEUE_GROUP,
    ModelVersion,
    delta_bucket,
    encode,
    fl_delta_subject,
    stylize_subject,
)
from streaming.tensors import encode_tensors

FRAMES = 20
KEY_FRAMES = 12
GLOBAL_V0_META = f"$O.{MODEL_BUCKET}.M.Z2xvYmFsL3Yw"
"""The metadata subject of object ``global/v0`` (its name in URL-safe base64)."""
WEIGHTS = {"dec.weight": np.ones((3, 2), np.float32), "dec.bias": np.zeros(2, np.float32)}
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

        await self.nc.connect(url, error_cb=on_error, allow_reconnect=False, inbox_prefix=inbox_prefix(url_user(url)))
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


async def _user_connection(url: str) -> NATS:
    """A plain connection as the user in ``url``, replies on that user's inbox prefix (as the services do)."""
    return await nats.connect(url, inbox_prefix=inbox_prefix(url_user(url)))


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
    phone_side = await _user_connection(cluster.client_url(cluster.hub, gateway_user("fl")))
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
        edge = await ModelStore.open(worker.nc.jetstream(domain=HUB_DOMAIN), create=False)
        assert await asyncio.wait_for(edge.get_blob("global/v0"), READ_TIMEOUT_S) == blob
    finally:
        await aggregator.close()
        await worker.close()
    assert _violations(cluster) == [] and aggregator.errors == worker.errors == []


async def test_a_worker_cannot_write_a_global_version(cluster: NatsHubAndLeaves) -> None:
    """Issue 14: with a worker's credentials, ``put("global/v0")`` replaced the global model. Now the server refuses
    the worker's chunks (the chunk subject is ``$O.mvs-models.C.<random nuid>``) and v0 reads back intact."""
    aggregator = await _client(cluster, cluster.hub, AGGREGATOR_USER)
    worker = await _client(cluster, cluster.leaves["eu"], worker_user("eu"))
    try:
        store = await ModelStore.open(aggregator.nc.jetstream())
        v0 = await store.publish(WEIGHTS, ModelVersion(version=0, object_name=""))
        edge = await ModelStore.open(worker.nc.jetstream(domain=HUB_DOMAIN, timeout=1.0), create=False)
        with pytest.raises(NatsError):
            await edge.put_blob(v0.object_name, b"140 bytes of somebody else's model")
        refused = f'permissions violation for publish to "$o.{MODEL_BUCKET}.c.'
        assert any(refused in error.lower() for error in worker.errors), worker.errors
        weights = await store.weights(v0)  # its digest still matches
        assert all(np.array_equal(weights[k], WEIGHTS[k]) for k in WEIGHTS)
    finally:
        await aggregator.close()
        await worker.close()


async def test_a_tampered_version_is_refused_and_the_worker_keeps_serving(
    cluster: NatsHubAndLeaves, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """v1's weights are replaced after its metadata was written (a corrupt store, or a writer that got past NATS):
    a serving worker refuses v1 and keeps serving v0; a starting worker falls back to v0, the newest good one."""
    model = _tiny_dnn()
    v0_weights = {name: value + 0.01 for name, value in model.learned_state().items()}
    aggregator = await _client(cluster, cluster.hub, AGGREGATOR_USER)
    store = await ModelStore.open(aggregator.nc.jetstream())
    await store.publish(v0_weights, ModelVersion(version=0, object_name=""))
    leaf = cluster.leaves["fl"]

    def federated_worker(worker_id: str, stylizer: RetrainableStylizer) -> StylizerWorker:
        return StylizerWorker(
            WorkerConfig(
                nats_url=cluster.client_url(leaf, worker_user("fl")),
                region="fl",
                worker_id=worker_id,
                threads=1,
                js_domain=HUB_DOMAIN,
                federated=FederatedConfig(buffer_dir=tmp_path / worker_id, idle_s=60.0, publish_every=10**6),
            ),
            stylizer=stylizer,
        )

    serving = federated_worker("edge-1", model)
    phone_side = await _user_connection(cluster.client_url(cluster.hub, gateway_user("fl")))
    starting = None
    try:
        await serving.start()
        assert serving.learner is not None and serving.learner.base_version == 0
        v1 = await store.publish(model.learned_state(), ModelVersion(version=1, object_name="", parent=0))
        tampered = {name: value + 1.0 for name, value in v0_weights.items()}
        await store.put_blob(v1.object_name, encode_tensors(tampered))
        await aggregator.nc.publish(FL_GLOBAL_SUBJECT, encode(v1))
        await _until(lambda: "global model version refused" in caplog.text, "the tampered version was not refused")
        why = [str(getattr(r, "error", "")) for r in caplog.records if r.getMessage().startswith("global model")]
        assert "model version 1 ('global/v1') is refused" in why[0] and "the version's metadata says" in why[0], why
        assert serving.learner.base_version == 0
        assert all(np.array_equal(model.learned_state()[k], v0_weights[k]) for k in v0_weights)
        await _serve_key_frames(phone_side, 2)  # still serving
        starting = federated_worker("edge-2", _tiny_dnn())
        await starting.start()
        assert starting.learner is not None and starting.learner.base_version == 0
    finally:
        if starting is not None:
            await starting.stop()
        await serving.stop()
        await aggregator.close()
        await phone_side.close()


async def test_a_region_cannot_read_another_regions_replies() -> None:
    """Issue 14: subscribed to ``_INBOX.>`` as worker-us on the us leaf, an attacker received eu's stylized key frames.
    Now every user's replies come back on its own prefix and each may subscribe to that prefix only."""
    with NatsHubAndLeaves(["eu", "us"], secure=True) as c:
        worker = await _client(c, c.leaves["eu"], worker_user("eu"))
        gateway = await _client(c, c.leaves["eu"], gateway_user("eu"))
        sniffer = await _client(c, c.leaves["us"], worker_user("us"))
        sniffed: list[str] = []

        async def stylize(msg: Msg) -> None:
            await msg.respond(b"stylized " + msg.data)

        async def sniff(msg: Msg) -> None:
            sniffed.append(msg.subject)

        try:
            await worker.nc.subscribe(stylize_subject("eu"), queue=STYLIZE_QUEUE_GROUP, cb=stylize)
            await worker.nc.flush()
            for subject in (">", "_INBOX.>", f"{inbox_prefix(gateway_user('eu'))}.>"):
                await sniffer.nc.subscribe(subject, cb=sniff)
                await sniffer.nc.flush()
                await sniffer.refused("subscription", subject)
            for i in range(KEY_FRAMES):
                reply = await gateway.nc.request(stylize_subject("eu"), b"key %d" % i, timeout=REFUSAL_WAIT_S)
                assert reply.data == b"stylized key %d" % i
                assert reply.subject.startswith(inbox_prefix(gateway_user("eu")) + ".")
            await asyncio.sleep(SILENCE_S)
        finally:
            for client in (worker, gateway, sniffer):
                await client.close()
        assert sniffed == [] and gateway.errors == worker.errors == []


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
        # ... nor write a global version's metadata, create the model bucket, or write another region's deltas.
        ("worker-eu", "eu", _publish(GLOBAL_V0_META), "publish", GLOBAL_V0_META),
        (
            "worker-eu",
            "eu",
            _publish(f"$JS.hub.API.STREAM.CREATE.OBJ_{MODEL_BUCKET}"),
            "publish",
            f"$JS.hub.API.STREAM.CREATE.OBJ_{MODEL_BUCKET}",
        ),
        ("worker-eu", "eu", _publish(f"$O.{delta_bucket('fl')}.C.x"), "publish", f"$O.{delta_bucket('fl')}.C.x"),
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
