"""``python -m bench.lite``: the lite stylizer against the paper's DNN and the closed-form map, on this CPU.

Cost: ``coefficients()`` of a 640x360 key (what a worker computes for ``--render affine``), one torch thread, the
models taking turns call by call (:func:`bench.common.interleaved_medians`): lite fp32 at its work size, the DNN at
work size 192 in int8 (as ``make demo`` serves it) and fp32, the closed-form map. Quality: ``bench.stylize``'s
held-out pairs and metrics for the lite model at strengths 0 (the closed-form map), 0.5 and 1, for ``lite-look`` and
for the closed-form colour transfer, plus the look-transfer PSNR of :func:`edge_worker.lite_training.evaluate_lite`.
Writes ``bench/results/lite.{json,md}``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import cv2
import torch

from bench.common import interleaved_medians, machine, table, write_results
from bench.stylize import held_out_pairs, mean_row, pair_rows
from edge_worker.lite_training import evaluate_lite
from edge_worker.model.color_transfer import LinearColorTransfer
from edge_worker.model.int8 import INT8
from edge_worker.model.lite import LITE_LOOK_PATH, LiteStylizer
from edge_worker.model.registry import DNN_NAME
from edge_worker.stylizers import load_stylizer
from edge_worker.training import HELD_OUT_PHOTOS, HELD_OUT_STYLES, bundled_photo

NAME = "lite"
KEY_SIZE = (640, 360)
DNN_WORK_SIZE = 192
REPEATS = 15
QUALITY_KEYS = ("ssim", "gaussian_w2", "sliced_w2", "matting_x1e4", "look_psnr")
"""The quality table's columns, in order."""
STRENGTHS = (0.0, 0.5, 1.0)


def cost(repeats: int) -> dict[str, float]:
    """Median ms of ``coefficients()`` per 640x360 key, one thread, interleaved."""
    torch.set_num_threads(1)
    content = cv2.resize(bundled_photo("chelsea.png"), KEY_SIZE, interpolation=cv2.INTER_AREA)
    style = bundled_photo("astronaut.png")
    models: dict[str, Any] = {
        "lite fp32": LiteStylizer.load(),
        f"dnn int8 {DNN_WORK_SIZE}": load_stylizer(DNN_NAME, work_size=DNN_WORK_SIZE, precision=INT8),
        f"dnn fp32 {DNN_WORK_SIZE}": load_stylizer(DNN_NAME, work_size=DNN_WORK_SIZE),
        "color-transfer": LinearColorTransfer(),
    }
    states = {name: model.prepare_style(style) for name, model in models.items()}
    calls = {
        name: (lambda m=model, s=states[name]: m.coefficients(content, s, KEY_SIZE)) for name, model in models.items()
    }
    return {name: round(seconds * 1000, 1) for name, seconds in interleaved_medians(calls, repeats, warmup=2).items()}


def quality() -> dict[str, dict[str, float]]:
    """Mean held-out metrics per method (bench.stylize's pairs), and the look-transfer check."""
    pairs = held_out_pairs()
    lite = LiteStylizer.load()
    table: dict[str, dict[str, float]] = {}
    for strength in STRENGTHS:
        model = lite.with_config(strength=strength)
        table[f"lite, strength {strength}"] = mean_row(pair_rows(model, pairs)[0])
        looks = evaluate_lite(
            model, [bundled_photo(n) for n in HELD_OUT_PHOTOS], [bundled_photo(n) for n in HELD_OUT_STYLES]
        )
        table[f"lite, strength {strength}"]["look_psnr"] = looks["look_psnr_model"]
    look = LiteStylizer.load(LITE_LOOK_PATH)
    table["lite-look"] = mean_row(pair_rows(look, pairs)[0])
    table["lite-look"]["look_psnr"] = evaluate_lite(
        look, [bundled_photo(n) for n in HELD_OUT_PHOTOS], [bundled_photo(n) for n in HELD_OUT_STYLES]
    )["look_psnr_model"]
    table["color-transfer"] = mean_row(pair_rows(LinearColorTransfer(), pairs)[0])
    table["identity (look check)"] = {"look_psnr": looks["look_psnr_identity"]}
    return table


def markdown(data: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    lines = [
        f"# bench.lite at {data['machine']['commit']}, load {data['machine']['load_avg_1m']}",
        "",
        *table(["model", "coefficients() of a 640x360 key, 1 thread (ms, median)"], data["cost_ms"].items(), "lr"),
        "",
    ]
    rows = [
        [name] + [None if row.get(k) is None else f"{row[k]:.3f}" for k in QUALITY_KEYS]
        for name, row in data["quality"].items()
    ]
    header = ["method", "structure SSIM", "Gaussian W2", "sliced W2", "matting x1e4", "look-transfer PSNR (dB)"]
    lines += table(header, rows, align="lrrrrr")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m bench.lite", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=REPEATS)
    p.add_argument("--cost-only", action="store_true", help="skip the quality tables")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    data: dict[str, Any] = {"machine": machine(), "cost_ms": cost(args.repeats)}
    if not args.cost_only:
        data["quality"] = quality()
    else:
        data["quality"] = {}
    text = markdown(data)
    json_path, md_path = write_results(NAME, data, text)
    print(text)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
