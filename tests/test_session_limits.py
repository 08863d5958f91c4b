"""What one phone may cost a gateway is bounded (issue 22, item 3): frame-id mapping, result size, data-channel
messages and latency reports, each against a real gateway, a real worker and real aiortc phones."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY

from deploy.faults import BarePhone, RandomPtsPhone
from deploy.nats_servers import NatsServer
from edge_worker.service import StylizerWorker
from mobile_sim.report import latency_split
from mobile_sim.sources import sample_photo
from streaming.gateway.server import Gateway
from streaming.gateway.session import SessionLimits
from streaming.images import encode_jpeg
from streaming.protocol import (
    MAX_RESULT_AREA_RATIO,
    ClockPing,
    ErrorCode,
    KeyLatency,
    Stamp,
    StylizeReply,
    StylizeRequest,
    decode,
    encode,
    stylize_subject,
)

WAIT_S = 30.0


def _limit(gateway: Gateway, **limits: float) -> SessionLimits:
    """Give the gateway's next sessions these limits (the rest at their defaults)."""
    settings = dataclasses.replace(gateway.settings.limits, **limits)
    gateway.settings = dataclasses.replace(gateway.settings, limits=settings)
    return settings


async def _in_order(phone: BarePhone) -> None:
    """Wait until the gateway has handled every message the phone sent so far (the channel is ordered: a clock
    probe's answer comes after them)."""
    phone.channel.send(encode(ClockPing(phone_ns=time.monotonic_ns())))
    await asyncio.wait_for(phone.pongs.get(), WAIT_S)


@pytest.mark.slow
async def test_a_phone_announcing_random_pts_neither_stalls_a_good_one_nor_stays(
    worker: StylizerWorker, gateway: Gateway
) -> None:
    """On main, a 64x64 stream announcing 1,024 random pts cost the gateway ~200 ms of pure Python per decoded frame
    (a good phone beside it got 0/149 keys) and its session never ended."""
    _limit(gateway, message_burst=2048.0, unmapped_timeout_s=2.0)  # let all 1,024 announcements in
    bad, good = RandomPtsPhone(frames=150, size=(64, 64)), BarePhone(frames=60, size=(160, 96))
    try:
        bad_session = gateway.sessions[(await bad.connect(gateway))["stream_id"]]
        await good.connect(gateway)
        bad.flood(1024)
        bad.feed()
        good.feed()
        keys = [await asyncio.wait_for(good.results.get(), WAIT_S) for _ in range(12)]
        await asyncio.wait_for(bad_session.closed.wait(), WAIT_S)
    finally:
        await bad.pc.close()
        await good.pc.close()
    assert [header.frame_id for header, _ in keys] == list(range(0, 60, 5))
    assert good.failures.empty()
    assert "no decoded frame matched an announced frame id" in bad_session.close_reason


async def test_a_result_too_large_for_its_key_is_refused_before_any_work(
    worker: StylizerWorker, gateway: Gateway
) -> None:
    """A 64x64 stream asking for 1024x1024 results (256x its pixels): each key fails ``too_large`` at the gateway
    without a worker seeing it; on main the worker rendered every one."""
    phone = BarePhone(frames=15, size=(64, 64))
    try:
        await phone.connect(gateway, out_width=1024, out_height=1024)
        phone.feed()
        failure = await asyncio.wait_for(phone.failures.get(), WAIT_S)
    finally:
        await phone.pc.close()
    assert failure.error_code == ErrorCode.TOO_LARGE and failure.attempts == 0
    assert f"{MAX_RESULT_AREA_RATIO}x the pixels of the 64x64 key frame" in failure.error
    assert worker.served == 0 and phone.results.empty()


async def test_the_worker_refuses_a_result_too_large_for_its_key(
    worker: StylizerWorker, nats_server: NatsServer, nc: NATS, region: str
) -> None:
    """A request straight to the worker (another gateway, an old one) is refused on the key's header alone."""
    request = StylizeRequest(
        stream_id="s",
        frame_id=1,
        style_id="any",
        image=encode_jpeg(sample_photo()[:64, :64]),
        out_width=4096,
        out_height=4096,
        budget_ms=5000.0,
    )
    start = time.monotonic()
    reply = decode((await nc.request(stylize_subject(region), encode(request), timeout=10)).data, StylizeReply)
    assert not reply.ok and reply.error_code == ErrorCode.TOO_LARGE and "pixels" in reply.error
    assert time.monotonic() - start < 1.0 and worker.served == 0


