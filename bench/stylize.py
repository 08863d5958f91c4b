"""Table 1 on this machine: seconds per key frame by output size, and stylization quality vs baselines.

``python -m bench.stylize`` writes ``bench/results/stylize.{json,md}``, ``stylize_grid.jpg`` and
``stylize_strength.png``: time per frame at the paper's output sizes for the DNN and the WCT baseline (style
prepared once, as the worker caches it), the quality metrics of :mod:`edge_worker.quality` over every held-out
content/style pair for the DNN and the baselines, a grid (content | style | ours | baselines) to look at, and
the structure/style trade-off over the stylization strength on the held-out pairs and on tuning pairs (frames of
the real clip, never trained on) where the bundled strength is chosen.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bench.common import RESULTS_DIR, machine, real_clip_path, write_results
from edge_worker.baselines import ReinhardTransfer, WCTBaseline
from edge_worker.model.base import Size, Stylizer
from edge_worker.model.color_transfer import LinearColorTransfer
from edge_worker.model.stylizer import DEFAULT_MODEL_PATH, PhotoStylizer, resize
from edge_worker.quality import gaussian_w2, matting_laplacian_residual, sliced_w2, structure_ssim
from edge_worker.training import HELD_OUT_PHOTOS, HELD_OUT_STYLES, bundled_photo

logger = logging.getLogger(__name__)

TABLE1_SIZES: tuple[Size, ...] = ((512, 256), (768, 384), (1024, 512), (1920, 1080))
"""Output sizes of the paper's Table 1, plus full HD."""
TIMING_REPEATS = 5
QUALITY_SHORT_SIDE = 512
"""Content short side in the quality table (the network runs at its own working size, so r ≈ 2)."""
GRID_HEIGHT = 192
GRID_JPEG_QUALITY = 90
MATTING_SCALE = 1e4
"""The matting-Laplacian residual is reported ×1e4."""
NAME = "stylize"
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
TUNING_FRAMES = (60, 160, 220)
"""Tuning contents: frames of the real clip from three of its shots, which the bundled weights never trained on.
Training photos flatter the DNN (astronaut.png with retina.jpg: SSIM 0.853 against Reinhard's 0.795)."""
TUNING_STYLES = ("retina.jpg", "ihc.png", "hubble_deep_field.jpg")

Pair = tuple[str, np.ndarray, str, np.ndarray]


def _short_side(image: np.ndarray, side: int) -> np.ndarray:
    scale = side / min(image.shape[:2])
    return resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))


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
    return statistics.median(times)


def held_out_pairs() -> list[Pair]:
    """Every held-out photo (short side ``QUALITY_SHORT_SIDE``) with every held-out style."""
    return [
        (c, _short_side(bundled_photo(c), QUALITY_SHORT_SIDE), s, bundled_photo(s))
        for c in HELD_OUT_PHOTOS
        for s in HELD_OUT_STYLES
    ]


