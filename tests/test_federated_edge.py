"""Edge side of federated learning on a real nats-server with a real aggregator: adopt before
serving, retrain only when idle, publish an fp16 delta once per base version, adopt new versions."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import nats
import numpy as np
import pytest
import torch

from aggregator.service import Aggregator, AggregatorConfig
from deploy.nats_servers import NatsServer
from edge_worker.federated import FederatedConfig
from edge_worker.key_buffer import KeyFrameBuffer
from edge_worker.lite_training import RetrainableLite
from edge_worker.model.base import Trainable
from edge_worker.model.lite import LITE_CONFIGS
from edge_worker.service import StylizerWorker, WorkerConfig
from edge_worker.trainer_process import TrainerProcess
from mobile_sim.sources import sample_photo
from streaming.images import encode_jpeg
from streaming.model_store import ModelStore
from tests.support import TRAINING_WAIT_S, serve_key_frames, tiny_retrainable_dnn, wait_until, wait_until_sync

WAIT_S = TRAINING_WAIT_S


def _tiny_lite() -> RetrainableLite:
    """The lite stylizer (ImageNet encoder, learned head) in its tiny test configuration, retrainable."""
    torch.manual_seed(0)
    return RetrainableLite(LITE_CONFIGS["tiny"])


def test_key_frame_buffer_is_bounded_and_survives_restarts(tmp_path: Path) -> None:
    buffer = KeyFrameBuffer(tmp_path, capacity=3)
    for i in range(5):
        buffer.add(bytes([i]) * 10, "ab12")
    assert len(buffer) == 3
    again = KeyFrameBuffer(tmp_path, capacity=3)
    assert len(again) == 3 and not list(tmp_path.glob("*.tmp"))
    again.add(b"new", "cd34")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0].startswith("000000000003") and names[-1] == "000000000005-cd34.jpg"
    picked = again.sample(10, random.Random(0))
    assert len(picked) == 3 and {p.style_id for p in picked} <= {"ab12", "cd34"}
    with pytest.raises(ValueError):
        again.add(b"x", "../../etc")


def test_interim_colour_transfer_cannot_join_federated_learning() -> None:
    from edge_worker.model.color_transfer import LinearColorTransfer

    assert isinstance(tiny_retrainable_dnn(), Trainable) and not isinstance(LinearColorTransfer(), Trainable)


def _process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (R, S, T for stopped, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.slow
def test_trainer_process_is_frozen_while_paused_and_goes_on_after() -> None:
    model = tiny_retrainable_dnn()
    trainer = TrainerProcess(model, threads=1)
    try:
        start = trainer.learned_state()
        assert all(np.array_equal(start[k], v) for k, v in model.learned_state().items())
        assert trainer.pid is not None
        trainer.pause()
        # SIGSTOP lands asynchronously
        wait_until_sync(lambda: _process_state(trainer.pid) == "T", 1.0, "the trainer process stopped", poll_s=0.01)
        assert trainer.paused
        photo = cv2.cvtColor(sample_photo(), cv2.COLOR_BGR2RGB)
        with ThreadPoolExecutor(max_workers=1) as pool:
            step = pool.submit(trainer.train_step, [(photo, photo), (photo, photo)])
            time.sleep(0.5)
            assert not step.done()  # a stopped child computes nothing
            trainer.resume()
            assert np.isfinite(step.result(timeout=WAIT_S))
        assert any(not np.array_equal(start[k], v) for k, v in trainer.learned_state().items())
        with pytest.raises(RuntimeError, match="does not match"):
            trainer.load_learned_state({"nope": np.zeros(1, np.float32)})
        trainer.load_learned_state(start)  # the child survived the bad call
        assert all(np.array_equal(start[k], v) for k, v in trainer.learned_state().items())
    finally:
        trainer.close()
    assert not Path(f"/proc/{trainer.pid}").exists() or _process_state(trainer.pid) in ("Z", "X")


@pytest.mark.slow
@pytest.mark.parametrize("make_model", [tiny_retrainable_dnn, _tiny_lite], ids=["dnn", "lite"])
async def test_worker_adopts_trains_when_idle_publishes_and_follows(
    tmp_path: Path, make_model: Callable[[], Trainable]
) -> None:
    with NatsServer(regions=["fl"]) as server:
        model = make_model()
        initial = {name: value + 0.01 for name, value in model.learned_state().items()}  # v0 != the bundled weights
        aggregator = Aggregator(AggregatorConfig(nats_url=server.url, min_updates=1))
        await aggregator.start(initial)
        agg_task = asyncio.create_task(aggregator.run())
        worker = StylizerWorker(
            WorkerConfig(
                nats_url=server.url,
                region="fl",
                worker_id="edge-1",
                threads=1,
                federated=FederatedConfig(buffer_dir=tmp_path / "buffer", idle_s=0.3, publish_every=4),
            ),
            stylizer=model,
        )
        nc = await nats.connect(server.url)
        try:
            await worker.start()
            # Adopted v0 before serving anything.
            assert worker.learner is not None and worker.learner.base_version == 0
            assert all(np.array_equal(model.learned_state()[k], initial[k]) for k in initial)
            await serve_key_frames(nc, 4)
            assert len(worker.learner.buffer) == 4 and not worker.learner.losses  # no training while busy
            await wait_until(lambda: worker.learner.base_version == 1, WAIT_S, "the worker adopting v1")
            store = await ModelStore.open(nc.jetstream())
            v1 = await store.latest()
            assert v1 is not None and v1.version == 1 and v1.contributors == ["edge-1"] and v1.samples >= 4
            adopted, published = model.learned_state(), await store.weights(v1)
            assert all(np.array_equal(adopted[k], published[k]) for k in adopted)
            assert any(not np.allclose(adopted[k], initial[k]) for k in adopted)  # training moved the weights
            assert np.isfinite(v1.loss)
        finally:
            agg_task.cancel()
            await asyncio.gather(agg_task, return_exceptions=True)
            await worker.stop()
            await aggregator.stop()
            await nc.close()


@pytest.mark.slow
async def test_without_a_model_store_the_worker_keeps_the_bundled_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from edge_worker.federated import FederatedLearner

    with NatsServer(jetstream=False) as server:
        nc = await nats.connect(server.url)
        model = tiny_retrainable_dnn()
        bundled = model.learned_state()
        learner = FederatedLearner(
            FederatedConfig(buffer_dir=tmp_path),
            model,
            ThreadPoolExecutor(1),
            fetch_style=None,  # type: ignore[arg-type]
            worker_id="edge-x",
            region="fl",
        )
        try:
            await learner.start(nc)
            await learner.publish()  # nothing to publish to: a no-op, not a crash
        finally:
            learner.close()
            await nc.close()
    assert learner.base_version == -1 and "model store unreachable" in caplog.text
    assert all(np.array_equal(model.learned_state()[k], bundled[k]) for k in bundled)


@pytest.mark.slow
async def test_buffered_frames_whose_style_is_gone_are_dropped_and_training_goes_on(tmp_path: Path) -> None:
    """A restarted worker's buffer may hold frames of styles the store no longer has: they are dropped, the
    learner keeps training on the others and is never left frozen."""
    stale = KeyFrameBuffer(tmp_path / "buffer")
    for _ in range(3):
        stale.add(encode_jpeg(cv2.resize(sample_photo(), (64, 36))), "deadbeef")
    with NatsServer(regions=["fl"]) as server:
        model = tiny_retrainable_dnn()
        aggregator = Aggregator(AggregatorConfig(nats_url=server.url))
        await aggregator.start(model.learned_state())
        await aggregator.stop()
        worker = StylizerWorker(
            WorkerConfig(
                nats_url=server.url,
                region="fl",
                threads=1,
                federated=FederatedConfig(buffer_dir=tmp_path / "buffer", idle_s=0.2, publish_every=10**6),
            ),
            stylizer=model,
        )
        nc = await nats.connect(server.url)
        try:
            await worker.start()
            assert worker.learner is not None
            await serve_key_frames(nc, 2)
            learner = worker.learner

            def stale_left() -> bool:
                return any(p.name.endswith("-deadbeef.jpg") for p in (tmp_path / "buffer").iterdir())

            await wait_until(
                lambda: not stale_left() and len(learner.losses) >= 2, WAIT_S, "stale frames dropped and two trainings"
            )
            assert len(learner.buffer) == 2 and not learner.trainer.paused
        finally:
            await worker.stop()
            await nc.close()


@pytest.mark.slow
async def test_a_style_fetch_timeout_keeps_the_buffered_frame(tmp_path: Path) -> None:
    """A busy store is not a missing style: the frame stays for a later step (TimeoutError is an OSError)."""
    from concurrent.futures import ThreadPoolExecutor

    from edge_worker.federated import FederatedLearner

    async def busy_store(style_id: str) -> bytes:
        raise TimeoutError(f"style {style_id} not fetched in time")

    learner = FederatedLearner(
        FederatedConfig(buffer_dir=tmp_path, batch_size=2),
        tiny_retrainable_dnn(),
        ThreadPoolExecutor(1),
        fetch_style=busy_store,
        worker_id="edge-t",
        region="fl",
    )
    try:
        for _ in range(2):
            learner.record(encode_jpeg(cv2.resize(sample_photo(), (64, 36))), "abc123")
        assert await learner.train_once() is None  # nothing usable this time
        assert len(learner.buffer) == 2 and len(list(tmp_path.glob("*.jpg"))) == 2
    finally:
        learner.close()


@pytest.mark.slow
def test_zero_threads_means_torch_default_in_the_trainer_process() -> None:
    """``mvs worker --threads 0`` (the default) with ``--federated-dir``: the trainer must not call
    ``torch.set_num_threads(0)`` (it raised, and the worker died with "the trainer process is gone")."""
    model = tiny_retrainable_dnn()
    trainer = TrainerProcess(model, threads=0)
    try:
        state = trainer.learned_state()
        assert state.keys() == model.learned_state().keys()
    finally:
        trainer.close()
    with pytest.raises(ValueError, match="threads"):
        TrainerProcess(model, threads=-1)


@pytest.mark.slow
async def test_a_worker_started_before_the_aggregator_joins_and_contributes(tmp_path: Path) -> None:
    """As the README starts the federated pair, worker first (default --threads 0), then the aggregator with
    --min-updates 2: the worker serves the bundled model, adopts v0 when the aggregator announces it, publishes a
    delta, and the round closes with that one delta after --round-timeout since it arrived; the worker adopts v1."""
    with NatsServer(regions=["fl"]) as server:
        model = tiny_retrainable_dnn()
        bundled = model.learned_state()
        worker = StylizerWorker(
            WorkerConfig(
                nats_url=server.url,
                region="fl",
                worker_id="edge-early",
                warmup=False,
                federated=FederatedConfig(buffer_dir=tmp_path / "buffer", idle_s=0.3, publish_every=4),
            ),
            stylizer=model,
        )
        aggregator = Aggregator(AggregatorConfig(nats_url=server.url, min_updates=2, round_timeout_s=1.0))
        agg_task: asyncio.Task[None] | None = None
        nc = await nats.connect(server.url)
        try:
            await worker.start()
            learner = worker.learner
            assert learner is not None and learner.base_version == -1 and not learner.joined.is_set()
            await serve_key_frames(nc, 4)  # served by the bundled model meanwhile
            await asyncio.sleep(1.0)  # idle, frames buffered: still no training without a global version
            assert not learner.losses
            initial = {name: value + 0.01 for name, value in bundled.items()}
            await aggregator.start(initial)
            agg_task = asyncio.create_task(aggregator.run())
            await wait_until(lambda: learner.base_version >= 0, WAIT_S, "the worker joining")
            await wait_until(lambda: learner.base_version == 1, WAIT_S, "the worker adopting v1")
            store = await ModelStore.open(nc.jetstream())
            v1 = await store.latest()
            assert v1 is not None and v1.version == 1 and v1.contributors == ["edge-early"]
        finally:
            if agg_task is not None:
                agg_task.cancel()
                await asyncio.gather(agg_task, return_exceptions=True)
            await worker.stop()
            await aggregator.stop()
            await nc.close()


@pytest.mark.slow
def test_a_colour_transfer_worker_with_federated_dir_is_a_one_line_error(tmp_path: Path) -> None:
    with NatsServer(regions=["fl"]) as server:
        done = subprocess.run(
            [sys.executable, "-m", "edge_worker", "--nats", server.url, "--no-warmup"]
            + ["--model", "color-transfer", "--federated-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("mvs worker: --federated-dir needs a trainable model")
