"""Issue 22, item 1: a round aggregates the deltas that were checked, each once, on a real nats-server.

A region's workers may rewrite their region's delta bucket at any time, so each attack here is made with the
rights a worker has: overwrite its own blob after the aggregator checked it (NaN, x1000, another shape), replay
its reference after the round closed, crash the aggregator between the reset of a round and the deletion of its
blobs. A worker in turn refuses a global version whose weights do not fit its model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY
from test_aggregator_service import (
    BASE,
    STEP_TIMEOUT_S,
    _round_state,
    _start_aggregator,
    _until_persisted,
    _until_settled,
    _until_version,
    _wait_latest,
)
from test_aggregator_service import _delta as _process_delta

from aggregator.service import Aggregator, AggregatorConfig
from deploy.launch import ServiceProcess
from deploy.nats_servers import NatsServer
from edge_worker.federated import FederatedConfig, FederatedLearner
from streaming.model_store import DeltaStore, ModelStore, submit_delta
from streaming.protocol import FL_GLOBAL_SUBJECT, DeltaRef, ModelVersion, decode, encode, fl_delta_subject
from streaming.tensors import NamedArrays, encode_tensors
from tests.support import TRAINING_WAIT_S, tiny_retrainable_dnn, wait_until

pytestmark = pytest.mark.fresh_nats_server  # the model store and the delta stream are global on a server


MODEL: NamedArrays = {"dec.weight": np.full((4, 4), 16.0, np.float32)}
"""A synthetic model of norm 64, as in the report (64 -> 32,231)."""
ROUND_TIMEOUT_S = 1.0


def _delta(value: float, shape: tuple[int, ...] = (4, 4)) -> NamedArrays:
    return {"dec.weight": np.full(shape, value, np.float16)}


SWAPS: dict[str, NamedArrays] = {
    "nan": _delta(np.nan),
    "x1000": _delta(500.0),  # 1000 x the checked 0.5: norm 2,000 against a bound of 16 (25 % of 64)
    "shape": _delta(0.5, (2, 8)),
}
WRONG_SHAPE_FOR_PROCESS = {"dec.weight": np.full((2, 3), 0.5, np.float16), "dec.bias": np.zeros(2, np.float16)}
"""A wrong-shape blob for the aggregator processes (whose model is ``test_aggregator_service.INITIAL``)."""


@pytest.fixture
def server(nats_server: NatsServer) -> NatsServer:
    return nats_server


def _dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("mvs_aggregator_updates_dropped_total", {"reason": reason}) or 0.0


async def _blob_gone(deltas: DeltaStore, name: str) -> bool:
    try:
        await deltas.get(name)
    except KeyError:
        return True
    return False


async def _until_accepted(aggregator: Aggregator, count: int) -> None:
    async def accepted() -> bool:
        if len(aggregator.state.accepted) >= count:
            return True
        assert await aggregator.step() is None
        return False

    await wait_until(accepted, STEP_TIMEOUT_S, f"{count} deltas accepted", poll_s=0)


@pytest.mark.slow
@pytest.mark.parametrize("swap", sorted(SWAPS))
async def test_a_delta_rewritten_after_its_check_is_dropped_when_the_round_closes(
    server: NatsServer, nc: NATS, swap: str
) -> None:
    """The report's attack: delta A is accepted, then its blob is overwritten (NaN, x1000, another shape) before
    a second delta closes the round. Main aggregated the new bytes (an all-NaN v1 with a valid SHA-256, a x1000
    step, or a crash); now A is dropped (counted as ``digest``), its blob deleted, and v1 is B's step alone."""
    aggregator = Aggregator(
        AggregatorConfig(nats_url=server.url, min_updates=2, round_timeout_s=ROUND_TIMEOUT_S, durable="swap")
    )
    await aggregator.start(MODEL)
    js = nc.jetstream()
    eu = DeltaStore(js, "eu")
    before = _dropped("digest")
    try:
        a = await submit_delta(js, eu, worker_id="a", base_version=0, samples=8, delta=_delta(0.5))
        await _until_accepted(aggregator, 1)
        await eu.put(a.object_name, encode_tensors(SWAPS[swap]))  # the worker rewrites its checked blob
        await submit_delta(js, eu, worker_id="b", base_version=0, samples=8, delta=_delta(-0.25))
        meta = await _until_version(aggregator, 1)
    finally:
        await aggregator.stop()
    weights = await (await ModelStore.open(js)).weights(meta)
    assert np.array_equal(weights["dec.weight"], MODEL["dec.weight"] - 0.25), weights["dec.weight"]
    assert meta.contributors == ["b"] and aggregator.drops == {"digest": 1} and not aggregator.rejections
    assert _dropped("digest") - before == 1
    assert await _blob_gone(eu, a.object_name)


