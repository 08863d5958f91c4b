"""Federated learning on this machine (``python -m bench.federated``): the paper's Fig. 7 and costs.

* Fig. 7: held-out Eq. 5 loss (total, content, style) of the global model vs images trained per
  edge, for 1, 2 and 4 edges (optionally also with a server learning rate). Each edge trains on its
  own disjoint share of the training photographs and syncs every M images through the real thing:
  fp16 deltas in the JetStream model store, the aggregator's FedAvg round, the new global version
  loaded back. Then the images per edge each setup needs to reach the 1-edge final loss.
* Aggregation time for 4 deltas, delta bytes against fp32 weights, and the cost of real rounds.
* p95 stylize latency of a worker under the same request load, with and without idle-time retraining.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import nats
import numpy as np
import torch

from aggregator.service import Aggregator, AggregatorConfig
from aggregator.strategies import DEFAULT_SERVER_LR, FedAvg, Update
from bench.common import RESULTS_DIR, machine, table, write_results
from deploy.nats_servers import NatsServer
from edge_worker.federated import DELTA_DTYPE, FederatedConfig
from edge_worker.model.stylizer import PhotoStylizer
from edge_worker.retrain import RetrainableStylizer
from edge_worker.service import StylizerWorker, WorkerConfig
from edge_worker.training import (
    BUNDLED_PHOTOS,
    HELD_OUT_PHOTOS,
    HELD_OUT_STYLES,
    STYLE_JITTER,
    bundled_photo,
    colour_jitter,
)
from streaming.images import encode_jpeg
from streaming.model_store import DeltaStore, ModelStore, submit_delta
from streaming.protocol import StylizeReply, StylizeRequest, decode, encode, stylize_subject
from streaming.runtime import run_main
from streaming.style_store import StyleStore
from streaming.tensors import encode_tensors

EDGE_COUNTS = (1, 2, 4)
SCALED_EDGE_COUNTS = (2, 4)
"""Edge counts also run with the server learning rate η = edges (``--scaled-server-lr``)."""
EVAL_SEEDS = (0, 1, 2)
"""Held-out crops and r of each evaluation; the losses are averaged over them."""
LOSS_NAMES = ("total", "content", "style")
INIT_SEED = 0
LOAD_REQUESTS = 40
LOAD_GAP_S = 0.5
WARMUP_REQUESTS = 2
"""Requests not counted: they warm caches and fill the retraining buffer (its batch size)."""
FIRST_STEP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Setup:
    """One curve of Fig. 7: how many edges, and the aggregator's server learning rate."""

    edges: int
    server_lr: float = DEFAULT_SERVER_LR

    @property
    def label(self) -> str:
        """Its name in the results."""
        name = f"{self.edges} edge" + ("s" if self.edges > 1 else "")
        return name if self.server_lr == DEFAULT_SERVER_LR else f"{name}, server lr {self.server_lr:g}"


def _model(config: str, model_path: Path | None, fresh_learned: bool = False) -> PhotoStylizer:
    """The model to measure; with ``fresh_learned``, the saved model's frozen encoder under newly initialized
    (seeded) colorization, decoder and meta-smoothing."""
    torch.manual_seed(INIT_SEED)
    if model_path is None:
        return PhotoStylizer.from_config(config)
    saved = PhotoStylizer.load(model_path)
    if not fresh_learned:
        return saved
    torch.manual_seed(INIT_SEED)
    model = PhotoStylizer.from_config(saved.config)
    model.encoder.load_state_dict(saved.encoder.state_dict())
    return model.eval()


def _pairs(photos: Sequence[np.ndarray], styles: Sequence[np.ndarray], count: int, rng: np.random.Generator) -> list:
    """(content, jittered style) pairs drawn from an edge's own photos."""
    return [
        (
            photos[int(rng.integers(len(photos)))],
            colour_jitter(styles[int(rng.integers(len(styles)))], STYLE_JITTER, rng),
        )
        for _ in range(count)
    ]


