"""Speed work on the lite models must not change what they serve: the colour maps of the bundled ``lite`` and
``lite-look`` heads on ``bench.stylize``'s held-out pairs equal a reference saved from the unoptimised code
(main c81f02b) within 1e-4. Retraining a bundled head changes its maps: then regenerate the reference with
``python -m tests.test_lite_outputs_unchanged`` at a commit whose speed-ups this test has already passed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from bench.stylize import held_out_pairs
from edge_worker.model.lite import LITE_LOOK_PATH, LiteStylizer

REFERENCE = Path(__file__).parent / "data" / "lite_maps_reference.npz"
TOLERANCE = 1e-4
"""Largest absolute difference allowed in any coefficient."""
MODELS = {"lite": None, "lite-look": LITE_LOOK_PATH}


def _maps(name: str) -> dict[str, np.ndarray]:
    """``name``'s maps of every held-out pair at the content's size, by ``model|content|style``."""
    path = MODELS[name]
    model = LiteStylizer.load() if path is None else LiteStylizer.load(path)
    out = {}
    for content_name, content, style_name, style in held_out_pairs():
        size = (content.shape[1], content.shape[0])
        out[f"{name}|{content_name}|{style_name}"] = model.coefficients(content, model.prepare_style(style), size)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
def test_maps_equal_the_unoptimised_reference(model: str) -> None:
    reference = np.load(REFERENCE)
    maps = _maps(model)
    assert sorted(maps) == sorted(k for k in reference.files if k.startswith(model + "|"))
    for key, value in maps.items():
        assert value.shape == reference[key].shape, key
        np.testing.assert_allclose(value, reference[key], rtol=0, atol=TOLERANCE, err_msg=key)


if __name__ == "__main__":
    np.savez_compressed(REFERENCE, **{k: v for name in MODELS for k, v in _maps(name).items()})
    print(f"wrote {REFERENCE}", file=sys.stderr)
