"""Federated learning on this machine (``python -m bench.federated``): the paper's Fig. 7 and costs.

* Fig. 7: held-out Eq. 5 loss of the global model vs images trained per edge, for 1, 2 and 4 edges.
  Each edge trains on its own disjoint share of the training photographs and syncs every M images
  through the real thing: fp16 deltas in the JetStream model store, the aggregator's FedAvg round,
  the new global version loaded back.
* Aggregation time for 4 deltas and delta bytes against fp32 weights.
* p95 stylize latency of a worker under the same request load, with and without idle-time retraining.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import nats
import numpy as np
import torch

from aggregator.service import Aggregator, AggregatorConfig
from aggregator.store import ModelStore, submit_delta
from aggregator.strategies import FedAvg, Update
from bench.common import machine, write_results
from deploy.nats import NatsServer
from edge_worker.federated import DELTA_DTYPE, FederatedConfig
from edge_worker.model.stylizer import PhotoStylizer
from edge_worker.retrain import RetrainableStylizer
from edge_worker.service import StylizerWorker, WorkerConfig
from edge_worker.train import (
    BUNDLED_PHOTOS,
    HELD_OUT_PHOTOS,
    HELD_OUT_STYLES,
    STYLE_JITTER,
    bundled_photo,
    colour_jitter,
)
from streaming.images import encode_jpeg
from streaming.protocol import StylizeReply, StylizeRequest, decode, encode, stylize_subject
from streaming.runtime import run_main
from streaming.style_store import StyleStore
from streaming.tensors import encode_tensors

EDGE_COUNTS = (1, 2, 4)
LOAD_REQUESTS = 40
LOAD_GAP_S = 0.5


def _model(config: str, model_path: Path | None) -> PhotoStylizer:
    torch.manual_seed(0)
    return PhotoStylizer.load(model_path) if model_path else PhotoStylizer.from_config(config)


def _pairs(photos: Sequence[np.ndarray], styles: Sequence[np.ndarray], count: int, rng: np.random.Generator) -> list:
    """(content, jittered style) pairs drawn from an edge's own photos."""
    return [
        (
            photos[int(rng.integers(len(photos)))],
            colour_jitter(styles[int(rng.integers(len(styles)))], STYLE_JITTER, rng),
        )
        for _ in range(count)
    ]


