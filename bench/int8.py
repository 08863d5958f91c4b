"""The int8 CPU path against fp32 eager: key-frame time and quality, per work size, in one run.

``python -m bench.int8`` writes ``bench/results/int8.{json,md}``. For each work size (default 192 and 160) it
times, for a 640x360 key with 1 and 2 torch threads, the network (encoder, colorization, decoder: ``decode``) and
the whole ``coefficients()`` call of the fp32 model and of its int8 copy (:meth:`PhotoStylizer.quantized`),
fp32 and int8 interleaved call by call so that load from other processes hits both alike (medians; compare the
ratios, not the absolute times). Then the quality: :mod:`bench.stylize`'s metrics on its held-out pairs, and the
PSNR of each int8 output against the fp32 output at the same work size on the held-out and the tuning pairs.

Acceptance rule (fixed before any int8 number was seen): int8 *holds* at a work size when
1. the mean held-out SSIM is within :data:`SSIM_LIMIT` and the mean Gaussian W2 within :data:`W2_LIMIT` of the
   bundled fp32 model at its own work size (256), as for any served setting (issue 13, item 3);
2. on every held-out pair, int8's SSIM and Gaussian W2 are within the same limits of fp32's at the same work size
   (the worst pair holds, not only the mean);
3. the worst pair's PSNR of int8 vs fp32 output (held-out and tuning pairs) is at least :data:`MIN_WORST_PSNR_DB`.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS_DIR, interleaved_medians, machine, table, write_results
from bench.stylize import Pair, held_out_pairs, mean_row, pair_rows, tuning_pairs
from edge_worker.model.stylizer import DEFAULT_MODEL_PATH, PhotoStylizer, StyleState, resize
from edge_worker.quality import psnr
from edge_worker.training import bundled_photo, calibration_pairs

logger = logging.getLogger(__name__)

NAME = "int8"
WORK_SIZES = (192, 160)
THREADS = (1, 2)
KEY_SIZE = (640, 360)
"""The live demo's frame size (width, height)."""
KEY_CONTENT, KEY_STYLE = "chelsea.png", "astronaut.png"
REPEATS = 12
WARMUP = 2
SSIM_LIMIT = 0.005
W2_LIMIT = 0.1
MIN_WORST_PSNR_DB = 35.0


@torch.inference_mode()
def _network(model: PhotoStylizer, low: torch.Tensor, state: StyleState) -> torch.Tensor:
    return model.decode(low, state)


def timing(models: dict[str, PhotoStylizer], threads: int, repeats: int) -> dict[str, float]:
    """Median ms of the network and of ``coefficients()`` for a 640x360 key, per model."""
    torch.set_num_threads(threads)
    content = resize(bundled_photo(KEY_CONTENT), KEY_SIZE)
    style = bundled_photo(KEY_STYLE)
    calls: dict[str, Callable[[], object]] = {}
    for name, model in models.items():
        state = model.prepare_style(style)
        low = model._network_input([content])
        calls[f"{name}_network"] = partial(_network, model, low, state)
        calls[f"{name}_coefficients"] = partial(model.coefficients, content, state, KEY_SIZE)
    return {k: 1e3 * v for k, v in interleaved_medians(calls, repeats, WARMUP).items()}


def quality(
    fp32: PhotoStylizer, int8: PhotoStylizer, held_out: Sequence[Pair], tuning: Sequence[Pair]
) -> dict[str, Any]:
    """Per-pair held-out metrics of both models and the PSNR of int8 vs fp32 on every pair."""
    fp32_rows, fp32_out = pair_rows(fp32, held_out)
    int8_rows, int8_out = pair_rows(int8, held_out)
    _, fp32_tuning = pair_rows(fp32, tuning)
    _, int8_tuning = pair_rows(int8, tuning)
    return {
        "fp32": mean_row(fp32_rows),
        "int8": mean_row(int8_rows),
        "max_pair_ssim_diff": max(abs(a["ssim"] - b["ssim"]) for a, b in zip(fp32_rows, int8_rows, strict=True)),
        "max_pair_w2_diff": max(
            abs(a["gaussian_w2"] - b["gaussian_w2"]) for a, b in zip(fp32_rows, int8_rows, strict=True)
        ),
        "psnr_db": [psnr(a, b) for a, b in zip(fp32_out + fp32_tuning, int8_out + int8_tuning, strict=True)],
    }


def verdict(row: dict[str, Any], reference: dict[str, float]) -> dict[str, bool]:
    """The acceptance rule of the module docstring, clause by clause."""
    mean = row["int8"]
    return {
        "mean_within_limits": abs(mean["ssim"] - reference["ssim"]) <= SSIM_LIMIT
        and abs(mean["gaussian_w2"] - reference["gaussian_w2"]) <= W2_LIMIT,
        "every_pair_within_limits": row["max_pair_ssim_diff"] <= SSIM_LIMIT and row["max_pair_w2_diff"] <= W2_LIMIT,
        "worst_psnr_ok": min(row["psnr_db"]) >= MIN_WORST_PSNR_DB,
    }


