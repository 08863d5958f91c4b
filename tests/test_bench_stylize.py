"""The stylizer bench's choice of the bundled stylization strength, on hand-made sweeps."""

from __future__ import annotations

from typing import Any

from bench.stylize import chosen_strength


def _sweep(dnn_ssims: dict[str, float], reinhard_ssim: float) -> dict[str, Any]:
    return {
        "dnn": {s: {"ssim": v} for s, v in dnn_ssims.items()},
        "baselines": {"reinhard": {"ssim": reinhard_ssim}, "color-transfer": {"ssim": 0.9}},
    }


def test_largest_strength_that_keeps_reinhards_structure() -> None:
    sweep = _sweep({"0.0": 0.70, "0.25": 0.68, "0.5": 0.66, "0.75": 0.64, "1.0": 0.60}, reinhard_ssim=0.66)
    assert chosen_strength(sweep) == 0.5


def test_no_strength_keeps_it() -> None:
    assert chosen_strength(_sweep({"0.0": 0.5, "1.0": 0.4}, reinhard_ssim=0.6)) == 0.0
