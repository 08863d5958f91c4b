"""The aggregator on a real nats-server (JetStream): rounds, rejections, and crashes at every step."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from prometheus_client import REGISTRY

from aggregator.service import DURABLE, ROUND_KEY, Aggregator, AggregatorConfig
from deploy.launch import ServiceProcess
from deploy.nats_servers import NatsServer
from streaming.cli import ServiceOptions
from streaming.model_store import DeltaStore, ModelStore, submit_delta, version_object
from streaming.protocol import (
    FL_DELTA_STREAM,
    FL_GLOBAL_SUBJECT,
    FL_ROUND_BUCKET,
    DeltaRef,
    ModelVersion,
    RoundState,
    decode,
    encode,
    fl_delta_subject,
)
from streaming.tensors import NamedArrays, encode_tensors
from tests.support import wait_until

pytestmark = pytest.mark.fresh_nats_server  # the model store and the delta stream are global on a server


BASE = 100.0
"""The initial weights' value: large enough that the test deltas stay under the relative norm bound (25 %)."""
INITIAL: NamedArrays = {"dec.weight": np.full((3, 2), BASE, np.float32), "dec.bias": np.zeros(2, np.float32)}
STEP_TIMEOUT_S = 30.0
TEST_ACK_WAIT_S = 1.0
"""The aggregators' ack wait here: redeliveries come within the test's patience, not after the default 5 s."""


async def _submit(js: JetStreamContext, region: str, **ref: Any) -> DeltaRef:
    """A worker of ``region`` submits a delta (to its region's bucket)."""
    return await submit_delta(js, DeltaStore(js, region), **ref)


def _delta(value: float, dtype: str = "float16") -> NamedArrays:
    return {"dec.weight": np.full((3, 2), value, dtype), "dec.bias": np.full(2, value / 2, dtype)}


@pytest.fixture
def server(nats_server: NatsServer) -> NatsServer:
    return nats_server


async def _until_version(aggregator: Aggregator, version: int) -> ModelVersion:
    async def stepped() -> ModelVersion | None:
        new = await aggregator.step()
        return new if new is not None and new.version >= version else None

    return await wait_until(stepped, STEP_TIMEOUT_S, f"the aggregator publishing v{version}", poll_s=0)


async def test_round_is_the_weighted_average_announced_and_cleaned_up(server: NatsServer, nc: NATS) -> None:
    aggregator = Aggregator(AggregatorConfig(nats_url=server.url, min_updates=2, durable=f"a{uuid.uuid4().hex[:6]}"))
    await aggregator.start(INITIAL)
    announced: list[ModelVersion] = []

    async def on_version(msg: Msg) -> None:
        announced.append(decode(msg.data, ModelVersion))

    sub = await nc.subscribe(FL_GLOBAL_SUBJECT, cb=on_version)
    js = nc.jetstream()
    store = await ModelStore.open(js)
    try:
        r1 = await _submit(js, "eu", worker_id="eu-1", base_version=0, samples=10, delta=_delta(1.0), loss=2.0)
        await _submit(js, "eu", worker_id="eu-2", base_version=0, samples=30, delta=_delta(5.0), loss=1.0)
        meta = await _until_version(aggregator, 1)
    finally:
        await aggregator.stop()
    weights = await store.weights(await store.latest())  # type: ignore[arg-type]
    expected = (10 * 1.0 + 30 * 5.0) / 40  # 4.0
    assert np.allclose(weights["dec.weight"], BASE + expected) and np.allclose(weights["dec.bias"], expected / 2)
    assert meta.contributors == ["eu-1", "eu-2"] and meta.samples == 40 and meta.parent == 0
    assert meta.loss == pytest.approx((10 * 2.0 + 30 * 1.0) / 40)
    await nc.flush()  # the aggregator flushed its announcement: our round trip to the server comes after it
    await sub.unsubscribe()
    assert [m.version for m in announced] == [1]
    with pytest.raises(KeyError):
        await DeltaStore(js, "eu").get(r1.object_name)  # consumed deltas are removed