@pytest.mark.slow
async def test_every_delta_is_validated_again_when_its_round_closes(server: NatsServer, nc: NATS) -> None:
    """The digest proves the bytes are those checked; the checks themselves run again too. An aggregator restarted
    with a tighter --max-norm drops a held delta that no longer passes (counted as ``norm``) instead of publishing
    it."""
    js = nc.jetstream()
    eu = DeltaStore(js, "eu")
    first = Aggregator(AggregatorConfig(nats_url=server.url, min_updates=3, durable="recheck"))
    await first.start(MODEL)
    try:
        big = await submit_delta(js, eu, worker_id="big", base_version=0, samples=4, delta=_delta(2.0))  # norm 8
        await submit_delta(js, eu, worker_id="small", base_version=0, samples=4, delta=_delta(0.25))  # norm 1
        await _until_accepted(first, 2)
    finally:
        await first.stop()
    second = Aggregator(
        AggregatorConfig(
            nats_url=server.url, min_updates=2, round_timeout_s=ROUND_TIMEOUT_S, max_norm=4.0, durable="recheck"
        )
    )
    await second.start()
    try:
        meta = await _until_version(second, 1)
    finally:
        await second.stop()
    assert meta.contributors == ["small"] and second.drops == {"norm": 1}
    weights = await (await ModelStore.open(js)).weights(meta)
    assert np.array_equal(weights["dec.weight"], MODEL["dec.weight"] + 0.25)
    assert await _blob_gone(eu, big.object_name)


@pytest.mark.slow
async def test_a_replayed_delta_is_not_counted_again_after_its_round_closed(server: NatsServer, nc: NATS) -> None:
    """Main counted A in v1 and again in v2 when its reference was replayed (blob put back) after v1: a base stays
    a valid base for --max-staleness versions. Now a replay, and any second delta of A on the same base, is a
    duplicate for as long as that base is accepted."""
    aggregator = Aggregator(
        AggregatorConfig(nats_url=server.url, min_updates=2, round_timeout_s=ROUND_TIMEOUT_S, durable="replay")
    )
    await aggregator.start(MODEL)
    js = nc.jetstream()
    eu = DeltaStore(js, "eu")
    try:
        a_blob = encode_tensors(_delta(0.5))
        a = await submit_delta(js, eu, worker_id="a", base_version=0, samples=8, delta=_delta(0.5))
        await submit_delta(js, eu, worker_id="b", base_version=0, samples=8, delta=_delta(-0.25))
        v1 = await _until_version(aggregator, 1)
        assert v1.contributors == ["a", "b"] and await _blob_gone(eu, a.object_name)
        await eu.put(a.object_name, a_blob)  # the same bytes again, and the very same reference
        await js.publish(fl_delta_subject("eu", a.worker_id), encode(a))
        await submit_delta(js, eu, worker_id="a", base_version=0, samples=8, delta=_delta(0.125))  # a second on v0
        await submit_delta(js, eu, worker_id="c", base_version=1, samples=8, delta=_delta(0.25))
        v2 = await _until_version(aggregator, 2)
    finally:
        await aggregator.stop()
    assert v2.contributors == ["c"] and aggregator.rejections == {"duplicate": 2}
    weights = await (await ModelStore.open(js)).weights(v2)
    assert np.array_equal(weights["dec.weight"], MODEL["dec.weight"] + 0.125 + 0.25)


