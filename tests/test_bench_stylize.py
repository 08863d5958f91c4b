"""The stylizer bench: its choice of the bundled strength, its pairs, and a whole run in --quick mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import stylize
from bench.held_out import MATE_CONTENTS, MATE_STYLES
from bench.stylize import TUNING_FRAMES, TUNING_STYLES, chosen_strength, evaluation_pairs, tuning_pairs
from edge_worker.training import BUNDLED_PHOTOS, HELD_OUT_PHOTOS


def test_largest_strength_that_keeps_reinhards_structure() -> None:
    curve = {s: {"ssim": v} for s, v in {"0.0": 0.70, "0.25": 0.68, "0.5": 0.66, "0.75": 0.64, "1.0": 0.60}.items()}
    assert chosen_strength(curve, reinhard_ssim=0.66) == 0.5


def test_no_strength_keeps_it() -> None:
    assert chosen_strength({"0.0": {"ssim": 0.5}, "1.0": {"ssim": 0.4}}, reinhard_ssim=0.6) == 0.0


@pytest.mark.slow
def test_tuning_pairs_share_no_content_with_the_held_out_or_training_photos() -> None:
    tuning = tuning_pairs()
    assert len(tuning) == len(TUNING_FRAMES) * len(TUNING_STYLES)
    names = {name for name, _, _, _ in tuning}
    assert len(names) == len(TUNING_FRAMES)
    assert not names & (set(HELD_OUT_PHOTOS) | set(BUNDLED_PHOTOS))
    for _, content, _, _ in tuning:
        assert content.ndim == 3 and content.shape[2] == 3 and content.std() > 10  # a real frame, not a blank


def test_held_out_pairs_are_many_distinct_and_never_training_photos() -> None:
    blank = np.zeros((2, 2, 3), np.uint8)
    contents = [(n, blank) for n in [*HELD_OUT_PHOTOS, *MATE_CONTENTS]]
    styles = [(n, blank) for n in MATE_STYLES]
    pairs = evaluation_pairs(contents, styles)
    names = [(c, s) for c, _, s, _ in pairs]
    assert len(set(names)) == len(names) >= 30
    assert {s for _, s in names} == set(MATE_STYLES) and {c for c, _ in names} == {n for n, _ in contents}
    assert not {n for pair in names for n in pair} & set(BUNDLED_PHOTOS)
    assert not set(MATE_CONTENTS) & set(MATE_STYLES)


@pytest.mark.slow
def test_the_bench_runs_quick(tmp_path: Path) -> None:
    grid = tmp_path / "grid.png"
    assert (
        stylize.main(["--quick", "--models", "dnn", "--out-dir", str(tmp_path), "--grid", str(grid), "--threads", "1"])
        == 0
    )
    results = json.loads((tmp_path / "stylize.json").read_text())
    methods = ["identity", "reinhard", "color-transfer", "wct", "dnn"]
    assert list(results["quality"]) == methods == list(results["look_transfer"])
    assert len(results["pair_names"]) == 2 and all(s.startswith("mate:") for _, s in results["pair_names"])
    quality, looks = results["quality"], results["look_transfer"]
    assert quality["identity"]["ssim"] > 0.999 and quality["identity"]["content"] == 0.0
    assert quality["color-transfer"]["style"] < quality["identity"]["style"]  # it moves toward the style
    assert all(np.isfinite(r["psnr"]) and r["ciede2000"] > 0 for r in looks.values())
    assert list(results["strength_curves"]["dnn"]) == ["0.0", "1.0"]
    for name in ("stylize.md", "stylize_strength.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
