"""The stylizer bench's choice of the bundled stylization strength: the rule on hand-made sweeps, and the pairs it
is made on."""

from __future__ import annotations

from typing import Any

from bench.stylize import TUNING_FRAMES, TUNING_STYLES, chosen_strength, tuning_pairs
from edge_worker.training import BUNDLED_PHOTOS, HELD_OUT_PHOTOS


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


def test_tuning_pairs_share_no_content_with_the_held_out_or_training_photos() -> None:
    tuning = tuning_pairs()
    assert len(tuning) == len(TUNING_FRAMES) * len(TUNING_STYLES)
    names = {name for name, _, _, _ in tuning}
    assert len(names) == len(TUNING_FRAMES)
    assert not names & (set(HELD_OUT_PHOTOS) | set(BUNDLED_PHOTOS))
    for _, content, _, _ in tuning:
        assert content.ndim == 3 and content.shape[2] == 3 and content.std() > 10  # a real frame, not a blank
