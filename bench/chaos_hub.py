"""bench.chaos's hub faults (issue 26): one server of a three-server JetStream hub killed with SIGKILL (a) mid-round
with deltas in flight, (b) while phones upload new styles, (c) as the JetStream meta leader; then brought back.

Each step runs its own cluster on loopback (three hub servers, region eu's leaf node), an in-process worker (colour
transfer) and gateway on the leaf, the aggregator on the hub, and a phone streaming through the fault. Figures:
deltas acknowledged against deltas counted in the version (and whether each counted exactly once: the weighted mean
says so), whether every version published loads with its digest, the phones' keys, and the recovery time (from the
kill to the store answering again with a new leader). Steps return a row's fields (``bench.chaos`` makes the row).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cv2
import nats
import numpy as np
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from aggregator.service import Aggregator, AggregatorConfig
from bench.common import table
from deploy.nats_servers import HUB_DOMAIN, NatsHubAndLeaves, NatsServer
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.client import Phone, PhoneConfig
from streaming.buckets import BucketMissingError, object_stream
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK
from streaming.model_store import DeltaStore, ModelIntegrityError, ModelStore, submit_delta
from streaming.protocol import FL_DELTA_STREAM, STYLE_BUCKET, ModelVersion
from streaming.tensors import NamedArrays

REGION = "eu"
FPS = 15.0
SIZE = (320, 180)
PHONE_SECONDS = 12.0
WAIT_S = 60.0
"""Patience for any event (a leader elected, a version published): the machine is shared."""
RETRY_S = 0.2
"""A client's pause between attempts at a call the cluster refused (no stream leader yet), as a worker does."""
DELTAS = 12
"""Deltas of the mid-round step's round: half before the kill, half in flight during it."""
BASE = 100.0
INITIAL: NamedArrays = {"dec.weight": np.full((3, 2), BASE, np.float32)}
T = TypeVar("T")


@dataclass
class HubSite:
    """A three-server hub with region eu's leaf node, worker, gateway and the aggregator."""

    cluster: NatsHubAndLeaves
    worker: StylizerWorker
    gateway: Gateway
    aggregator: Aggregator
    nc: NATS
    """A client of the leaf node (what a worker uses to reach the hub's stores)."""
    style_dir: Path

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream(domain=HUB_DOMAIN)

    def phone(self, style: str | None = None) -> Phone:
        return Phone(
            PhoneConfig(
                gateway_urls=(self.gateway.url,),
                frames=int(PHONE_SECONDS * FPS),
                size=SIZE,
                fps=FPS,
                key_interval=5,
                region=REGION,
                ice_hosts=LOOPBACK,
                style=style,
            )
        )

    def new_style(self) -> str:
        """A style photo no one used before (smooth colour noise), as a file."""
        rng = np.random.default_rng()
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        path = self.style_dir / f"{uuid.uuid4().hex[:8]}.jpg"
        cv2.imwrite(str(path), cv2.resize(small, (256, 256), interpolation=cv2.INTER_CUBIC))
        return str(path)


