"""The per-role NATS accounts, users and permissions (deploy/nats_auth.py) on a real hub + leaf nodes running the
generated configs.

The real flows run as the restricted users and the servers log no violation; forbidden actions are
refused by the server (a permissions violation on the client's connection, nothing delivered), and what a region may
do cannot reach another region (issue 22: streams, consumers and replies aimed at another region's subjects; a
worker sending deltas as another worker or as two)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import nats
import numpy as np
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from aggregator.service import Aggregator, AggregatorConfig
from deploy.faults import restricted_gateway, restricted_worker
from deploy.nats_auth import AGGREGATOR_USER, gateway_user, worker_id, worker_user
from deploy.nats_servers import HUB_DOMAIN, NatsHubAndLeaves, NatsServer
from edge_worker.federated import FederatedConfig
from edge_worker.retrain import RetrainableStylizer
from edge_worker.service import StylizerWorker
from mobile_sim.client import Phone, PhoneConfig
from streaming.buckets import Bucket, chunk_subject, object_stream
from streaming.gateway.server import Gateway
from streaming.ice import LOOPBACK
from streaming.model_store import DeltaStore, ModelStore, submit_delta
from streaming.nats_connect import inbox_prefix, url_user
from streaming.protocol import (
    FL_GLOBAL_SUBJECT,
    MODEL_BUCKET,
    MODEL_LATEST_BUCKET,
    STYLE_BUCKET,
    STYLIZE_QUEUE_GROUP,
    DeltaRef,
    ModelVersion,
    delta_bucket,
    encode,
    fl_delta_subject,
    fl_region_delta_subjects,
    stylize_subject,
)
from streaming.style_store import StyleStore
from streaming.tensors import encode_tensors
from tests.support import TRAINING_WAIT_S, serve_key_frames, tiny_retrainable_dnn, wait_until

pytestmark = pytest.mark.slow  # a secured hub and leaf nodes per test


FRAMES = 20
KEY_FRAMES = 12
GLOBAL_V0_META = f"$O.{MODEL_BUCKET}.M.Z2xvYmFsL3Yw"
DELTA_META_EU = f"$O.{delta_bucket('eu')}.M.>"
DELTA_READS_EU = [
    f"$JS.{HUB_DOMAIN}.API.{call}.OBJ_{delta_bucket('eu')}" for call in ("DIRECT.GET", "STREAM.MSG.GET", "STREAM.INFO")
]
"""The metadata subject of object ``global/v0`` (its name in URL-safe base64)."""
WEIGHTS = {"dec.weight": np.ones((3, 2), np.float32), "dec.bias": np.zeros(2, np.float32)}
MODEL_SIZED_BYTES = 4 * 1024 * 1024
"""About a version of the bundled model (3.3 MB zlib'd)."""
READ_TIMEOUT_S = 30.0
REFUSAL_WAIT_S = 5.0
SILENCE_S = 0.5
"""How long a subscriber waits to be sure a refused message was not delivered."""


EU_0, EU_1, FL_0, FL_1 = worker_id("eu", 0), worker_id("eu", 1), worker_id("fl", 0), worker_id("fl", 1)


@pytest.fixture
def cluster() -> Iterator[NatsHubAndLeaves]:
    """Hub + leaf nodes "eu" and "fl" with permissions on ("fl" is the federated tests' region), two workers each."""
    with NatsHubAndLeaves(["eu", "fl"], secure=True, workers={"eu": 2, "fl": 2}) as c:
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

    async def refused(self, what: str, subject: str, prefix: bool = False) -> None:
        """Wait for the server's violation of ``what`` ("publish" or "subscription") on ``subject`` (or, with
        ``prefix``, on a subject starting with it)."""
        expected = f'permissions violation for {what} to "{subject}'.lower()  # nats-py lower-cases the error
        expected += "" if prefix else '"'

        def arrived() -> bool:
            return any(expected in e.lower() for e in self.errors)

        await wait_until(arrived, REFUSAL_WAIT_S, f"the server refusing {what} to {subject}", poll_s=0.02)
        assert self.nc.is_connected  # a violation is refused, the connection lives on

    async def close(self) -> None:
        await self.nc.close()


async def _user_connection(url: str) -> NATS:
    """A plain connection as the user in ``url``, replies on that user's inbox prefix (as the services do)."""
    return await nats.connect(url, inbox_prefix=inbox_prefix(url_user(url)))


async def _client(cluster: NatsHubAndLeaves, server: NatsServer, user: str) -> Client:
    return await Client().connect(cluster.client_url(server, user))


async def test_gateway_to_worker_round_trip_as_restricted_users(cluster: NatsHubAndLeaves) -> None:
    worker = StylizerWorker(restricted_worker(cluster, "eu"))
    gateway = Gateway(restricted_gateway(cluster, "eu"))
    await worker.start()
    await gateway.start()
    try:
        config = PhoneConfig(
            gateway_urls=(gateway.url,), frames=FRAMES, size=(320, 180), region="eu", ice_hosts=LOOPBACK
        )
        report = (await Phone(config).run()).report
        keys = report["key_frames"]
        assert report["frames"]["output"] == FRAMES and keys["ok"] == keys["marked"] > 0, keys
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/healthz") as response:
            assert response.status == 200 and (await response.json())["workers"] == [EU_0]
    finally:
        await gateway.stop()
        await worker.stop()
    assert _violations(cluster) == []


async def test_federated_round_as_restricted_users(cluster: NatsHubAndLeaves, tmp_path: Path) -> None:
    """A worker on the "fl" leaf adopts v0, trains, sends its delta; the aggregator in the cloud publishes v1."""
    model = tiny_retrainable_dnn()
    initial = {name: value + 0.01 for name, value in model.learned_state().items()}
    aggregator = Aggregator(AggregatorConfig(nats_url=cluster.client_url(cluster.hub, AGGREGATOR_USER), min_updates=1))
    await aggregator.start(initial)
    rounds = asyncio.create_task(aggregator.run())
    worker = StylizerWorker(
        restricted_worker(
            cluster, "fl", federated=FederatedConfig(buffer_dir=tmp_path / "buffer", idle_s=0.3, publish_every=4)
        ),
        stylizer=model,
    )
    # Stores the style and sends key frames (through the hub: the helper uses JetStream without a domain).
    phone_side = await _user_connection(cluster.client_url(cluster.hub, gateway_user("fl")))
    try:
        await worker.start()
        assert worker.learner is not None and worker.learner.base_version == 0
        await serve_key_frames(phone_side, 4)
        await wait_until(lambda: worker.learner.base_version == 1, TRAINING_WAIT_S, "the worker adopting v1")
        v1 = aggregator.current
        assert v1 is not None and aggregator.store is not None and v1.contributors == [FL_0]
        published = await aggregator.store.weights(v1)
        assert all(np.array_equal(model.learned_state()[k], v) for k, v in published.items())
    finally:
        rounds.cancel()
        await asyncio.gather(rounds, return_exceptions=True)
        await worker.stop()
        await aggregator.stop()
        await phone_side.close()
    assert _violations(cluster) == []


async def test_model_sized_reads_pass(cluster: NatsHubAndLeaves) -> None:
    """A model version (a few MB) reads back whole, by direct gets of its chunks, for the aggregator and for a worker
    on a leaf (through its region account's imports)."""
    blob = os.urandom(MODEL_SIZED_BYTES)
    aggregator = await _client(cluster, cluster.hub, AGGREGATOR_USER)
    worker = await _client(cluster, cluster.leaves["eu"], worker_user(EU_0))
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


async def test_a_worker_cannot_write_a_global_version(cluster: NatsHubAndLeaves) -> None:
    """Issue 14: with a worker's credentials, ``put("global/v0")`` replaced the global model. Now the server refuses
    the worker's chunks (the chunk subject is ``$O.mvs-models.C.<random nuid>``) and v0 reads back intact."""
    aggregator = await _client(cluster, cluster.hub, AGGREGATOR_USER)
    worker = await _client(cluster, cluster.leaves["eu"], worker_user(EU_0))
    try:
        store = await ModelStore.open(aggregator.nc.jetstream())
        v0 = await store.publish(WEIGHTS, ModelVersion(version=0, object_name=""))
        edge = await ModelStore.open(worker.nc.jetstream(domain=HUB_DOMAIN, timeout=1.0))
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
    model = tiny_retrainable_dnn()
    v0_weights = {name: value + 0.01 for name, value in model.learned_state().items()}
    aggregator = await _client(cluster, cluster.hub, AGGREGATOR_USER)
    store = await ModelStore.open(aggregator.nc.jetstream())
    await store.publish(v0_weights, ModelVersion(version=0, object_name=""))

    def federated_worker(index: int, stylizer: RetrainableStylizer) -> StylizerWorker:
        buffer = FederatedConfig(buffer_dir=tmp_path / str(index), idle_s=60.0, publish_every=10**6)
        return StylizerWorker(restricted_worker(cluster, "fl", index, federated=buffer), stylizer=stylizer)

    serving = federated_worker(0, model)
    phone_side = await _user_connection(cluster.client_url(cluster.hub, gateway_user("fl")))
    starting = None
    try:
        await serving.start()
        assert serving.learner is not None and serving.learner.base_version == 0
        v1 = await store.publish(model.learned_state(), ModelVersion(version=1, object_name="", parent=0))
        tampered = {name: value + 1.0 for name, value in v0_weights.items()}
        await store.put_blob(v1.object_name, encode_tensors(tampered))
        await aggregator.nc.publish(FL_GLOBAL_SUBJECT, encode(v1))
        await wait_until(
            lambda: "global model version refused" in caplog.text, TRAINING_WAIT_S, "the tampered version refused"
        )
        why = [str(getattr(r, "error", "")) for r in caplog.records if r.getMessage().startswith("global model")]
        assert "model version 1 ('global/v1') is refused" in why[0] and "the version's metadata says" in why[0], why
        assert serving.learner.base_version == 0
        assert all(np.array_equal(model.learned_state()[k], v0_weights[k]) for k in v0_weights)
        await serve_key_frames(phone_side, 2)  # still serving
        starting = federated_worker(1, tiny_retrainable_dnn())
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
        worker = await _client(c, c.leaves["eu"], worker_user(worker_id("eu", 0)))
        gateway = await _client(c, c.leaves["eu"], gateway_user("eu"))
        sniffer = await _client(c, c.leaves["us"], worker_user(worker_id("us", 0)))
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
    listener = await _client(cluster, cluster.leaves["fl"], worker_user(FL_0))
    forger = await _client(cluster, cluster.leaves["eu"], worker_user(EU_0))
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
            worker_user(EU_0),
            "eu",
            _publish(f"$KV.{MODEL_LATEST_BUCKET}.latest"),
            "publish",
            f"$KV.{MODEL_LATEST_BUCKET}.latest",
        ),
        (
            worker_user(EU_0),
            "eu",
            _publish(f"$JS.hub.API.STREAM.DELETE.OBJ_{MODEL_BUCKET}"),
            "publish",
            f"$JS.hub.API.STREAM.DELETE.OBJ_{MODEL_BUCKET}",
        ),
        (worker_user(EU_0), "eu", _publish(fl_delta_subject("fl", FL_0)), "publish", fl_delta_subject("fl", FL_0)),
        # ... nor write a global version's metadata, create the model bucket, or write another region's deltas.
        (worker_user(EU_0), "eu", _publish(GLOBAL_V0_META), "publish", GLOBAL_V0_META),
        (
            worker_user(EU_0),
            "eu",
            _publish(f"$JS.hub.API.STREAM.CREATE.OBJ_{MODEL_BUCKET}"),
            "publish",
            f"$JS.hub.API.STREAM.CREATE.OBJ_{MODEL_BUCKET}",
        ),
        (worker_user(EU_0), "eu", _publish(f"$O.{delta_bucket('fl')}.C.x"), "publish", f"$O.{delta_bucket('fl')}.C.x"),
        # ... nor learn the names of its region's other workers' delta objects (a blob can be overwritten only by
        # name): not their references, not the bucket's metadata, not the bucket's stream.
        (worker_user(EU_1), "eu", _subscribe(fl_region_delta_subjects("eu")), "subscription", "mvs.fl.delta.eu.*"),
        (worker_user(EU_1), "eu", _subscribe(DELTA_META_EU), "subscription", DELTA_META_EU),
        *((worker_user(EU_1), "eu", _publish(read), "publish", read) for read in DELTA_READS_EU),
        # ... nor read every frame of its region outside the queue group, nor another region's frames.
        (worker_user(EU_0), "eu", _subscribe(stylize_subject("eu")), "subscription", stylize_subject("eu")),
        (
            worker_user(EU_0),
            "eu",
            _subscribe(stylize_subject("fl"), "stylizers"),
            "subscription",
            stylize_subject("fl"),
        ),
        # A gateway cannot feed the delta stream, write the model KV, or listen to versions.
        ("gateway-eu", "eu", _stream_publish(fl_delta_subject("eu", EU_0)), "publish", fl_delta_subject("eu", EU_0)),
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
        await nats.connect(cluster.client_url(cluster.leaves["fl"], worker_user(EU_0)), allow_reconnect=False)
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(cluster.leaves["eu"].url, allow_reconnect=False)