async def test_an_oversized_reference_is_refused(server: NatsServer, nc: NATS) -> None:
    """The round state keeps references across rounds: a 2 KB worker id (main accepted it) is refused, so a few
    such deltas cannot grow the state past the size it is read back under (a crash loop at restart)."""
    aggregator = Aggregator(AggregatorConfig(nats_url=server.url, min_updates=2, durable="big-ref"))
    await aggregator.start(MODEL)
    js = nc.jetstream()
    worker = "w" * 2048  # its blob's subjects would pass the server's line limit: the reference alone is sent
    ref = DeltaRef(worker_id=worker, region="eu", base_version=0, samples=8, object_name=f"delta/eu/{worker}/v0-x")
    try:
        await js.publish(fl_delta_subject("eu", worker), encode(ref))
        while not (aggregator.rejections or aggregator.state.accepted):
            assert await aggregator.step() is None
    finally:
        await aggregator.stop()
    assert aggregator.rejections == {"unreadable": 1} and not aggregator.state.accepted


@pytest.mark.slow
async def test_a_crash_between_round_reset_and_blob_deletion_neither_doubles_nor_leaks(
    server: NatsServer, nc: NATS, tmp_path: Path
) -> None:
    """Killed right after the reset round state is saved (crash point ``round_reset``), before any blob is deleted:
    the restarted aggregator deletes the listed blobs, and the closed round's references, replayed meanwhile, are
    duplicates (main forgot them with the reset: B counted again, or its blob left behind for good)."""
    js = nc.jetstream()
    us = DeltaStore(js, "us")
    store = await ModelStore.open(js)
    first = _start_aggregator(server, tmp_path, min_updates=2, crash_after="round_reset")
    second: ServiceProcess | None = None
    try:
        await _wait_latest(store, 0)
        refs = [
            await submit_delta(js, us, worker_id=w, base_version=0, samples=4, delta=_process_delta(v))
            for w, v in (("a", 0.5), ("b", -0.25))
        ]
        assert first.wait(STEP_TIMEOUT_S) == 1  # crashed at round_reset, after publishing v1
        assert (await store.latest()).version == 1  # type: ignore[union-attr]
        assert not any([await _blob_gone(us, r.object_name) for r in refs])  # the window: none deleted yet
        for ref in refs:
            await js.publish(fl_delta_subject("us", ref.worker_id), encode(ref))  # replayed while it is down
        second = _start_aggregator(server, tmp_path, min_updates=1)  # one counted replay would make v2
        await _until_settled(js, 1)
        state = await _round_state(js)
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
    assert (await store.latest()).version == 1  # type: ignore[union-attr]
    assert all([await _blob_gone(us, r.object_name) for r in refs])
    assert state is not None and state.to_delete == [] and not state.accepted
    assert sorted(decode(data, DeltaRef).worker_id for data in state.consumed) == ["a", "b"]


async def _wait_alive(process: ServiceProcess, store: ModelStore, version: int) -> ModelVersion:
    """Until ``version`` is published; fails at once if the process exits first."""

    async def published() -> ModelVersion | None:
        latest = await store.latest()
        if latest is not None and latest.version >= version:
            return latest
        assert process.returncode is None, f"the aggregator exited with {process.returncode}"
        return None

    return await wait_until(published, STEP_TIMEOUT_S, f"v{version} published")