@contextlib.asynccontextmanager
async def hub_site(min_updates: int = 1) -> AsyncIterator[HubSite]:
    with NatsHubAndLeaves([REGION], hub_servers=3) as cluster, tempfile.TemporaryDirectory() as styles:
        leaf = cluster.leaves[REGION].url
        worker = StylizerWorker(
            WorkerConfig(nats_url=leaf, region=REGION, worker_id="eu-w", threads=1, js_domain=HUB_DOMAIN)
        )
        gateway = Gateway(GatewayConfig(port=0, nats_url=leaf, region=REGION, js_domain=HUB_DOMAIN, ice_hosts=LOOPBACK))
        aggregator = Aggregator(
            AggregatorConfig(
                nats_url=cluster.hub_url("aggregator"),
                min_updates=min_updates,
                durable=f"a{uuid.uuid4().hex[:6]}",
                ack_wait_s=1.0,
                nats_reconnect_wait_s=0.1,
            )
        )
        await worker.start()
        await gateway.start()
        await aggregator.start(INITIAL)
        rounds = asyncio.create_task(aggregator.run())
        nc = await nats.connect(leaf, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
        try:
            yield HubSite(cluster, worker, gateway, aggregator, nc, Path(styles))
        finally:
            rounds.cancel()
            await asyncio.gather(rounds, return_exceptions=True)
            await nc.close()
            await aggregator.stop()
            await gateway.stop()
            await worker.stop()


COLUMNS = (
    "fault",
    "deltas_acked",
    "deltas_counted",
    "exactly_once",
    "keys_ok",
    "keys_failed",
    "second_keys_ok",
    "second_keys_failed",
    "recovery_s",
    "rss_mb_after",
    "survived",
)


def markdown(data: dict[str, Any]) -> str:
    """The hub rows of a ``bench.chaos --only hub-...`` run (its results file), with their own columns."""
    m = data["machine"]
    lines = [
        "# Hub faults (issue 26)",
        "",
        f"`python -m bench.chaos --only hub-...` at commit {m['commit']} on {m['cpus']} CPUs (load "
        f"{m['load_avg_1m']}), {data['seconds']} s. Three hub servers, a leaf node, an in-process worker (colour "
        "transfer), gateway and aggregator, aiortc phones; recovery: the kill to a new leader.",
        "",
        *table(COLUMNS, [[row.get(c) for c in COLUMNS] for row in data["rows"]], align="lrrlrrrrrrl"),
    ]
    return "\n".join(lines) + "\n"


async def _answered(call: Callable[[], Awaitable[T]]) -> T:
    """``call`` retried until JetStream answers (a stream electing a leader refuses or times out for a moment)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return await call()
        except (NatsError, asyncio.TimeoutError, BucketMissingError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(RETRY_S)


async def _until(check: Callable[[], Awaitable[T | None]], what: str) -> T:
    """The first value of ``check`` that is not None (polled every 50 ms, :data:`WAIT_S` at most)."""
    deadline = time.monotonic() + WAIT_S
    while (value := await check()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {WAIT_S:g} s: {what}")
        await asyncio.sleep(0.05)
    return value


async def _leader(site: HubSite, stream: str, other_than: str | None = None) -> NatsServer:
    """The running hub server leading ``stream`` (once it has one other than ``other_than``)."""

    async def check() -> NatsServer | None:
        try:
            info = await site.js.stream_info(stream)
        except (NatsError, asyncio.TimeoutError):
            return None
        leader = info.cluster.leader if info.cluster else None
        if leader is None or leader == other_than:
            return None
        return next((h for h in site.cluster.hubs if h.name == leader and h.pid is not None), None)

    return await _until(check, f"a leader of {stream}")


async def version_at_least(store: ModelStore, version: int) -> ModelVersion | None:
    """The latest global version once it is ``version`` or newer (None before, or while the store does not answer)."""
    try:
        latest = await store.latest()
    except (NatsError, asyncio.TimeoutError):
        return None
    return latest if latest is not None and latest.version >= version else None


async def _loads(store: ModelStore, meta: ModelVersion) -> bool:
    """The version's weights load (``ModelStore.weights`` checks their digest)."""
    try:
        await _answered(lambda: store.weights(meta))
    except ModelIntegrityError:  # missing, or not what its digest says
        return False
    return True


def _delta(value: float) -> NamedArrays:
    return {"dec.weight": np.full((3, 2), value, np.float32)}


async def _back(site: HubSite, victim: NatsServer) -> float:
    """Restart ``victim``; seconds until the cluster has a meta leader with every peer current again."""
    tic = time.monotonic()
    victim.start()
    await asyncio.to_thread(site.cluster.wait_for_meta_leader, WAIT_S)
    return round(time.monotonic() - tic, 2)


async def kill_mid_round() -> dict[str, Any]:
    """(a) Twelve deltas for one round, six of them submitted while the delta stream's leader is killed."""
    async with hub_site(min_updates=DELTAS) as site:
        js, phone = site.js, asyncio.create_task(site.phone().run())
        deltas, store = DeltaStore(js, REGION), await ModelStore.open(js)
        acked = 0

        async def submit(i: int) -> None:
            nonlocal acked
            await _answered(
                lambda: submit_delta(js, deltas, worker_id=f"eu-{i}", base_version=0, samples=i + 1, delta=_delta(i))
            )
            acked += 1

        for i in range(DELTAS // 2):
            await submit(i)
        victim = await _leader(site, FL_DELTA_STREAM)
        in_flight = [asyncio.create_task(submit(i)) for i in range(DELTAS // 2, DELTAS)]
        killed = time.monotonic()
        victim.kill()
        await _leader(site, FL_DELTA_STREAM, other_than=victim.name)
        recovery = round(time.monotonic() - killed, 2)
        await asyncio.gather(*in_flight)
        meta = await _until(lambda: version_at_least(store, 1), "the round's version")
        weights = await _answered(lambda: store.weights(meta))  # checked against its digest
        whole_s = await _back(site, victim)
        report = (await asyncio.wait_for(phone, WAIT_S * 2)).report
    expected = BASE + sum((i + 1) * i for i in range(DELTAS)) / sum(range(1, DELTAS + 1))
    once = bool(np.allclose(weights["dec.weight"], expected)) and meta.samples == sum(range(1, DELTAS + 1))
    return {
        "fault": f"hub: the delta stream's leader killed (-9) mid-round, {DELTAS // 2} of {DELTAS} deltas in flight",
        "survived": f"{acked} deltas acked, {len(meta.contributors)} counted in v{meta.version}, each exactly once "
        f"{once}; v{meta.version} loads with its digest; new leader {recovery} s after the kill, the cluster whole "
        f"{whole_s} s after the restart",
        "report": report,
        "deltas_acked": acked,
        "deltas_counted": len(meta.contributors),
        "exactly_once": once,
        "recovery_s": recovery,
    }


async def kill_during_style_upload() -> dict[str, Any]:
    """(b) A phone with a new style starts and the style bucket's leader is killed as it offers; another phone with
    another new style starts while the server is still down."""
    styles = object_stream(STYLE_BUCKET)
    async with hub_site() as site:
        victim = await _leader(site, styles)
        first = asyncio.create_task(site.phone(site.new_style()).run())
        killed = time.monotonic()
        victim.kill()
        await _leader(site, styles, other_than=victim.name)
        recovery = round(time.monotonic() - killed, 2)
        second = await asyncio.wait_for(site.phone(site.new_style()).run(), WAIT_S * 2)  # one server still down
        whole_s = await _back(site, victim)
        report = (await asyncio.wait_for(first, WAIT_S * 2)).report
    keys = second.report["key_frames"]
    return {
        "fault": "hub: the style bucket's leader killed (-9) as a phone offers a new style; a second phone, another "
        "new style, while it is down",
        "survived": f"first phone {report['key_frames']['ok']} keys ok / {report['key_frames']['failed']} failed; "
        f"second {keys['ok']} ok / {keys['failed']} failed; new leader {recovery} s after the kill, the cluster "
        f"whole {whole_s} s after the restart",
        "report": report,
        "second_keys_ok": keys["ok"],
        "second_keys_failed": keys["failed"],
        "recovery_s": recovery,
    }


async def kill_meta_leader() -> dict[str, Any]:
    """(c) The JetStream meta leader killed while a phone streams; a round and a new phone's new style after it."""
    async with hub_site() as site:
        js = site.js
        deltas, store = DeltaStore(js, REGION), await ModelStore.open(js)
        phone = asyncio.create_task(site.phone().run())
        victim = site.cluster.hubs[await asyncio.to_thread(site.cluster.wait_for_meta_leader, WAIT_S)]
        killed = time.monotonic()
        victim.kill()
        leader = await asyncio.to_thread(site.cluster.wait_for_meta_leader, WAIT_S)
        recovery = round(time.monotonic() - killed, 2)
        await _answered(lambda: submit_delta(js, deltas, worker_id="eu-1", base_version=0, samples=4, delta=_delta(1)))
        meta = await _until(lambda: version_at_least(store, 1), "a version after the meta leader's death")
        loads = await _loads(store, meta)
        second = await asyncio.wait_for(site.phone(site.new_style()).run(), WAIT_S * 2)
        whole_s = await _back(site, victim)
        report = (await asyncio.wait_for(phone, WAIT_S * 2)).report
    keys = second.report["key_frames"]
    return {
        "fault": "hub: the JetStream meta leader killed (-9) while a phone streams",
        "survived": f"{site.cluster.hubs[leader].name} elected {recovery} s after the kill; a round after it "
        f"published v{meta.version} (loads with its digest: {loads}); a new phone with a new style {keys['ok']} "
        f"keys ok / {keys['failed']} failed while it was down; the cluster whole {whole_s} s after the restart",
        "report": report,
        "deltas_acked": 1,
        "deltas_counted": len(meta.contributors),
        "second_keys_ok": keys["ok"],
        "recovery_s": recovery,
    }