def _api(call: str) -> str:
    """A JetStream API subject as a client on a leaf node names it (through the hub's domain)."""
    return f"$JS.{HUB_DOMAIN}.API.{call}"


async def _quiet(sub: Subscription) -> list[Msg]:
    """What ``sub`` received within :data:`SILENCE_S` (a refused or misdirected message would be there by then)."""
    received = []
    with contextlib.suppress(NatsTimeoutError):
        while True:
            received.append(await sub.next_msg(timeout=SILENCE_S))
    return received


@pytest.mark.parametrize(
    ("user", "bucket"),
    [(worker_user(EU_0), delta_bucket("eu")), (gateway_user("eu"), STYLE_BUCKET), (worker_user(EU_0), "capture")],
)
async def test_services_cannot_create_a_stream_over_another_regions_subjects(
    cluster: NatsHubAndLeaves, user: str, bucket: str
) -> None:
    """Issue 22 (2a): a worker could create its own delta bucket's stream, with the extra subject ``mvs.us.stylize``:
    it captured the us region's key frames and its ack answered the us gateway first. Now no worker or gateway may
    create a stream (the setup made every bucket), and a stream could not see another region's subjects anyway."""
    client = await _client(cluster, cluster.leaves["eu"], user)
    fl_gateway = await _client(cluster, cluster.leaves["fl"], gateway_user("fl"))
    stream = object_stream(bucket)
    config = {"name": stream, "subjects": [f"$O.{bucket}.C.>", f"$O.{bucket}.M.>", stylize_subject("fl")]}
    try:
        for call in (f"STREAM.CREATE.{stream}", f"STREAM.UPDATE.{stream}"):
            with pytest.raises(NatsError):
                await client.nc.request(_api(call), json.dumps(config).encode(), timeout=SILENCE_S)
            await client.refused("publish", _api(call))
        with pytest.raises(NoRespondersError):  # no fl worker is up, and no stream acks fl's key frames
            await fl_gateway.nc.request(stylize_subject("fl"), b"a key frame", timeout=REFUSAL_WAIT_S)
    finally:
        await client.close()
        await fl_gateway.close()