@pytest.mark.slow
async def test_a_clock_probe_flood_is_dropped_and_ends_the_session(gateway: Gateway) -> None:
    """On main, each of 79,591 probes was answered and a good phone's p95 rose to 0.36 s."""
    limits = _limit(gateway, max_dropped_messages=500)
    phone = BarePhone(frames=1, size=(64, 64))
    try:
        session = gateway.sessions[(await phone.connect(gateway))["stream_id"]]
        for _ in range(3000):
            phone.channel.send(encode(ClockPing(phone_ns=time.monotonic_ns())))
        await asyncio.wait_for(session.closed.wait(), WAIT_S)
    finally:
        await phone.pc.close()
    assert "data-channel flood" in session.close_reason
    assert session.counts["dropped_messages"] == limits.max_dropped_messages
    assert phone.pongs.qsize() <= limits.message_burst + limits.message_rate * 5  # the bucket's, over a few seconds


async def test_undecodable_messages_end_the_session_after_a_few(gateway: Gateway) -> None:
    limits = gateway.settings.limits
    phone = BarePhone(frames=1, size=(64, 64))
    try:
        session = gateway.sessions[(await phone.connect(gateway))["stream_id"]]
        for i in range(100):
            phone.channel.send(b"\x00\xff junk %d" % i)
        await asyncio.wait_for(session.closed.wait(), WAIT_S)
        errors = [await asyncio.wait_for(phone.errors.get(), WAIT_S) for _ in range(limits.max_bad_messages)]
    finally:
        await phone.pc.close()
    assert "bad data-channel messages" in session.close_reason
    assert session.counts["bad_messages"] == limits.max_bad_messages
    assert all(e.code == ErrorCode.MALFORMED for e in errors) and phone.errors.empty()


def _observed(region: str, part: str) -> tuple[float, float]:
    """(count, sum in s) of the phone-measured latency histogram."""
    labels = {"region": region, "part": part}
    count = REGISTRY.get_sample_value("mvs_gateway_phone_key_seconds_count", labels) or 0.0
    total = REGISTRY.get_sample_value("mvs_gateway_phone_key_seconds_sum", labels) or 0.0
    return count, total


async def test_latency_reports_count_once_per_served_key_and_within_the_gateways_timing(
    worker: StylizerWorker, gateway: Gateway, region: str
) -> None:
    """On main, 17,965 forged 60 s reports in 10 s were all observed. Test and gateway share one monotonic clock
    here, so the honest report is computed from the result header's stamps exactly as the phone does."""
    phone = BarePhone(frames=11, size=(160, 96))
    try:
        session = gateway.sessions[(await phone.connect(gateway))["stream_id"]]
        phone.feed()
        captured_ns = time.monotonic_ns()  # feed() stamps every frame's capture now
        first, _ = await asyncio.wait_for(phone.results.get(), WAIT_S)
        second, _ = await asyncio.wait_for(phone.results.get(), WAIT_S)
        stamps = {**second.stamps, Stamp.PHONE_CAPTURE: captured_ns, Stamp.PHONE_DECODED: time.monotonic_ns()}
        honest = latency_split(stamps)
        assert honest is not None
        forged = {part: 60_000.0 for part in honest}
        reports = [
            KeyLatency(frame_id=second.frame_id + 1, parts_ms=forged),  # no key served: refused
            KeyLatency(frame_id=first.frame_id, parts_ms=forged),  # served, but not in 60 s: refused
            KeyLatency(frame_id=second.frame_id, parts_ms=honest),  # observed
            KeyLatency(frame_id=second.frame_id, parts_ms=honest),  # a replay: refused
        ]
        for report in reports:
            phone.channel.send(encode(report))
        await _in_order(phone)
    finally:
        await phone.pc.close()
    assert session.counts["refused_reports"] == 3
    assert _observed(region, "round_trip") == (1.0, honest["round_trip"] / 1e3)