@pytest.mark.slow
async def test_a_wrong_shape_blob_in_a_persisted_round_does_not_crash_the_restarted_aggregator(
    server: NatsServer, nc: NATS, tmp_path: Path
) -> None:
    """Main crashed on every restart while the round holding a rewritten wrong-shape blob was due."""
    js = nc.jetstream()
    us = DeltaStore(js, "us")
    store = await ModelStore.open(js)
    first = _start_aggregator(server, tmp_path)  # 3 updates needed: the round stays open
    second: ServiceProcess | None = None
    try:
        await _wait_latest(store, 0)
        a = await submit_delta(js, us, worker_id="a", base_version=0, samples=4, delta=_process_delta(0.5))
        await submit_delta(js, us, worker_id="b", base_version=0, samples=4, delta=_process_delta(-0.25))
        await _until_persisted(js, 2)
        first.kill()
        await us.put(a.object_name, encode_tensors(WRONG_SHAPE_FOR_PROCESS))
        second = _start_aggregator(server, tmp_path, min_updates=2, round_timeout_s=ROUND_TIMEOUT_S)
        meta = await _wait_alive(second, store, 1)
        await _until_settled(js, 1)
        assert second.returncode is None
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
    assert meta.contributors == ["b"]
    weights = await store.weights(meta)
    assert np.array_equal(weights["dec.weight"], np.full((3, 2), BASE - 0.25, np.float32))


def _refused(reason: str) -> float:
    return REGISTRY.get_sample_value("mvs_worker_versions_refused_total", {"reason": reason}) or 0.0


def _learner(model: object, tmp_path: Path, worker_id: str) -> FederatedLearner:
    return FederatedLearner(
        FederatedConfig(buffer_dir=tmp_path / worker_id),
        model,  # type: ignore[arg-type]
        ThreadPoolExecutor(1),
        fetch_style=None,  # type: ignore[arg-type]
        worker_id=worker_id,
        region="fl",
    )


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["non_finite", "shape"])
async def test_a_worker_refuses_a_global_version_that_does_not_fit_its_model(
    server: NatsServer, nc: NATS, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A version with a valid SHA-256 but NaN weights (what main's aggregator published after the swap) or another
    shape: a serving worker refuses it (counted) and keeps its model; a starting worker takes the newest good one."""
    model = tiny_retrainable_dnn()
    v0_weights = {name: value + 0.01 for name, value in model.learned_state().items()}
    store = await ModelStore.open(nc.jetstream())
    await store.publish(v0_weights, ModelVersion(version=0, object_name=""))
    serving = _learner(model, tmp_path, "edge-1")
    starting = _learner(tiny_retrainable_dnn(), tmp_path, "edge-2")
    before = _refused(damage)
    try:
        await serving.start(nc)
        assert serving.base_version == 0
        bad = dict(v0_weights)
        name = sorted(bad)[0]
        bad[name] = np.full_like(bad[name], np.nan) if damage == "non_finite" else bad[name].reshape(-1)[:-1]
        v1 = await store.publish(bad, ModelVersion(version=1, object_name="", parent=0))
        await nc.publish(FL_GLOBAL_SUBJECT, encode(v1))
        refused = "global model version refused"
        await wait_until(
            lambda: refused in caplog.text or serving.base_version != 0, TRAINING_WAIT_S, "v1 refused or adopted"
        )
        assert serving.base_version == 0
        assert all(np.array_equal(model.learned_state()[k], v0_weights[k]) for k in v0_weights)
        assert serving.refusals == {damage: 1}
        await starting.start(nc)
        assert starting.base_version == 0 and starting.refusals == {damage: 1}
    finally:
        serving.close()
        starting.close()
    assert _refused(damage) - before == 2


async def test_the_aggregator_does_not_go_on_from_a_non_finite_version(server: NatsServer, nc: NATS) -> None:
    """Main's aggregator carried on from the all-NaN v1 of the report (a NaN model norm passes every bound): now it
    refuses to start from it, as from a version that fails its digest."""
    store = await ModelStore.open(nc.jetstream())
    await store.publish({"dec.weight": np.full((4, 4), np.nan, np.float32)}, ModelVersion(version=0, object_name=""))
    aggregator = Aggregator(AggregatorConfig(nats_url=server.url, durable="nan"))
    try:
        with pytest.raises(RuntimeError, match="NaN/Inf"):
            await aggregator.start()
    finally:
        await aggregator.stop()