def markdown(results: dict[str, Any]) -> str:
    """The tables."""
    info = results["machine"]
    ref = results["reference"]
    lines = [
        "# int8 CPU path vs fp32 eager",
        "",
        f"{info['cpus']} CPUs ({results['cpu_capability']}), load {info['load_avg_1m']}, torch {torch.__version__}, "
        f"quantized engine {results['engine']}, commit {info['commit']}. Key {KEY_SIZE[0]}x{KEY_SIZE[1]}; median ms "
        f"of {results['repeats']} calls, fp32 and int8 interleaved (absolute times move with the machine's load; "
        "the ratios are the result).",
        "",
    ]
    timing = [
        [ws, threads, f"{t['fp32_network']:.0f}", f"{t['int8_network']:.0f}"]
        + [f"×{t['int8_network'] / t['fp32_network']:.2f}", f"{t['fp32_coefficients']:.0f}"]
        + [f"{t['int8_coefficients']:.0f}", f"×{t['int8_coefficients'] / t['fp32_coefficients']:.2f}"]
        for ws, per_size in results["work_sizes"].items()
        for threads, t in per_size["timing_ms"].items()
    ]
    header = ["work size", "threads", "network fp32", "network int8", "ratio", "coefficients() fp32", "int8", "ratio"]
    lines += table(header, timing, align="rrrrrrrr")
    lines += [
        "",
        f"Quality on {results['held_out_pairs']} held-out pairs (bench.stylize's metrics); PSNR of int8 vs fp32 output "
        f"at the same work size on those and {results['tuning_pairs']} tuning pairs. Reference: the bundled fp32 "
        f"model at work size 256, SSIM {ref['ssim']:.4f}, Gaussian W2 {ref['gaussian_w2']:.3f}. int8 holds when "
        f"its mean is within {SSIM_LIMIT} SSIM / {W2_LIMIT} W2 of the reference, every pair within the same of "
        f"fp32 at its work size, and the worst PSNR ≥ {MIN_WORST_PSNR_DB:.0f} dB.",
        "",
    ]
    rows = []
    for ws, per_size in results["work_sizes"].items():
        q = per_size["quality"]
        holds = all(per_size["verdict"].values())
        failed = ", ".join(k for k, ok in per_size["verdict"].items() if not ok)
        rows.append(
            [ws, f"{q['fp32']['ssim']:.4f}", f"{q['int8']['ssim']:.4f}", f"{q['fp32']['gaussian_w2']:.3f}"]
            + [f"{q['int8']['gaussian_w2']:.3f}", f"{q['max_pair_ssim_diff']:.4f}", f"{q['max_pair_w2_diff']:.3f}"]
            + [f"{statistics.median(q['psnr_db']):.1f} / {min(q['psnr_db']):.1f}", f"{per_size['calibration_s']:.1f}"]
            + ["yes" if holds else "no: " + failed]
        )
    header = ["work size", "SSIM fp32", "SSIM int8", "W2 fp32", "W2 int8", "max pair ΔSSIM", "max pair ΔW2"]
    lines += table(header + ["PSNR median / worst (dB)", "calibration s", "holds"], rows, align="rrrrrrrrr")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write JSON and Markdown."""
    p = argparse.ArgumentParser(prog="python -m bench.int8", description=__doc__)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    p.add_argument("--out", "--out-dir", dest="out", type=Path, default=RESULTS_DIR, help="results directory")
    p.add_argument("--work-sizes", type=int, nargs="+", default=list(WORK_SIZES))
    p.add_argument("--repeats", type=int, default=REPEATS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    bundled = PhotoStylizer.load(args.model)
    held_out, tuning = held_out_pairs(), tuning_pairs()
    reference = mean_row(pair_rows(bundled, held_out)[0])
    results: dict[str, Any] = {
        "machine": machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "model": str(args.model),
        "repeats": args.repeats,
        "held_out_pairs": len(held_out),
        "tuning_pairs": len(tuning),
        "reference": reference,
        "work_sizes": {},
    }
    for ws in args.work_sizes:
        fp32 = bundled.with_config(work_size=ws)
        tic = time.perf_counter()
        int8 = fp32.quantized(calibration_pairs())
        calibration_s = time.perf_counter() - tic
        models = {"fp32": fp32, "int8": int8}
        row: dict[str, Any] = {
            "calibration_s": calibration_s,
            "timing_ms": {threads: timing(models, threads, args.repeats) for threads in THREADS},
            "quality": quality(fp32, int8, held_out, tuning),
        }
        row["verdict"] = verdict(row["quality"], reference)
        results["work_sizes"][ws] = row
        logger.info("work size %d: %s", ws, row["verdict"])
    results["engine"] = torch.backends.quantized.engine
    json_path, md_path = write_results(NAME, results, markdown(results), args.out)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