async def figure7(config: str, model_path: Path | None, syncs: int, sync_every: int, batch: int) -> dict[str, Any]:
    """Held-out loss vs images per edge for each edge count (each run from the same initial model)."""
    photos = [bundled_photo(n) for n in BUNDLED_PHOTOS]
    held_out = list(
        zip([bundled_photo(n) for n in HELD_OUT_PHOTOS], [bundled_photo(n) for n in HELD_OUT_STYLES], strict=True)
    )
    curves: dict[str, list[dict[str, float]]] = {}
    for edges in EDGE_COUNTS:
        base = RetrainableStylizer(_model(config, model_path))
        curve = [{"images_per_edge": 0, **base.evaluate(held_out)}]
        with NatsServer() as server:
            aggregator = Aggregator(AggregatorConfig(nats_url=server.url, min_updates=edges))
            await aggregator.start(base.learned_state())
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            store = await ModelStore.open(js)
            learners = [RetrainableStylizer(copy.deepcopy(base.model), seed=i) for i in range(edges)]
            splits = [photos[i::edges] for i in range(edges)]
            rng = np.random.default_rng(0)
            global_weights = base.learned_state()
            for sync in range(syncs):
                for i, learner in enumerate(learners):
                    learner.load_learned_state(global_weights)
                    for _ in range(sync_every // batch):
                        learner.train_step(_pairs(splits[i], photos, batch, rng))
                    state = learner.learned_state()
                    delta = {k: (state[k] - global_weights[k]).astype(DELTA_DTYPE) for k in state}
                    await submit_delta(
                        js,
                        store,
                        worker_id=f"edge-{i}",
                        region="bench",
                        base_version=sync,
                        samples=sync_every,
                        delta=delta,
                    )
                meta = None
                while meta is None:
                    meta = await aggregator.step()
                global_weights = await store.weights(meta)
                base.load_learned_state(global_weights)
                curve.append({"images_per_edge": (sync + 1) * sync_every, **base.evaluate(held_out)})
            await aggregator.stop()
            await nc.close()
        curves[str(edges)] = curve
    return curves


def costs(config: str, model_path: Path | None) -> dict[str, float]:
    """Aggregation time of 4 deltas and delta size vs fp32 weights, for this model."""
    model = RetrainableStylizer(_model(config, model_path))
    weights = model.learned_state()
    rng = np.random.default_rng(0)
    updates = [
        Update(f"e{i}", 0, 10, {k: (rng.normal(0, 1e-3, v.shape)).astype(DELTA_DTYPE) for k, v in weights.items()})
        for i in range(4)
    ]
    times = []
    for _ in range(5):
        started = time.perf_counter()
        FedAvg().aggregate(updates)
        times.append(time.perf_counter() - started)
    fp32 = len(encode_tensors(weights))
    fp16 = len(encode_tensors(updates[0].delta))
    return {
        "aggregate_4_deltas_s": min(times),
        "weights_fp32_bytes": fp32,
        "delta_fp16_bytes": fp16,
        "delta_share_of_fp32": fp16 / fp32,
        "learned_parameters": int(sum(v.size for v in weights.values())),
    }


async def latency_under_retraining(config: str, model_path: Path | None, tmp: Path) -> dict[str, Any]:
    """p50/p95 stylize latency for the same request pattern, with retraining off and on."""
    out: dict[str, Any] = {}
    frame = encode_jpeg(cv2.resize(bundled_photo("chelsea.png")[:, :, ::-1], (640, 360)))
    style = encode_jpeg(bundled_photo("coffee.png")[:, :, ::-1])
    for mode in ("serving only", "retraining when idle"):
        with NatsServer() as server:
            stylizer = RetrainableStylizer(_model(config, model_path))
            federated = FederatedConfig(
                buffer_dir=tmp / mode.replace(" ", "-"), idle_s=LOAD_GAP_S / 2, publish_every=10**9
            )
            if mode == "retraining when idle":
                aggregator = Aggregator(AggregatorConfig(nats_url=server.url))
                await aggregator.start(stylizer.learned_state())
                await aggregator.stop()
            worker = StylizerWorker(
                WorkerConfig(
                    nats_url=server.url,
                    region="bench",
                    threads=2,
                    federated=federated if mode != "serving only" else None,
                ),
                stylizer,
            )
            await worker.start()
            nc = await nats.connect(server.url)
            style_id = await (await StyleStore.open(nc.jetstream())).put(style)
            latencies = []
            for i in range(LOAD_REQUESTS):
                request = StylizeRequest(
                    stream_id="b",
                    frame_id=i,
                    style_id=style_id,
                    image=frame,
                    out_width=640,
                    out_height=360,
                    budget_ms=30_000.0,
                )
                started = time.perf_counter()
                reply = decode(
                    (await nc.request(stylize_subject("bench"), encode(request), timeout=60)).data, StylizeReply
                )
                latencies.append((time.perf_counter() - started) * 1000)
                assert reply.ok, reply.error
                await asyncio.sleep(LOAD_GAP_S)
            trained = len(worker.learner.losses) if worker.learner else 0
            await worker.stop()
            await nc.close()
        ordered = sorted(latencies[2:])  # the first requests warm caches
        out[mode] = {
            "p50_ms": statistics.median(ordered),
            "p95_ms": ordered[int(0.95 * (len(ordered) - 1))],
            "training_steps": trained,
        }
    return out


def markdown(data: dict[str, Any]) -> str:
    """Results as Markdown."""
    m, c = data["machine"], data["costs"]
    lines = [
        f"# Federated learning ({data['model']})",
        "",
        f"{m['when']}, commit {m['commit']}, {m['cpus']} CPUs, load {m['load_avg_1m']} at start.",
        "",
        f"- learned parameters: {c['learned_parameters']}; fp32 weights {c['weights_fp32_bytes']} B; fp16 delta "
        f"{c['delta_fp16_bytes']} B ({100 * c['delta_share_of_fp32']:.1f} %)",
        f"- FedAvg of 4 deltas: {1000 * c['aggregate_4_deltas_s']:.1f} ms",
        "",
        "| worker | p50 (ms) | p95 (ms) | training steps |",
        "| --- | --- | --- | --- |",
    ]
    for mode, row in data["latency"].items():
        lines.append(f"| {mode} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['training_steps']} |")
    lines += [
        "",
        "Held-out total loss of the global model vs images per edge:",
        "",
        "| images per edge | " + " | ".join(f"{e} edge(s)" for e in data["figure7"]) + " |",
        "| --- |" + " --- |" * len(data["figure7"]),
    ]
    for row in zip(*data["figure7"].values(), strict=True):
        lines.append(f"| {row[0]['images_per_edge']} | " + " | ".join(f"{p['total']:.4f}" for p in row) + " |")
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    """Fig. 7: loss vs images per edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for edges, curve in data["figure7"].items():
        ax.plot(
            [p["images_per_edge"] for p in curve], [p["total"] for p in curve], marker="o", label=f"{edges} edge(s)"
        )
    ax.set_xlabel("images trained per edge")
    ax.set_ylabel("held-out Eq. 5 loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    p = argparse.ArgumentParser(
        prog="python -m bench.federated", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="tiny", help="model config when --model is not given")
    p.add_argument("--model", type=Path, default=None, help="a saved PhotoStylizer (e.g. the bundled model)")
    p.add_argument("--syncs", type=int, default=6)
    p.add_argument("--sync-every", type=int, default=16, help="images each edge trains between syncs (M)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    data: dict[str, Any] = {
        "machine": machine(),
        "model": str(args.model or args.config),
        "syncs": args.syncs,
        "sync_every": args.sync_every,
    }
    data["costs"] = costs(args.config, args.model)
    tmp = Path(args.out or "out") / "bench-federated"
    data["latency"] = run_main(latency_under_retraining(args.config, args.model, tmp))
    data["figure7"] = run_main(figure7(args.config, args.model, args.syncs, args.sync_every, args.batch))
    json_path, md_path = write_results("federated", data, markdown(data), *([args.out] if args.out else []))
    plot(data, json_path.with_suffix(".png"))
    print(markdown(data))


if __name__ == "__main__":
    main()
