"""The paper's DNN on an accelerator: agreement with the CPU, key time by size, batched throughput, streams per GPU.

``python -m bench.gpu`` (device ``auto``: the GPU when there is one) writes ``bench/results/gpu.{json,md}``:

- **agreement**: the stylized frame on the device against the CPU's fp32 reference (PSNR, max difference), with
  the network in fp32 and under fp16 autocast (the served path on CUDA);
- **key time**: one key frame's coefficients (what a worker sends) and its rendered frame, by output size;
- **batched throughput** at 640x360: ``coefficients_batch`` of B key frames (two styles), keys/s and the batch
  latency (p50/p95), for B = 1 ... 64; an out-of-memory batch is recorded and larger ones skipped;
- **streams per GPU** at K = 5 (30 fps, 6 keys/s per stream) within a p95 budget of 100 ms: the largest B whose
  p95 batch latency plus the time to fill that batch (B / throughput, at an arrival rate equal to the throughput)
  fits the budget; streams = that throughput / 6. An upper bound: it assumes the GPU busy all the time and
  ignores queueing beyond one batch;
- the ``emulated_profile``: fixed + per-item milliseconds fitted to the batch latencies (least squares), the
  numbers :class:`~edge_worker.model.emulated.EmulatedAccelerator` should take.

It needs only torch, numpy and OpenCV beside this repository (frames and styles are synthetic, nothing is
downloaded) and stops starting new measurements after ``--time-limit`` seconds, so one command on a GPU machine
finishes in well under 5 minutes. Times on GPU are wall clock around calls that end in a host copy, after
``torch.cuda.synchronize()``; CUDA event times of the same calls are recorded beside them. ``--device cpu
--quick`` (small sizes, B up to 4, few repeats, work size 128) runs anywhere in seconds, as the test does.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bench.common import RESULTS_DIR, machine, table, write_results
from edge_worker.model.base import Size
from edge_worker.model.device import CUDA, DEFAULT_DEVICE, DEVICE_SPECS, device_name, resolve_device, synchronize
from edge_worker.model.stylizer import DEFAULT_MODEL_PATH, PhotoStylizer, StyleState
from edge_worker.quality import psnr

logger = logging.getLogger(__name__)

NAME = "gpu"
KEY_SIZES: tuple[Size, ...] = ((512, 256), (1280, 720), (1920, 1080), (3840, 2160))
BATCH_FRAME: Size = (640, 360)
"""Frame size of the batched-throughput runs (the demo's camera)."""
BATCHES = (1, 2, 4, 8, 16, 32, 64)
AGREEMENT_FRAME: Size = (640, 360)
STREAM_FPS = 30
KEY_INTERVAL = 5
KEYS_PER_STREAM = STREAM_FPS / KEY_INTERVAL
"""Key frames per second one stream sends (6 at 30 fps, K = 5)."""
LATENCY_BUDGET_MS = 100.0
"""p95 budget of a key frame's time at the worker (waiting for its batch to fill + the batch)."""
PERCENTILE = 95
REPEATS, WARMUP = 20, 2
"""Timed calls per measurement, after this many untimed ones (cuDNN autotuning happens in those)."""
LAYOUT_BATCH = 8
"""Batch size at which channels-last is compared with NCHW."""
TIME_LIMIT_S = 240.0
"""No new measurement starts after this many seconds (the whole run must fit 5 minutes)."""
STYLE_COUNT = 2
SYNTHETIC_SHAPES = 24
SYNTHETIC_NOISE_STD = 6.0
MEBIBYTE = 2**20


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    key_sizes: tuple[Size, ...] = KEY_SIZES
    batches: tuple[int, ...] = BATCHES
    batch_frame: Size = BATCH_FRAME
    agreement_frame: Size = AGREEMENT_FRAME
    repeats: int = REPEATS
    warmup: int = WARMUP
    layout_batch: int = LAYOUT_BATCH
    work_size: int | None = None
    """Network working size (None: the model's own)."""


QUICK = Plan(
    key_sizes=((256, 144), (512, 256)),
    batches=(1, 2, 4),
    batch_frame=(320, 180),
    agreement_frame=(320, 180),
    repeats=2,
    warmup=1,
    layout_batch=2,
    work_size=128,
)
"""``--quick``: seconds on a CPU (the test)."""


def synthetic_photo(size: Size, seed: int, tint: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """A deterministic photo-like RGB uint8 frame: a smooth colour field, anti-aliased shapes, sensor noise.

    Stands in for photographs so the benchmark needs no dataset; ``tint`` scales the colour channels (styles)."""
    rng = np.random.default_rng(seed)
    width, height = size
    field = rng.uniform(30, 225, (4, 6, 3)).astype(np.float32)
    image = cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(SYNTHETIC_SHAPES):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(max(2, min(size) // 30), max(3, min(size) // 5)))
        if rng.random() < 0.5:
            cv2.circle(image, centre, radius, colour, -1, cv2.LINE_AA)
        else:
            corner = (centre[0] + radius, centre[1] + int(radius * rng.uniform(0.3, 1.5)))
            cv2.rectangle(image, centre, corner, colour, -1, cv2.LINE_AA)
    image = image * np.asarray(tint, dtype=np.float32) + rng.normal(0, SYNTHETIC_NOISE_STD, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def synthetic_styles(count: int = STYLE_COUNT) -> list[np.ndarray]:
    """Style photos with clearly different palettes (warm, cool, ...)."""
    tints = [(1.15, 0.9, 0.6), (0.6, 0.85, 1.2), (0.9, 1.1, 0.7)]
    return [synthetic_photo((512, 384), 1000 + i, tints[i % len(tints)]) for i in range(count)]


class Clock:
    """Times calls on one device: wall clock after synchronizing, and CUDA event time on a GPU."""

    def __init__(self, device: torch.device, started: float, time_limit_s: float) -> None:
        self.device = device
        self.started = started
        self.time_limit_s = time_limit_s

    def out_of_time(self) -> bool:
        """Whether the run's time limit has passed (no new measurement should start)."""
        return time.perf_counter() - self.started > self.time_limit_s

    def measure(self, call: Callable[[], object], repeats: int, warmup: int) -> dict[str, Any]:
        """``call`` run ``warmup`` times untimed, then ``repeats`` times: wall (and CUDA event) milliseconds."""
        for _ in range(warmup):
            call()
        synchronize(self.device)
        wall, events = [], []
        for _ in range(repeats):
            marks = None
            if self.device.type == CUDA:
                marks = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                marks[0].record()
            tic = time.perf_counter()
            call()
            if marks is not None:
                marks[1].record()
            synchronize(self.device)
            wall.append(1000 * (time.perf_counter() - tic))
            if marks is not None:
                events.append(marks[0].elapsed_time(marks[1]))
        return {**summary(wall), **({"event_ms": summary(events)} if events else {})}


def summary(ms: Sequence[float]) -> dict[str, Any]:
    """Median, mean, p95 and max of millisecond samples."""
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "p95_ms": round(float(np.percentile(ms, PERCENTILE)), 3),
        "max_ms": round(max(ms), 3),
    }


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (CUDA or host) rather than a bug."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def release_memory(device: torch.device) -> None:
    """Give cached device memory back after an out-of-memory batch."""
    if device.type == CUDA:
        torch.cuda.empty_cache()


def agreement(reference: PhotoStylizer, model: PhotoStylizer, plan: Plan) -> dict[str, Any]:
    """The device's stylized frames (fp32, and fp16 autocast on CUDA) against the CPU's fp32 ones."""
    frame = plan.agreement_frame
    contents = [synthetic_photo(frame, seed) for seed in range(STYLE_COUNT)]
    styles = synthetic_styles()
    expected = [reference.stylize(c, reference.prepare_style(s), frame) for c, s in zip(contents, styles, strict=True)]
    rows: dict[str, Any] = {}
    for label, half in (("fp32", False), ("fp16", True)):
        if half and model.device.type != CUDA:
            rows[label] = {"applies": False, "note": "fp16 autocast is the CUDA path; the CPU always runs fp32"}
            continue
        model.half_precision = half
        got = [model.stylize(c, model.prepare_style(s), frame) for c, s in zip(contents, styles, strict=True)]
        scores = [psnr(e, g) for e, g in zip(expected, got, strict=True)]
        worst = min(scores)
        rows[label] = {
            "applies": True,
            "identical": all(math.isinf(s) for s in scores),
            "psnr_db_min": None if math.isinf(worst) else round(worst, 2),
            "psnr_db": [None if math.isinf(s) else round(s, 2) for s in scores],
            "max_abs_diff": int(max(np.abs(e.astype(np.int16) - g).max() for e, g in zip(expected, got, strict=True))),
        }
    model.half_precision = True
    return {"frame": list(frame), "pairs": len(contents), **rows}


def key_times(model: PhotoStylizer, clock: Clock, plan: Plan, style: StyleState) -> list[dict[str, Any]]:
    """Coefficients of one key frame and the rendered frame, by output size (content at that size)."""
    rows = []
    for size in plan.key_sizes:
        if clock.out_of_time():
            rows.append({"size": list(size), "skipped": "time limit"})
            continue
        frame = synthetic_photo(size, 7)
        row: dict[str, Any] = {"size": list(size), "network_size": list(model.network_size(*size))}
        try:
            for label, method in (("coefficients", model.coefficients), ("stylize", model.stylize)):
                row[label] = clock.measure(functools.partial(method, frame, style, size), plan.repeats, plan.warmup)
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            release_memory(model.device)
            row["error"] = f"out of memory: {str(error).splitlines()[0]}"
        rows.append(row)
        logger.info("key time %s", row)
    return rows


def batch_rows(
    model: PhotoStylizer, clock: Clock, plan: Plan, styles: Sequence[StyleState], batches: Sequence[int]
) -> list[dict[str, Any]]:
    """``coefficients_batch`` of B key frames at ``plan.batch_frame``, styles alternating, for each B."""
    frames = [synthetic_photo(plan.batch_frame, 100 + i) for i in range(max(batches))]
    rows: list[dict[str, Any]] = []
    failed_at = None
    for batch in batches:
        if failed_at is not None or clock.out_of_time():
            reason = f"out of memory at B={failed_at}" if failed_at is not None else "time limit"
            rows.append({"batch": batch, "skipped": reason})
            continue
        contents = frames[:batch]
        batch_styles = [styles[i % len(styles)] for i in range(batch)]
        sizes = [plan.batch_frame] * batch
        if model.device.type == CUDA:
            torch.cuda.reset_peak_memory_stats(model.device)
        try:
            call = functools.partial(model.coefficients_batch, contents, batch_styles, sizes)
            timing = clock.measure(call, plan.repeats, plan.warmup)
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            release_memory(model.device)
            failed_at = batch
            rows.append({"batch": batch, "error": f"out of memory: {str(error).splitlines()[0]}"})
            logger.warning("B=%d: out of memory", batch)
            continue
        row = {"batch": batch, **timing, "keys_per_s": round(1000 * batch / timing["mean_ms"], 2)}
        if model.device.type == CUDA:
            row["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(model.device) / MEBIBYTE, 1)
        rows.append(row)
        logger.info("batch %s", row)
    return rows


def streams_within_budget(rows: Sequence[dict[str, Any]], budget_ms: float = LATENCY_BUDGET_MS) -> dict[str, Any]:
    """Streams at K = 5 one device serves within ``budget_ms``: the largest B whose p95 batch latency plus the time
    to fill the batch (B / throughput) fits, and its throughput / :data:`KEYS_PER_STREAM`."""
    best = None
    for row in rows:
        if "keys_per_s" not in row:
            continue
        fill_ms = 1000 * row["batch"] / row["keys_per_s"]
        if row["p95_ms"] + fill_ms <= budget_ms and (best is None or row["batch"] > best[0]["batch"]):
            best = (row, fill_ms)
    if best is None:
        return {"budget_ms": budget_ms, "batch": None, "streams": 0, "note": "no batch size fits the budget"}
    row, fill_ms = best
    return {
        "budget_ms": budget_ms,
        "key_interval": KEY_INTERVAL,
        "fps": STREAM_FPS,
        "batch": row["batch"],
        "p95_ms": row["p95_ms"],
        "fill_ms": round(fill_ms, 2),
        "keys_per_s": row["keys_per_s"],
        "streams": math.floor(row["keys_per_s"] / KEYS_PER_STREAM),
    }


def fit_profile(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Least-squares ``mean batch ms = fixed_ms + B * per_item_ms`` over the measured batches (None if < 2)."""
    points = [(row["batch"], row["mean_ms"]) for row in rows if "mean_ms" in row]
    if len(points) < 2:
        return None
    per_item, fixed = np.polyfit([b for b, _ in points], [ms for _, ms in points], 1)
    return {"fixed_ms": round(float(fixed), 3), "per_item_ms": round(float(per_item), 3), "points": len(points)}


def layout_rows(model: PhotoStylizer, clock: Clock, plan: Plan, styles: Sequence[StyleState]) -> dict[str, Any] | None:
    """Batch latency at ``plan.layout_batch`` with channels-last weights and inputs, and with NCHW."""
    if clock.out_of_time():
        return None
    device, served = model.device, model.channels_last
    result = {}
    for label, channels_last in (("channels_last", True), ("nchw", False)):
        model.to_device(device, half_precision=model.half_precision, channels_last=channels_last)
        rows = batch_rows(model, clock, plan, styles, [plan.layout_batch])
        result[label] = rows[0]
    model.to_device(device, half_precision=model.half_precision, channels_last=served)
    return {"batch": plan.layout_batch, **result}


def run(device: torch.device, plan: Plan, model_path: Path, time_limit_s: float) -> dict[str, Any]:
    """Every measurement of the benchmark on ``device``."""
    started = time.perf_counter()
    if device.type == CUDA:
        torch.backends.cudnn.benchmark = True  # fixed shapes per batch size: autotune once, in the warm-up calls
    reference = PhotoStylizer.load(model_path, device="cpu")
    model = PhotoStylizer.load(model_path, device=device)
    if plan.work_size is not None:
        reference = reference.with_config(work_size=plan.work_size)
        model = model.with_config(work_size=plan.work_size)
    clock = Clock(device, started, time_limit_s)
    styles = [model.prepare_style(s) for s in synthetic_styles()]
    data: dict[str, Any] = {
        "device": {
            "spec": str(device),
            "name": device_name(device),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == CUDA else None,
            "memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
            if device.type == CUDA
            else None,
            "torch_threads": torch.get_num_threads(),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "tf32_conv": bool(torch.backends.cudnn.allow_tf32),
        },
        "model": str(model_path),
        "work_size": model.config.work_size,
        "served_path": {
            "fp16_autocast": model.half_precision and device.type == CUDA,
            "channels_last": model.channels_last,
        },
        "plan": {
            "key_sizes": [list(s) for s in plan.key_sizes],
            "batches": list(plan.batches),
            "batch_frame": list(plan.batch_frame),
            "repeats": plan.repeats,
            "warmup": plan.warmup,
        },
    }
    data["agreement"] = agreement(reference, model, plan)
    logger.info("agreement %s", data["agreement"])
    data["key_time"] = key_times(model, clock, plan, styles[0])
    data["batched"] = batch_rows(model, clock, plan, styles, plan.batches)
    data["streams"] = streams_within_budget(data["batched"])
    data["emulated_profile"] = fit_profile(data["batched"])
    data["layout"] = layout_rows(model, clock, plan, styles)
    data["elapsed_s"] = round(time.perf_counter() - started, 1)
    return data


def _ms(row: dict[str, Any], key: str = "median_ms") -> str:
    return f"{row[key]:.1f}" if key in row else "—"


def _status(row: dict[str, Any]) -> str:
    return str(row.get("error") or row.get("skipped") or "")


def markdown(data: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    dev, m = data["device"], data["machine"]
    lines = [
        f"# The DNN on {dev['name']} (`{dev['spec']}`)",
        "",
        f"{m['when']}, commit {m['commit']}, torch {dev['torch']}"
        + (f", CUDA {dev['cuda']}, cuDNN {dev['cudnn']}, {dev['memory_gib']} GiB" if dev["cudnn"] else "")
        + f"; model `{Path(data['model']).name}` at work size {data['work_size']}; served path: "
        f"fp16 autocast {data['served_path']['fp16_autocast']}, channels-last {data['served_path']['channels_last']}"
        f"; {data['plan']['repeats']} timed calls after {data['plan']['warmup']} warm-up; {data['elapsed_s']} s.",
        "",
        f"Agreement with the CPU's fp32 output ({data['agreement']['pairs']} synthetic pairs at "
        f"{data['agreement']['frame'][0]}x{data['agreement']['frame'][1]}):",
        "",
    ]
    agreement: list[list[object]] = []
    for label in ("fp32", "fp16"):
        row = data["agreement"][label]
        if not row["applies"]:
            agreement.append([label, "n/a", row["note"]])
            continue
        worst = "identical" if row["identical"] else f"{row['psnr_db_min']:.1f}"
        agreement.append([label, worst, row["max_abs_diff"]])
    lines += table(["network precision", "worst PSNR (dB)", "max abs diff (levels)"], agreement, align="lrr")
    lines += [
        "",
        "Key time (ms, median / p95): one key frame's coefficients, and the rendered frame, by output size:",
        "",
    ]
    rows = []
    for row in data["key_time"]:
        net = "x".join(map(str, row.get("network_size", []))) or "—"
        coeffs, frame = row.get("coefficients", {}), row.get("stylize", {})
        rows.append(
            [f"{row['size'][0]}x{row['size'][1]}", net, f"{_ms(coeffs)} / {_ms(coeffs, 'p95_ms')}"]
            + [f"{_ms(frame)} / {_ms(frame, 'p95_ms')}", _status(row)]
        )
    lines += table(["output size", "network size", "coefficients", "stylize (frame)", ""], rows, align="llrrl")
    bw, bh = data["plan"]["batch_frame"]
    lines += [
        "",
        f"Batched coefficients at {bw}x{bh} (B frames, 2 styles):",
        "",
    ]
    rows = [
        [row["batch"], f"{row['keys_per_s']:.1f}" if "keys_per_s" in row else "—", _ms(row), _ms(row, "p95_ms")]
        + [row.get("peak_memory_mib", "—"), _status(row)]
        for row in data["batched"]
    ]
    header = ["B", "keys/s", "batch p50 (ms)", "batch p95 (ms)", "peak memory (MiB)", ""]
    lines += table(header, rows, align="rrrrrl")
    s = data["streams"]
    lines += [
        "",
        f"Streams per device at K={KEY_INTERVAL}, {STREAM_FPS} fps ({KEYS_PER_STREAM:g} keys/s each) within a "
        f"p95 of {s['budget_ms']:g} ms (batch p95 + time to fill the batch at full load; an upper bound): "
        + (
            f"**{s['streams']}** (B={s['batch']}, {s['keys_per_s']:.1f} keys/s, p95 {s['p95_ms']:.1f} ms "
            f"+ fill {s['fill_ms']:.1f} ms)."
            if s["batch"] is not None
            else "**0** (no batch size fits)."
        ),
    ]
    profile = data["emulated_profile"]
    if profile is not None:
        lines += [
            "",
            f"Emulated-accelerator profile (least squares over the batches): fixed {profile['fixed_ms']:.2f} ms "
            f"+ {profile['per_item_ms']:.2f} ms per key frame.",
        ]
    layout = data["layout"]
    if layout is not None:
        lines += [
            "",
            f"Memory layout at B={layout['batch']} (batch median ms): channels-last "
            f"{_ms(layout['channels_last'])}, NCHW {_ms(layout['nchw'])}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write JSON and Markdown."""
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=DEFAULT_DEVICE, help=f"one of {', '.join(DEVICE_SPECS)} (default: auto)")
    p.add_argument("--quick", action="store_true", help="small sizes, B up to 4, few repeats (seconds on a CPU)")
    p.add_argument("--out", "--out-dir", dest="out", type=Path, default=RESULTS_DIR, help="results folder")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, help="seconds after which nothing new starts")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as error:
        p.error(str(error))
    torch.set_num_threads(args.threads)
    data = run(device, QUICK if args.quick else Plan(), args.model, args.time_limit)
    data = {"machine": machine(), "quick": args.quick, **data}
    json_path, md_path = write_results(NAME, data, markdown(data), args.out)
    logger.info("wrote %s and %s", json_path, md_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