@pytest.mark.slow
async def test_rejected_deltas_are_never_applied(server: NatsServer, nc: NATS) -> None:
    aggregator = Aggregator(AggregatorConfig(nats_url=server.url, min_updates=1, durable="rej"))
    await aggregator.start(INITIAL)
    js = nc.jetstream()
    store = await ModelStore.open(js)
    try:
        bad = _delta(1.0, "float32")
        bad["dec.weight"][0, 0] = np.nan
        await _submit(js, "eu", worker_id="x", base_version=0, samples=5, delta=bad)
        await _submit(
            js,
            "eu",
            worker_id="y",
            base_version=0,
            samples=5,
            delta={"dec.weight": _delta(1.0)["dec.weight"]},
        )
        await _submit(js, "eu", worker_id="z", base_version=7, samples=5, delta=_delta(1.0))
        await js.publish("mvs.fl.delta.eu", b"\x00 not a delta")
        await _submit(js, "eu", worker_id="ok", base_version=0, samples=5, delta=_delta(0.5))
        await _submit(js, "eu", worker_id="ok", base_version=0, samples=5, delta=_delta(0.5))
        meta = await _until_version(aggregator, 1)
        for _ in range(3):
            await aggregator.step()
    finally:
        await aggregator.stop()
    assert meta.contributors == ["ok"]
    weights = await store.weights(await store.latest())  # type: ignore[arg-type]
    assert np.allclose(weights["dec.weight"], BASE + 0.5)
    assert aggregator.rejections == {"non_finite": 1, "keys": 1, "future_base": 1, "unreadable": 1, "duplicate": 1}


@pytest.mark.slow
async def test_poisoned_deltas_are_rejected_and_counted(server: NatsServer, nc: NATS) -> None:
    """Issue 14's attacks: the whole global weights sent as a delta, norm 999 claiming 10^12 samples, a delta that
    names another worker's object, one whose region is not its subject's; each rejected and counted by reason."""
    aggregator = Aggregator(AggregatorConfig(nats_url=server.url, min_updates=1, durable="poison"))
    await aggregator.start(INITIAL)
    js = nc.jetstream()
    eu = DeltaStore(js, "eu")
    before = {reason: _rejected(reason) for reason in ("relative_norm", "samples", "owner")}
    try:
        whole = {name: value.astype(np.float16) for name, value in INITIAL.items()}
        await submit_delta(js, eu, worker_id="a", base_version=0, samples=5, delta=whole)
        norm_999 = _delta(999 / 6.5**0.5)
        await submit_delta(js, eu, worker_id="b", base_version=0, samples=10**12, delta=norm_999)
        victim = await submit_delta(js, eu, worker_id="c", base_version=0, samples=5, delta=_delta(0.5))
        forged = DeltaRef(worker_id="d", region="eu", base_version=0, samples=5, object_name=victim.object_name)
        await js.publish(fl_delta_subject("eu", forged.worker_id), encode(forged))
        wrong_region = DeltaRef(worker_id="e", region="us", base_version=0, samples=5, object_name="delta/us/e/v0-x")
        await js.publish(fl_delta_subject("eu", wrong_region.worker_id), encode(wrong_region))
        meta = await _until_version(aggregator, 1)
        for _ in range(3):
            await aggregator.step()
    finally:
        await aggregator.stop()
    assert meta.contributors == ["c"]
    assert aggregator.rejections == {"relative_norm": 1, "samples": 1, "owner": 2}
    assert {reason: _rejected(reason) - count for reason, count in before.items()} == aggregator.rejections
    weights = await (await ModelStore.open(js)).weights(meta)
    assert np.allclose(weights["dec.weight"], BASE + 0.5)


def _rejected(reason: str) -> float:
    """The aggregator's Prometheus rejection counter for ``reason``."""
    return REGISTRY.get_sample_value("mvs_aggregator_updates_rejected_total", {"reason": reason}) or 0.0


@pytest.mark.slow
async def test_a_round_closes_on_its_timeout_with_fewer_updates(server: NatsServer, nc: NATS) -> None:
    timeout_s = 2.0
    aggregator = Aggregator(
        AggregatorConfig(nats_url=server.url, min_updates=3, round_timeout_s=timeout_s, durable="timeout")
    )
    opened = time.monotonic()
    await aggregator.start(INITIAL)  # the round opens here
    js = nc.jetstream()
    store = await ModelStore.open(js)
    try:
        await _submit(js, "eu", worker_id="lone", base_version=0, samples=4, delta=_delta(2.0))
        assert await aggregator.step() is None and len(aggregator.state.accepted) == 1  # 1 of 3, and young
        meta = await _until_version(aggregator, 1)
    finally:
        await aggregator.stop()
    assert time.monotonic() - opened >= timeout_s
    assert meta.contributors == ["lone"] and meta.samples == 4
    weights = await store.weights(meta)
    assert np.allclose(weights["dec.weight"], BASE + 2.0)