def held_out_losses(stylizer: RetrainableStylizer, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Eq. 5 losses on the held-out pairs, averaged over :data:`EVAL_SEEDS` (crops and r)."""
    runs = [stylizer.evaluate(pairs, seed) for seed in EVAL_SEEDS]
    return {name: statistics.fmean(run[name] for run in runs) for name in LOSS_NAMES}


def images_to_reach(curve: Sequence[dict[str, float]], target: float) -> float | None:
    """Images per edge at which the total loss first gets to ``target`` (linear between points); None if never."""
    previous = None
    for point in curve:
        if point["total"] <= target:
            if previous is None:
                return float(point["images_per_edge"])
            x0, y0, x1, y1 = previous["images_per_edge"], previous["total"], point["images_per_edge"], point["total"]
            return x0 + (y0 - target) / (y0 - y1) * (x1 - x0)
        previous = point
    return None


def _reach_target(curves: dict[str, list[dict[str, float]]], reference: str, target: float) -> dict[str, Any]:
    base = images_to_reach(curves[reference], target)
    out: dict[str, Any] = {}
    for label, curve in curves.items():
        images = images_to_reach(curve, target)
        out[label] = {
            "images_per_edge": images,
            "ratio_to_reference": images / base if images is not None and base else None,
        }
    return out


def reach(curves: dict[str, list[dict[str, float]]], reference: str) -> dict[str, Any]:
    """Images per edge each setup needs to reach the ``reference`` run's final total loss, and the ratio to the
    reference's own (same rule); the same for half the reference's drop (start to final), which a plateau's
    point-to-point noise does not decide."""
    start, target = curves[reference][0]["total"], curves[reference][-1]["total"]
    half = start - (start - target) / 2
    return {
        "target_total": target,
        "reference": reference,
        "setups": _reach_target(curves, reference, target),
        "half_drop_total": half,
        "half_drop": _reach_target(curves, reference, half),
    }


async def run_setup(
    setup: Setup,
    initial: RetrainableStylizer,
    photos: Sequence[np.ndarray],
    held_out: Sequence[tuple[np.ndarray, np.ndarray]],
    syncs: int,
    sync_every: int,
    batch: int,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """One Fig. 7 curve (points after each sync) and its round costs: every edge trains ``sync_every`` images of
    its own disjoint share, submits its fp16 delta to JetStream, the aggregator closes the round, all load it."""
    base = RetrainableStylizer(copy.deepcopy(initial.model))
    curve: list[dict[str, float]] = []
    round_s, delta_bytes = [], []
    with NatsServer(regions=["bench"]) as server:
        aggregator = Aggregator(
            AggregatorConfig(nats_url=server.url, min_updates=setup.edges, server_lr=setup.server_lr)
        )
        await aggregator.start(base.learned_state())
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        store = await ModelStore.open(js)
        deltas = DeltaStore(js, "bench")
        learners = [RetrainableStylizer(copy.deepcopy(base.model), seed=i) for i in range(setup.edges)]
        splits = [photos[i :: setup.edges] for i in range(setup.edges)]
        rng = np.random.default_rng(0)
        global_weights = base.learned_state()
        for sync in range(syncs):
            for i, learner in enumerate(learners):
                learner.load_learned_state(global_weights)
                for _ in range(sync_every // batch):
                    learner.train_step(_pairs(splits[i], photos, batch, rng))
                state = learner.learned_state()
                delta = {k: (state[k] - global_weights[k]).astype(DELTA_DTYPE) for k in state}
                delta_bytes.append(len(encode_tensors(delta)))
                await submit_delta(
                    js,
                    deltas,
                    worker_id=f"edge-{i}",
                    base_version=sync,
                    samples=sync_every,
                    delta=delta,
                )
            started = time.perf_counter()
            meta = None
            while meta is None:
                meta = await aggregator.step()
            round_s.append(time.perf_counter() - started)
            global_weights = await store.weights(meta)
            base.load_learned_state(global_weights)
            curve.append({"images_per_edge": (sync + 1) * sync_every, **held_out_losses(base, held_out)})
        await aggregator.stop()
        await nc.close()
    return curve, {"round_s_median": statistics.median(round_s), "delta_bytes_mean": statistics.fmean(delta_bytes)}


async def figure7(
    model: PhotoStylizer, setups: Sequence[Setup], syncs: int, sync_every: int, batch: int
) -> dict[str, Any]:
    """Held-out loss vs images per edge for each setup (each run from the same initial model), the images per
    edge each needs to reach the 1-edge final loss, and the cost of a round."""
    photos = [bundled_photo(n) for n in BUNDLED_PHOTOS]
    held_out = [(bundled_photo(p), bundled_photo(s)) for p in HELD_OUT_PHOTOS for s in HELD_OUT_STYLES]
    initial = RetrainableStylizer(model)
    start = {"images_per_edge": 0, **held_out_losses(initial, held_out)}
    curves: dict[str, list[dict[str, float]]] = {}
    rounds: dict[str, dict[str, float]] = {}
    for setup in setups:
        curve, cost = await run_setup(setup, initial, photos, held_out, syncs, sync_every, batch)
        curves[setup.label], rounds[setup.label] = [start, *curve], cost
    return {"curves": curves, "rounds": rounds, "reach": reach(curves, setups[0].label)}


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


async def _first_step(losses: list[float]) -> None:
    while not losses:
        await asyncio.sleep(LOAD_GAP_S / 10)


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
                if i == WARMUP_REQUESTS - 1 and worker.learner is not None:  # measure a learner that is training
                    await asyncio.wait_for(_first_step(worker.learner.losses), FIRST_STEP_TIMEOUT_S)
            trained = len(worker.learner.losses) if worker.learner else 0
            await worker.stop()
            await nc.close()
        ordered = sorted(latencies[WARMUP_REQUESTS:])
        out[mode] = {
            "p50_ms": statistics.median(ordered),
            "p95_ms": ordered[int(0.95 * (len(ordered) - 1))],
            "training_steps": trained,
        }
    return out


def _fmt_images(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f}"


def _fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def markdown(data: dict[str, Any]) -> str:
    """Results as Markdown."""
    m, c, f = data["machine"], data["costs"], data["figure7"]
    lines = [
        f"# Federated learning ({data['model']})",
        "",
        f"{m['when']}, commit {m['commit']}, {m['cpus']} CPUs, load {m['load_avg_1m']} at start. "
        f"Fig. 7 from {data['initial']}; sync every M = {data['sync_every']} images per edge "
        f"(batch {data['batch']}), {data['syncs']} syncs.",
        "",
        f"- learned parameters: {c['learned_parameters']}; fp32 weights {c['weights_fp32_bytes']} B; random fp16 "
        f"delta {c['delta_fp16_bytes']} B ({100 * c['delta_share_of_fp32']:.1f} %)",
        f"- FedAvg of 4 deltas: {1000 * c['aggregate_4_deltas_s']:.1f} ms",
        "",
        *(
            [f"Latency re-measured alone at commit {lm['commit']} ({lm['when']}, load {lm['load_avg_1m']}):", ""]
            if (lm := data.get("latency_machine"))
            else []
        ),
        *table(
            ["worker", "p50 (ms)", "p95 (ms)", "training steps"],
            [
                [mode, f"{row['p50_ms']:.0f}", f"{row['p95_ms']:.0f}", row["training_steps"]]
                for mode, row in data["latency"].items()
            ],
        ),
    ]
    curves = f["curves"]
    lines += [
        "",
        "Held-out Eq. 5 loss (total / content / style) of the global model vs images per edge:",
        "",
        *table(
            ["images per edge", *curves],
            [
                [row[0]["images_per_edge"]] + [f"{p['total']:.4f} / {p['content']:.4f} / {p['style']:.4f}" for p in row]
                for row in zip(*curves.values(), strict=True)
            ],
        ),
    ]
    r = f["reach"]
    lines += [
        "",
        f"Images per edge to first reach the {r['reference']} final total loss {r['target_total']:.4f} "
        "(linear between points), and rounds through JetStream and the aggregator:",
        "",
    ]
    rows = []
    for label, row in r["setups"].items():
        cost = f["rounds"][label]
        rows.append(
            [label, _fmt_images(row["images_per_edge"]), _fmt_ratio(row["ratio_to_reference"])]
            + [f"{cost['delta_bytes_mean']:.0f}", f"{100 * cost['delta_bytes_mean'] / c['weights_fp32_bytes']:.1f} %"]
            + [f"{1000 * cost['round_s_median']:.0f}"]
        )
    header = ["setup", "images per edge", "ratio to 1 edge", "real delta (B)", "delta / fp32 weights", "round (ms)"]
    lines += table(header, rows)
    if "half_drop" in r:
        lines += [
            "",
            f"Images per edge to first get halfway from the start to the {r['reference']} final loss "
            f"({r['half_drop_total']:.4f}):",
            "",
            *table(
                ["setup", "images per edge", "ratio to 1 edge"],
                [
                    [label, _fmt_images(row["images_per_edge"]), _fmt_ratio(row["ratio_to_reference"])]
                    for label, row in r["half_drop"].items()
                ],
            ),
        ]
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    """Fig. 7: total, content and style loss vs images per edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LOSS_NAMES), figsize=(12, 3.6))
    target = data["figure7"]["reach"]["target_total"]
    for ax, loss in zip(axes, LOSS_NAMES, strict=True):
        for label, curve in data["figure7"]["curves"].items():
            ax.plot(
                [p["images_per_edge"] for p in curve],
                [p[loss] for p in curve],
                marker="o",
                markersize=3,
                linestyle="--" if "server lr" in label else "-",
                label=label,
            )
        if loss == "total":
            ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label="1-edge final")
        ax.set_xlabel("images trained per edge")
        ax.set_ylabel(f"held-out {loss} loss")
    axes[0].legend(fontsize=8)
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
    p.add_argument(
        "--fresh-learned",
        action="store_true",
        help="Fig. 7 from --model's frozen encoder with newly initialized (seeded) colorization, decoder and "
        "meta-smoothing, i.e. the untrained architecture; costs and latency still use --model as saved",
    )
    p.add_argument(
        "--scaled-server-lr",
        action="store_true",
        help=f"also run {' and '.join(map(str, SCALED_EDGE_COUNTS))} edges with the aggregator's server learning "
        "rate equal to the edge count (aggregator --server-lr)",
    )
    p.add_argument("--syncs", type=int, default=6)
    p.add_argument("--sync-every", type=int, default=16, help="images each edge trains between syncs (M)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--only-latency",
        action="store_true",
        help="re-measure the stylize latency with and without retraining only; the other sections are kept from "
        "the results JSON (with the commit they were measured at)",
    )
    args = p.parse_args(argv)
    if args.fresh_learned and args.model is None:
        p.error("--fresh-learned needs --model (a --config model is untrained already)")
    torch.set_num_threads(2)
    tmp = Path(args.out or "out") / "bench-federated"
    if args.only_latency:
        json_path = (args.out or RESULTS_DIR) / "federated.json"
        kept: dict[str, Any] = json.loads(json_path.read_text())
        kept["latency"] = run_main(latency_under_retraining(args.config, args.model, tmp))
        kept["latency_machine"] = machine()
        write_results("federated", kept, markdown(kept), json_path.parent)
        print(markdown(kept))
        return
    setups = [Setup(n) for n in EDGE_COUNTS]
    if args.scaled_server_lr:
        setups += [Setup(n, server_lr=float(n)) for n in SCALED_EDGE_COUNTS]
    data: dict[str, Any] = {
        "machine": machine(),
        "model": str(args.model or args.config),
        "initial": "fresh learned modules, frozen encoder of the model" if args.fresh_learned else "the model",
        "syncs": args.syncs,
        "sync_every": args.sync_every,
        "batch": args.batch,
        "eval_seeds": list(EVAL_SEEDS),
    }
    data["costs"] = costs(args.config, args.model)
    data["latency"] = run_main(latency_under_retraining(args.config, args.model, tmp))
    model = _model(args.config, args.model, args.fresh_learned)
    data["figure7"] = run_main(figure7(model, setups, args.syncs, args.sync_every, args.batch))
    json_path, md_path = write_results("federated", data, markdown(data), *([args.out] if args.out else []))
    plot(data, json_path.with_suffix(".png"))
    print(markdown(data))


if __name__ == "__main__":
    main()
