"""The scaling bench's load generator against a real nats-server and two real (emulated-accelerator) workers,
and ``python -m bench.scaling --quick`` end to end."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from bench import scaling
from bench.loadgen import OK, LoadGenerator, LoadSpec, schedule
from deploy.nats_servers import NatsServer
from edge_worker.model.emulated import EmulatedAccelerator, ServiceTimeProfile
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.sources import default_style_photo
from streaming.images import encode_jpeg
from streaming.protocol import ErrorCode
from streaming.style_store import StyleStore

STREAMS = 3
SECONDS = 2.0
BUDGET_MS = 5000.0


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
async def workers(nats_server: NatsServer, region: str) -> AsyncIterator[list[StylizerWorker]]:
    started = []
    for i in range(2):
        config = WorkerConfig(nats_url=nats_server.url, region=region, worker_id=f"w{i}", threads=1, warmup=False)
        worker = StylizerWorker(config, stylizer=EmulatedAccelerator(ServiceTimeProfile(1.0, 1.0)))
        await worker.start()
        started.append(worker)
    yield started
    for worker in started:
        await worker.stop()


def test_the_schedule_offers_each_stream_its_rate() -> None:
    paced = schedule(LoadSpec(streams=2.5, duration_s=10.0, budget_ms=100.0, arrivals="paced"))
    per_stream = Counter(stream for _, stream in paced)
    assert per_stream == {0: 60, 1: 60, 2: 30}  # 6 keys/s each, the half stream 3 keys/s
    assert [t for t, _ in paced] == sorted(t for t, _ in paced)
    poisson = schedule(LoadSpec(streams=20, duration_s=10.0, budget_ms=100.0))
    assert len(poisson) == pytest.approx(1200, rel=0.1)


@pytest.mark.slow
async def test_every_request_is_answered_ok_and_counted_by_stream(
    nc: NATS, region: str, workers: list[StylizerWorker]
) -> None:
    style_id = await (await StyleStore.open(nc.jetstream())).put(encode_jpeg(default_style_photo()))
    generator = LoadGenerator(nc, region, scaling.key_frame_jpeg(), style_id)
    spec = LoadSpec(streams=STREAMS, duration_s=SECONDS, budget_ms=BUDGET_MS, arrivals="paced")
    expected = Counter(stream for _, stream in schedule(spec))
    result = await generator.run(spec)
    assert len(result.records) == sum(expected.values()) == STREAMS * 12
    assert result.outcomes() == {OK: len(result.records)}
    summary = result.summary()
    assert summary["by_stream"] == dict(expected)
    assert summary["ok"] == len(result.records) and summary["ok_fraction"] == 1.0
    assert sum(summary["by_worker"].values()) == len(result.records)
    assert set(summary["by_worker"]) == {"w0", "w1"}  # the queue group spread the load
    assert sum(w.served for w in workers) == len(result.records)
    assert summary["mean_batch"] == 1.0 and summary["deadline_misses"] == 0
    assert all(r.sent_ns >= r.due_ns and r.reply_ns > r.sent_ns for r in result.records)


@pytest.mark.slow
async def test_a_region_without_workers_is_no_workers_not_a_timeout(nc: NATS, region: str) -> None:
    generator = LoadGenerator(nc, region, scaling.key_frame_jpeg(), "no-style")
    result = await generator.run(LoadSpec(streams=1, duration_s=1.0, budget_ms=BUDGET_MS, arrivals="paced"))
    assert result.outcomes() == {ErrorCode.NO_WORKERS: 6}


@pytest.mark.slow
def test_quick_bench_writes_its_results(tmp_path: Path) -> None:
    scaling.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "scaling.json").read_text())
    assert (tmp_path / "scaling.md").read_text().startswith("# Horizontal scaling")
    assert (tmp_path / "scaling.png").stat().st_size > 0
    assert data["config"]["quick"] and data["machine"]["cpus"] >= 1
    assert data["generator_ceiling"]["sent_keys_s"] > 0
    rows = data["emulated"]
    assert {(r["batching"], r["workers"]) for r in rows} == {(b, k) for b in ("off", "on") for k in (1, 2)}
    for row in rows:
        assert {"capacity_keys_s", "max_throughput_keys_s", "efficiency", "saturated", "healthy"} <= set(row)
        # Offered 1.5x what the workers can do, they do most of it (a loaded CI box loses some), never more.
        assert 0.5 * row["capacity_keys_s"] <= row["max_throughput_keys_s"] <= 1.05 * row["capacity_keys_s"]
        assert row["saturated"]["outcomes"].get("overloaded", 0) > 0  # the excess is shed, and answered
        healthy = row["healthy"]
        assert {"p50", "p95", "p99"} <= set(healthy["latency_ms"]) and healthy["mean_batch"] >= 1.0
    assert data["dnn"] is None and data["gateway"] is None and data["placement"] is None