@pytest.mark.parametrize("bucket", [STYLE_BUCKET, MODEL_BUCKET])
async def test_a_worker_cannot_deliver_a_bucket_into_another_regions_subjects(
    cluster: NatsHubAndLeaves, bucket: str
) -> None:
    """Issue 22 (2b): leave to create consumers on the style and model buckets let a worker set their delivery subject
    and group: the server delivered into ``mvs.us.stylize`` (queue group ``stylizers``) and ``mvs.fl.global``. Now a
    worker reads by direct get only, and however it aims the reply, it lands in its own region's account."""
    gateway = await _client(cluster, cluster.leaves["eu"], gateway_user("eu"))
    aggregator = await _client(cluster, cluster.hub, AGGREGATOR_USER)
    attacker = await _client(cluster, cluster.leaves["eu"], worker_user(EU_0))
    victim = await _client(cluster, cluster.leaves["fl"], worker_user(FL_0))
    try:
        await StyleStore(gateway.nc.jetstream(domain=HUB_DOMAIN)).put(b"a style, and a payload after it")
        await (await ModelStore.open(aggregator.nc.jetstream())).publish(
            WEIGHTS, ModelVersion(version=0, object_name="")
        )
        frames = await victim.nc.subscribe(stylize_subject("fl"), queue=STYLIZE_QUEUE_GROUP)
        versions = await victim.nc.subscribe(FL_GLOBAL_SUBJECT)
        await victim.nc.flush()
        stream = object_stream(bucket)
        for deliver in (stylize_subject("fl"), FL_GLOBAL_SUBJECT):
            consumer = {"deliver_subject": deliver, "deliver_group": STYLIZE_QUEUE_GROUP, "ack_policy": "none"}
            request = {"stream_name": stream, "config": consumer}
            await attacker.nc.publish(_api(f"CONSUMER.CREATE.{stream}"), json.dumps(request).encode())
            await attacker.refused("publish", _api(f"CONSUMER.CREATE.{stream}"))
            await attacker.nc.publish(_api(f"DIRECT.GET.{stream}"), b'{"seq": 1}', reply=deliver)
        read = await attacker.nc.request(_api(f"DIRECT.GET.{stream}"), b'{"seq": 1}', timeout=REFUSAL_WAIT_S)
        assert read.data and read.headers and read.headers["Nats-Stream"] == stream  # the read it may do works
        assert await _quiet(frames) == [] and await _quiet(versions) == []
    finally:
        for client in (gateway, aggregator, attacker, victim):
            await client.close()