async def test_only_the_newest_versions_are_kept(server: NatsServer, nc: NATS) -> None:
    aggregator = Aggregator(AggregatorConfig(nats_url=server.url, min_updates=1, keep_versions=2, durable="prune"))
    await aggregator.start(INITIAL)
    js = nc.jetstream()
    store = await ModelStore.open(js)
    try:
        for version in range(4):
            await _submit(js, "eu", worker_id="w", base_version=version, samples=1, delta=_delta(1.0))
            await _until_version(aggregator, version + 1)
    finally:
        await aggregator.stop()
    assert (await store.latest()).version == 4  # type: ignore[union-attr]
    kept = [(await store.version(v)).version for v in (3, 4)]
    assert kept == [3, 4]
    for pruned in range(3):
        with pytest.raises(KeyError):
            await store.version(pruned)
        with pytest.raises(KeyError):
            await store.get_blob(version_object(pruned))
    assert np.allclose((await store.weights(await store.version(4)))["dec.weight"], BASE + 4.0)


def _start_aggregator(
    server: NatsServer, tmp_path: Path, log_path: Path | None = None, **fields: Any
) -> ServiceProcess:
    init = tmp_path / "init.bin"
    init.write_bytes(encode_tensors(INITIAL))
    config = AggregatorConfig(**{"nats_url": server.url, "min_updates": 3, "init": init, **fields})
    return ServiceProcess(config, options=ServiceOptions(log_level="warning"), log_path=log_path).start()


async def _wait_latest(store: ModelStore, version: int) -> ModelVersion:
    async def latest() -> ModelVersion | None:
        latest = await store.latest()
        return latest if latest is not None and latest.version >= version else None

    return await wait_until(latest, STEP_TIMEOUT_S, f"v{version} as the store's latest")


async def _round_state(js: JetStreamContext) -> RoundState | None:
    """The aggregator's persisted round state (None before it saved one)."""
    try:
        entry = await (await js.key_value(FL_ROUND_BUCKET)).get(ROUND_KEY)
    except KeyNotFoundError:
        return None
    return decode(entry.value or b"", RoundState)


async def _until_persisted(js: JetStreamContext, deltas: int) -> None:
    """Until the persisted round state holds ``deltas`` deltas."""

    async def persisted() -> bool:
        state = await _round_state(js)
        return state is not None and len(state.accepted) >= deltas

    await wait_until(persisted, STEP_TIMEOUT_S, f"{deltas} deltas in the persisted round")


