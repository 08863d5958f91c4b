"""bench.regions on its tiny configuration (two sites, a few frames): real nats-server hub and leaf, worker
processes, gateways and aiortc phones behind emulated links; the overflow loses no key beyond those in flight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from bench import regions

pytestmark = pytest.mark.slow  # the regions bench, quick


def test_the_regions_bench_measures_each_site_and_the_overflow(tmp_path: Path) -> None:
    data, text = regions.run(regions.QUICK, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"regions.json", "regions.md", "regions.png"}
    assert json.loads((tmp_path / "regions.json").read_text())["targets"] == data["targets"]
    names = [s.name for s in regions.QUICK.sites]
    for name in names:
        (table5,) = data["table5"][name]
        assert table5["keys_ok"] >= 1 and table5["latency_ms"]["uplink"]["p50"] > 0
        frame, coefficients = data["split"][name]["frame"], data["split"][name]["coefficients"]
        assert frame["keys_ok"] >= 1 and coefficients["keys_ok"] >= 1
        assert coefficients["downlink_bytes_per_key"] < frame["downlink_bytes_per_key"] / 10
        # The phones' reports reached the site: the gateway's histogram holds them under the region's label.
        assert (
            REGISTRY.get_sample_value("mvs_gateway_phone_key_seconds_count", {"region": name, "part": "uplink"}) or 0
        ) > 0
    edge, far = names
    assert data["split"][far]["frame"]["link"]["delay_ms"] > data["split"][edge]["frame"]["link"]["delay_ms"]

    overflow = data["overflow"]
    assert overflow["workers_before"] == [f"{edge}-worker-0"] and overflow["workers_after"] == [f"{edge}-cloud-0"]
    assert overflow["after"]["keys"] >= 3 and overflow["lost_beyond_in_flight"] == 0, overflow
    assert "Keys lost beyond those in flight: **0**" in text and "## Per region" in text