async def test_a_credential_sends_deltas_as_its_own_worker_only(cluster: NatsHubAndLeaves) -> None:
    """Issue 22 (2, and 6: "two made-up worker ids from one credential filled a round"): a worker's delta subject
    carries its id and NATS lets each worker's user publish on its own only; the aggregator takes the worker id the
    subject attests. A second worker id from one credential is refused (another worker's subject) or rejected (a
    made-up id on its own subject), so the round fills only when a second real worker sends."""
    aggregator = Aggregator(
        AggregatorConfig(nats_url=cluster.client_url(cluster.hub, AGGREGATOR_USER), min_updates=2, durable="attest")
    )
    await aggregator.start(WEIGHTS)
    first = await _client(cluster, cluster.leaves["eu"], worker_user(EU_0))
    second = await _client(cluster, cluster.leaves["eu"], worker_user(EU_1))
    delta = {name: np.full_like(value, 0.1) for name, value in WEIGHTS.items()}
    try:
        js = first.nc.jetstream(domain=HUB_DOMAIN, timeout=SILENCE_S)
        deltas = DeltaStore(js, "eu")
        await submit_delta(js, deltas, worker_id=EU_0, base_version=0, samples=4, delta=delta)
        with pytest.raises(NatsError):  # the other worker's blob is refused first ...
            await submit_delta(js, deltas, worker_id=EU_1, base_version=0, samples=4, delta=delta)
        await first.refused("publish", "$O.mvs-deltas-eu.C.eu-worker-1.", prefix=True)
        as_other = DeltaRef(worker_id=EU_1, region="eu", base_version=0, samples=4, object_name=f"delta/eu/{EU_1}/v0-x")
        with pytest.raises(NatsError):  # ... and its reference too
            await js.publish(fl_delta_subject("eu", EU_1), encode(as_other))
        await first.refused("publish", fl_delta_subject("eu", EU_1))
        made_up = DeltaRef(
            worker_id="eu-made-up", region="eu", base_version=0, samples=4, object_name="delta/eu/eu-made-up/v0-x"
        )
        with pytest.raises(NatsError):  # its blob cannot even be written: it is another worker's name
            await deltas.put(made_up.object_name, encode_tensors(delta))
        await js.publish(fl_delta_subject("eu", EU_0), encode(made_up))
        await _until_rejected(aggregator, "owner")
        assert aggregator.current is not None and aggregator.current.version == 0  # one credential: one delta
        their_js = second.nc.jetstream(domain=HUB_DOMAIN)
        await submit_delta(their_js, DeltaStore(their_js, "eu"), worker_id=EU_1, base_version=0, samples=4, delta=delta)
        v1 = await asyncio.wait_for(_next_version(aggregator), READ_TIMEOUT_S)
        assert v1.contributors == [EU_0, EU_1] and aggregator.rejections == {"owner": 1}
    finally:
        await aggregator.stop()
        await first.close()
        await second.close()
    other_blob, other_ref, made_up_blob = _violations(cluster)  # the refused publishes, nothing else
    assert "$O.mvs-deltas-eu.C.eu-worker-1." in other_blob and fl_delta_subject("eu", EU_1) in other_ref
    assert "$O.mvs-deltas-eu.C.eu-made-up." in made_up_blob