async def _until_settled(js: JetStreamContext, version: int, deltas: int = 0) -> None:
    """Until no delta is waiting or delivered-but-unacked and the round after ``version`` holds ``deltas``: from
    then on nothing (a redelivery included) changes the round until another delta comes."""

    async def settled() -> bool:
        info = await js.consumer_info(FL_DELTA_STREAM, DURABLE)
        state = await _round_state(js)
        idle = info.num_pending == 0 and info.num_ack_pending == 0
        return idle and state is not None and state.base_version == version and len(state.accepted) == deltas

    await wait_until(settled, STEP_TIMEOUT_S, f"the round after v{version} settled with {deltas} deltas")


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash_after", ["", "delta_accepted", "delta_saved", "weights_stored", "latest_moved", "round_reset"]
)
async def test_killed_aggregator_loses_nothing_and_doubles_nothing(
    server: NatsServer, nc: NATS, tmp_path: Path, crash_after: str
) -> None:
    """Killed (-9) with two deltas persisted, or crashed at a named step: a delta accepted but not yet persisted
    (an aggregator acking before persisting loses it here), persisted but not acked (redelivered after the ack
    wait and recognised, not rejected), or half-way through publishing a round (the round state reset included, its
    blobs not deleted yet). Either way the round's blobs end up deleted."""
    js = nc.jetstream()
    first = _start_aggregator(server, tmp_path, ack_wait_s=TEST_ACK_WAIT_S, crash_after=crash_after)
    try:
        store = await ModelStore.open(js)
        await _wait_latest(store, 0)
        announced: list[int] = []

        async def on_version(msg: Msg) -> None:
            announced.append(decode(msg.data, ModelVersion).version)

        await nc.subscribe(FL_GLOBAL_SUBJECT, cb=on_version)
        refs = [
            await _submit(js, "us", worker_id=worker, base_version=0, samples=i + 1, delta=_delta(3.0 * (i + 1)))
            for i, worker in enumerate(("a", "b"))
        ]
        closing = crash_after in ("weights_stored", "latest_moved", "round_reset")  # crashes while closing the round
        if crash_after.startswith("delta_"):
            first.wait(STEP_TIMEOUT_S)  # crashed at the first delta
        else:
            await _until_persisted(js, 2)  # round not due yet (3 updates needed)
        if not crash_after:
            first.kill()  # kill -9 between receiving and publishing

        async def submit_last() -> None:
            refs.append(await _submit(js, "us", worker_id="c", base_version=0, samples=3, delta=_delta(-1.0)))

        if closing:
            await submit_last()
        first.wait(STEP_TIMEOUT_S)  # killed, or crashed at the injected step
        log = tmp_path / "second.log"
        second = _start_aggregator(server, tmp_path, log, ack_wait_s=TEST_ACK_WAIT_S)
        try:
            if not closing:
                await _until_settled(js, 0, deltas=2)  # a and b held once, redeliveries included
                await submit_last()
            latest = await _wait_latest(store, 1)
            await wait_until(lambda: 1 in announced, STEP_TIMEOUT_S, "v1 announced")  # published, or re-announced
            await _until_settled(js, 1)  # nothing left that could make a second version
            assert (await store.latest()).version == 1  # type: ignore[union-attr]
        finally:
            second.stop()
    finally:
        first.kill()
    # v1 once, never a v2; a restarted aggregator also re-announces the version it finds stored (v0 when it came
    # back before the round closed), so that workers that started before it join.
    assert 1 in announced and set(announced) <= {0, 1}
    assert "delta rejected" not in log.read_text()  # a redelivered delta is recognised, not rejected as a duplicate
    expected = (1 * 3.0 + 2 * 6.0 + 3 * -1.0) / 6  # every delta exactly once: 2.0
    weights = await store.weights(latest)
    assert np.allclose(weights["dec.weight"], BASE + expected), weights["dec.weight"]
    assert sorted(latest.contributors) == ["a", "b", "c"] and latest.samples == 6
    deltas = DeltaStore(js, "us")
    for ref in refs:
        with pytest.raises(KeyError):
            await deltas.get(ref.object_name)


@pytest.mark.slow
async def test_round_timeout_counts_from_the_first_delta_and_v0_is_announced(server: NatsServer, nc: NATS) -> None:
    """With fewer than --min-updates deltas a round closes --round-timeout after its first accepted delta, never on
    its age alone; the initial version is announced like every other."""
    announced: list[ModelVersion] = []

    async def on_version(msg: Msg) -> None:
        announced.append(decode(msg.data, ModelVersion))

    sub = await nc.subscribe(FL_GLOBAL_SUBJECT, cb=on_version)
    await nc.flush()
    timeout_s = 1.0
    aggregator = Aggregator(AggregatorConfig(nats_url=server.url, min_updates=2, round_timeout_s=timeout_s))
    await aggregator.start(INITIAL)
    js = nc.jetstream()
    try:
        await asyncio.sleep(timeout_s * 1.5)  # the round is older than the timeout, and empty
        assert await aggregator.step() is None
        await _submit(js, "eu", worker_id="late", base_version=0, samples=4, delta=_delta(1.0))
        submitted = asyncio.get_running_loop().time()
        while not aggregator.state.accepted:
            assert await aggregator.step() is None  # accepted, but not closed: its timeout starts now
        assert aggregator.state.first_update_ns > 0
        meta = await _until_version(aggregator, 1)
        waited = asyncio.get_running_loop().time() - submitted
    finally:
        await aggregator.stop()
    assert meta.contributors == ["late"] and waited >= timeout_s * 0.9
    await asyncio.sleep(0.2)
    await sub.unsubscribe()
    assert [m.version for m in announced] == [0, 1]
