"""Fig. 7's reading rules: images per edge to reach the 1-edge final loss, and half its drop."""

from __future__ import annotations

import pytest

from bench.federated import reach


def _curve(totals: list[float], step: int = 16) -> list[dict[str, float]]:
    return [{"images_per_edge": i * step, "total": t} for i, t in enumerate(totals)]


def test_reach_interpolates_between_points_and_scales_to_the_reference() -> None:
    curves = {
        "1 edge": _curve([1.0, 0.9, 0.7, 0.6]),  # final 0.6, half drop 0.8 at 24 images
        "4 edges": _curve([1.0, 0.6, 0.65, 0.62]),  # 0.6 at 16 images, 0.8 at 8
        "stuck": _curve([1.0, 0.95, 0.9, 0.85]),
    }
    r = reach(curves, "1 edge")
    assert r["target_total"] == 0.6 and r["half_drop_total"] == pytest.approx(0.8)
    assert r["setups"]["1 edge"] == {"images_per_edge": 48.0, "ratio_to_reference": 1.0}
    assert r["setups"]["4 edges"]["images_per_edge"] == pytest.approx(16.0)
    assert r["setups"]["4 edges"]["ratio_to_reference"] == pytest.approx(16 / 48)
    assert r["half_drop"]["1 edge"]["images_per_edge"] == pytest.approx(24.0)
    assert r["half_drop"]["4 edges"]["ratio_to_reference"] == pytest.approx(8 / 24)
    assert r["setups"]["stuck"] == {"images_per_edge": None, "ratio_to_reference": None}