async def test_a_worker_cannot_overwrite_another_workers_delta(cluster: NatsHubAndLeaves) -> None:
    """Issue 22 (the gap item 1 left): a region's workers share its delta bucket, and a worker knowing another's
    object name could rewrite that blob; the digest check then dropped the other's delta, a denial. Each worker's
    objects now live under subjects carrying its id, and NATS lets it write its own only: the rewrite is refused
    (under the other's subjects and under the plain object-store ones), and the other's delta counts."""
    aggregator = Aggregator(
        AggregatorConfig(nats_url=cluster.client_url(cluster.hub, AGGREGATOR_USER), min_updates=2, durable="rewrite")
    )
    await aggregator.start(WEIGHTS)
    owner = await _client(cluster, cluster.leaves["eu"], worker_user(EU_0))
    other = await _client(cluster, cluster.leaves["eu"], worker_user(EU_1))
    delta = {name: np.full_like(value, 0.1) for name, value in WEIGHTS.items()}
    poison = encode_tensors({name: np.full_like(value, np.nan) for name, value in WEIGHTS.items()})
    try:
        owner_js = owner.nc.jetstream(domain=HUB_DOMAIN, timeout=SILENCE_S)
        other_js = other.nc.jetstream(domain=HUB_DOMAIN, timeout=SILENCE_S)
        ref = await submit_delta(
            owner_js, DeltaStore(owner_js, "eu"), worker_id=EU_0, base_version=0, samples=4, delta=delta
        )
        await _until_holds(aggregator, ref.object_name)
        with pytest.raises(NatsError):
            await DeltaStore(other_js, "eu").put(ref.object_name, poison)  # under the owner's subjects
        with pytest.raises(NatsError):
            await Bucket(other_js, delta_bucket("eu")).put(ref.object_name, poison)  # as plain objects
        await other.refused("publish", chunk_subject(delta_bucket("eu"), "x", EU_0).removesuffix("x"), prefix=True)
        await submit_delta(other_js, DeltaStore(other_js, "eu"), worker_id=EU_1, base_version=0, samples=4, delta=delta)
        v1 = await asyncio.wait_for(_next_version(aggregator), READ_TIMEOUT_S)
        assert v1.contributors == [EU_0, EU_1] and aggregator.drops == {} and aggregator.rejections == {}
    finally:
        await aggregator.stop()
        await owner.close()
        await other.close()


async def _until_holds(aggregator: Aggregator, object_name: str) -> None:
    async def loop() -> None:
        while not any(object_name.encode() in data for data in aggregator.state.accepted):
            await aggregator.step()

    await asyncio.wait_for(loop(), READ_TIMEOUT_S)


async def _until_rejected(aggregator: Aggregator, reason: str) -> None:
    async def loop() -> None:
        while reason not in aggregator.rejections:
            await aggregator.step()

    await asyncio.wait_for(loop(), READ_TIMEOUT_S)


async def _next_version(aggregator: Aggregator) -> ModelVersion:
    while True:
        new = await aggregator.step()
        if new is not None:
            return new
