"""Server-side latency per region: after a real phone run the gateway's /metrics holds, under the region's label,
the key-frame time at the site and its hops, and the round trip the phone measured and reported back."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from deploy.nats_servers import NatsServer
from edge_worker.service import StylizerWorker
from mobile_sim.client import Phone, PhoneConfig
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.gateway.session import GATEWAY_HOPS, KEY_FRAMES
from streaming.ice import LOOPBACK
from streaming.protocol import (
    LATENCY_PARTS,
    ClockPing,
    ErrorCode,
    KeyLatency,
    ProtocolError,
    decode_any,
    encode,
    validate_key_latency,
)
from streaming.telemetry import LATENCY_BUCKETS_S

FRAMES = 30


def _count(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0


@pytest.mark.slow
async def test_a_phone_run_leaves_the_regions_latency_in_the_gateways_histograms(
    worker: StylizerWorker, gateway: Gateway, region: str
) -> None:
    config = PhoneConfig(gateway_urls=(gateway.url,), frames=FRAMES, size=(320, 180), region=region, ice_hosts=LOOPBACK)
    report = (await Phone(config).run()).report
    ok = report["key_frames"]["ok"]
    assert ok >= FRAMES // 5 - 1

    assert _count("mvs_gateway_key_seconds", {"region": region}) == ok
    for hop in GATEWAY_HOPS:
        assert _count("mvs_gateway_key_hop_seconds", {"region": region, "hop": hop}) == ok
    hops = sum(
        REGISTRY.get_sample_value("mvs_gateway_key_hop_seconds_sum", {"region": region, "hop": h}) or 0.0
        for h in GATEWAY_HOPS
    )
    total = REGISTRY.get_sample_value("mvs_gateway_key_seconds_sum", {"region": region}) or 0.0
    assert hops == pytest.approx(total, rel=1e-6)  # the hops split the site's time exactly

    # The phone's reports ride the data channel; the last ones may still be on the way when the phone hangs up.
    phone = {part: _count("mvs_gateway_phone_key_seconds", {"region": region, "part": part}) for part in LATENCY_PARTS}
    assert ok - 2 <= phone["round_trip"] <= ok and len(set(phone.values())) == 1, phone
    mean_ms = 1e3 * (
        REGISTRY.get_sample_value("mvs_gateway_phone_key_seconds_sum", {"region": region, "part": "round_trip"}) or 0.0
    )
    assert 0 < mean_ms / phone["round_trip"] <= report["latency_ms"][region]["round_trip"]["max"] + 1e-3

    async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/metrics") as response:
        text = await response.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("mvs_gateway_key_seconds", "mvs_gateway_key_hop_seconds", "mvs_gateway_phone_key_seconds"):
        buckets = [s for s in families[name].samples if s.name.endswith("_bucket") and s.labels["region"] == region]
        assert buckets, name
        assert {float(s.labels["le"]) for s in buckets} == {*LATENCY_BUCKETS_S, float("inf")}


def test_latency_reports_are_small_and_checked() -> None:
    report = KeyLatency(frame_id=7, parts_ms={part: 123.456 for part in LATENCY_PARTS})
    assert decode_any(encode(report), (KeyLatency, ClockPing), max_bytes=1024) == report
    validate_key_latency(report)
    for parts, message in (
        ({"round_trip": -1.0}, "outside"),
        ({"round_trip": 1e9}, "outside"),
        ({"latency_of_doom": 1.0}, "unknown parts"),  # the part is a label: a phone cannot add new ones
    ):
        with pytest.raises(ProtocolError, match=message) as error:
            validate_key_latency(KeyLatency(frame_id=1, parts_ms=parts))
        assert error.value.code == ErrorCode.INVALID


async def test_each_gateway_of_a_process_exports_its_own_regions_series(nats_server: NatsServer, region: str) -> None:
    """``mvs local`` runs every region's gateway in one process (one registry): scraping all of them must count each
    region once."""
    regions = (f"{region}a", f"{region}b")
    gateways = [Gateway(GatewayConfig(port=0, nats_url=nats_server.url, region=r, ice_hosts=LOOPBACK)) for r in regions]
    for r in regions:
        KEY_FRAMES.labels(r, "ok").inc()
    families: dict[str, set[str]] = {}
    try:
        async with aiohttp.ClientSession() as http:
            for gateway in gateways:
                await gateway.start()
                async with http.get(f"{gateway.url}/metrics") as response:
                    text = await response.text()
                families[gateway.config.region] = {
                    s.labels["region"]
                    for family in text_string_to_metric_families(text)
                    for s in family.samples
                    if s.labels.get("region") in regions
                }
                assert "mvs_nats_connected" in text  # process-wide series (no region label) stay
    finally:
        for gateway in gateways:
            await gateway.stop()
    assert families == {r: {r} for r in regions}