def tuning_pairs() -> list[Pair]:
    """Pairs the bundled strength is chosen on: every :data:`TUNING_FRAMES` frame of the real clip (no held-out
    content, no training photo) with every tuning style."""
    clip = cv2.VideoCapture(str(real_clip_path()))
    contents = []
    try:
        for index in TUNING_FRAMES:
            clip.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = clip.read()
            if not ok:
                raise OSError(f"cannot read frame {index} of {real_clip_path()}")
            contents.append((f"{real_clip_path().name}#{index}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    finally:
        clip.release()
    return [
        (name, _short_side(image, QUALITY_SHORT_SIDE), s, bundled_photo(s))
        for name, image in contents
        for s in TUNING_STYLES
    ]


def pair_rows(method: Stylizer, pairs: Sequence[Pair]) -> tuple[list[dict[str, float]], list[np.ndarray]]:
    """The metrics of every pair stylized by ``method`` (style prepared per pair), and the outputs."""
    rows, outputs = [], []
    for _, content, _, style in pairs:
        out = method.stylize(content, method.prepare_style(style), (content.shape[1], content.shape[0]))
        outputs.append(out)
        rows.append(
            {
                "ssim": structure_ssim(content, out),
                "gaussian_w2": gaussian_w2(out, style),
                "sliced_w2": sliced_w2(out, style),
                "matting_x1e4": matting_laplacian_residual(content, out) * MATTING_SCALE,
            }
        )
    return rows, outputs


def mean_row(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over ``rows``."""
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def quality_rows(
    methods: Sequence[Stylizer], pairs: Sequence[Pair]
) -> tuple[dict[str, dict[str, float]], dict[str, list[np.ndarray]]]:
    """Mean metrics per method over ``pairs`` and every output (for the grid)."""
    table: dict[str, dict[str, float]] = {}
    outputs: dict[str, list[np.ndarray]] = {}
    for method in methods:
        rows, outputs[method.name] = pair_rows(method, pairs)
        table[method.name] = mean_row(rows)
        logger.info("%s: %s", method.name, table[method.name])
    return table, outputs


def strength_sweep(model: PhotoStylizer, pairs: Sequence[Pair]) -> dict[str, Any]:
    """Quality of the DNN and the WCT baseline at every strength in ``STRENGTHS``, and of the classic
    baselines, over ``pairs``."""
    sweep: dict[str, Any] = {"dnn": {}, "wct": {}}
    for strength in STRENGTHS:
        at = model.with_config(strength=strength)
        table, _ = quality_rows([at, WCTBaseline(at)], pairs)
        sweep["dnn"][str(strength)] = table[at.name]
        sweep["wct"][str(strength)] = table[WCTBaseline.name]
    sweep["baselines"], _ = quality_rows([ReinhardTransfer(), LinearColorTransfer()], pairs)
    return sweep


def chosen_strength(tuning: dict[str, Any]) -> float:
    """The largest strength at which the DNN keeps Reinhard's structure SSIM on the tuning pairs (0 if none)."""
    floor = tuning["baselines"][ReinhardTransfer.name]["ssim"]
    kept = [float(s) for s, row in tuning["dnn"].items() if row["ssim"] >= floor]
    return max(kept, default=0.0)


def plot_strength(sweeps: dict[str, dict[str, Any]], path: Path) -> None:
    """Structure SSIM vs Gaussian W2 along the strength, per pair set, with the classic baselines as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.5 * len(sweeps), 4.2), squeeze=False)
    for ax, (title, sweep) in zip(axes[0], sweeps.items(), strict=True):
        for method in ("dnn", "wct"):
            rows = sweep[method]
            ax.plot([r["ssim"] for r in rows.values()], [r["gaussian_w2"] for r in rows.values()], "o-", label=method)
            for strength, r in rows.items():
                point = (r["ssim"], r["gaussian_w2"])
                ax.annotate(strength, point, fontsize=7, xytext=(3, 3), textcoords="offset points")
        for name, r in sweep["baselines"].items():
            ax.plot(r["ssim"], r["gaussian_w2"], "s", label=name)
        ax.set(title=title, xlabel="structure SSIM (higher is better)", ylabel="Gaussian W2 to the style (lower)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Stylization strength: local DNN maps (1) ... global colour map only (0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grid(pairs: Sequence[Pair], outputs: dict[str, list[np.ndarray]]) -> np.ndarray:
    """Rows of content | style | every method's output, each cell ``GRID_HEIGHT`` high (RGB)."""

    def cell(image: np.ndarray) -> np.ndarray:
        return resize(image, (round(image.shape[1] * GRID_HEIGHT / image.shape[0]), GRID_HEIGHT))

    rows = []
    for i, (_, content, _, style) in enumerate(pairs):
        cells = [cell(content), cell(style)] + [cell(outs[i]) for outs in outputs.values()]
        rows.append(np.concatenate(cells, axis=1))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)


def markdown(
    timing: dict[str, dict[str, float]],
    quality: dict[str, dict[str, float]],
    sweeps: dict[str, dict[str, Any]],
    info: dict[str, Any],
) -> str:
    """The tables."""
    sizes = list(next(iter(timing.values())))
    lines = [
        "# Stylizer benchmark (Table 1 on this machine)",
        "",
        f"{info['machine']['cpus']} CPUs, {info['threads']} torch threads, load {info['machine']['load_avg_1m']}, "
        f"model `{info['model']}` (stylization strength {info['config']['strength']}), "
        f"commit {info['machine']['commit']}.",
        "",
        "Seconds per key frame (style prepared once):",
        "",
        "| method | " + " | ".join(sizes) + " | t(1920x1080)/t(512x256) |",
        "| --- |" + " ---: |" * (len(sizes) + 1),
    ]
    for method, row in timing.items():
        ratio = row["1920x1080"] / row["512x256"]
        lines.append(f"| {method} | " + " | ".join(f"{row[s]:.3f}" for s in sizes) + f" | {ratio:.2f} |")
    lines += [
        "",
        f"Quality over {info['pairs']} held-out content/style pairs (content short side {QUALITY_SHORT_SIDE}): "
        "structure SSIM of luminance vs content (higher is better), Gaussian and sliced W2 of Lab colours vs "
        "style (lower), matting-Laplacian residual ×1e4 (lower = more photorealistic).",
        "",
        "| method | SSIM | Gaussian W2 | sliced W2 | matting ×1e4 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for method, row in quality.items():
        lines.append(
            f"| {method} | {row['ssim']:.3f} | {row['gaussian_w2']:.2f} | {row['sliced_w2']:.2f} | "
            f"{row['matting_x1e4']:.3f} |"
        )
    lines += [
        "",
        "Stylization strength (0 = the global colour map alone, 1 = the DNN's full local maps); the classic "
        "baselines do not depend on it. Tuning pairs: "
        + ", ".join(sorted({c for c, _ in info["tuning_pair_names"]}))
        + f" × {', '.join(TUNING_STYLES)}. Largest strength keeping Reinhard's SSIM on the tuning pairs: "
        f"**{info['chosen_strength']}**.",
        "",
        "| pairs | method | strength | SSIM | Gaussian W2 | sliced W2 | matting ×1e4 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for title, sweep in sweeps.items():
        rows = [(m, s, r) for m in ("dnn", "wct") for s, r in sweep[m].items()]
        rows += [(name, "", r) for name, r in sweep["baselines"].items()]
        for method, strength, r in rows:
            lines.append(
                f"| {title} | {method} | {strength} | {r['ssim']:.3f} | {r['gaussian_w2']:.2f} | "
                f"{r['sliced_w2']:.2f} | {r['matting_x1e4']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write JSON, Markdown and the PNG grid."""
    p = argparse.ArgumentParser(prog="python -m bench.stylize", description=__doc__)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    p.add_argument("--out", "--out-dir", dest="out", type=Path, default=RESULTS_DIR, help="results directory")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=TIMING_REPEATS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    model = PhotoStylizer.load(args.model)
    wct = WCTBaseline(model)
    pairs = held_out_pairs()
    tuning = tuning_pairs()
    timing = {
        m.name: {f"{w}x{h}": time_per_frame(m, pairs[0][1], pairs[0][3], (w, h), args.repeats) for w, h in TABLE1_SIZES}
        for m in (model, wct)
    }
    quality, outputs = quality_rows([model, ReinhardTransfer(), LinearColorTransfer(), wct], pairs)
    sweeps = {"held-out": strength_sweep(model, pairs), "tuning": strength_sweep(model, tuning)}
    info = {
        "machine": machine(),
        "threads": args.threads,
        "model": str(args.model),
        "pairs": len(pairs),
        "pair_names": [(c, s) for c, _, s, _ in pairs],
        "tuning_pair_names": [(c, s) for c, _, s, _ in tuning],
        "chosen_strength": chosen_strength(sweeps["tuning"]),
        "config": model.config.__dict__,
    }
    write_results(
        NAME,
        {**info, "seconds_per_frame": timing, "quality": quality, "strength_sweep": sweeps},
        markdown(timing, quality, sweeps, info),
        args.out,
    )
    plot_strength(sweeps, args.out / f"{NAME}_strength.png")
    picture = args.out / f"{NAME}_grid.jpg"  # photographs: JPEG is a tenth of the PNG's size
    cv2.imwrite(
        str(picture),
        cv2.cvtColor(grid(pairs, outputs), cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, GRID_JPEG_QUALITY],
    )
    logger.info(
        "wrote %s/%s.{json,md,_strength.png} and %s; columns: content | style | %s",
        args.out,
        NAME,
        picture.name,
        " | ".join(outputs),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
