"""Unbounded echoes (issue 14, item 7): an error never quotes its input at length, and repeated bad input is
logged rate-limited per source."""

from __future__ import annotations

import base64
import json
import logging

import aiohttp
import msgpack
import pytest
from nats.aio.client import Client as NATS

from deploy.nats_servers import NatsServer
from edge_worker.service import StylizerWorker
from mobile_sim.sources import default_style_photo
from streaming.gateway.server import Gateway
from streaming.images import encode_jpeg
from streaming.protocol import (
    MAX_ERROR_CHARS,
    SCHEMA_VERSION,
    ErrorCode,
    ProtocolError,
    StylizeReply,
    StylizeRequest,
    decode,
    stylize_subject,
)
from streaming.telemetry import LOG_BURST, LogLimiter

BIG_KEY = "k" * 200_000
SMALL_REPLY_BYTES = 1024


def _request_with(**extra: object) -> bytes:
    body = {
        "v": SCHEMA_VERSION,
        "t": StylizeRequest.TYPE,
        "stream_id": "s",
        "frame_id": 1,
        "style_id": "x",
        "image": encode_jpeg(default_style_photo()),
        "out_width": 64,
        "out_height": 64,
        "budget_ms": 3000.0,
    }
    body.update(extra)
    return msgpack.packb(body)


def test_protocol_errors_quote_briefly() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(_request_with(**{BIG_KEY: 1, "other": 2}), StylizeRequest)
    assert len(str(caught.value)) <= MAX_ERROR_CHARS and "(2 in all)" in str(caught.value)
    with pytest.raises(ProtocolError) as caught:
        decode(msgpack.packb({"v": SCHEMA_VERSION, "t": BIG_KEY}), StylizeRequest)
    assert len(str(caught.value)) <= MAX_ERROR_CHARS


@pytest.mark.parametrize(
    "extra",
    [{BIG_KEY: 1}, {"result": BIG_KEY}, {"style_id": BIG_KEY}, {"stamps": {f"s{i}": i for i in range(10_000)}}],
    ids=["unknown-key", "result", "style-id", "stamps"],
)
async def test_worker_answers_a_huge_echo_bait_with_a_small_reply(
    worker: StylizerWorker, nats_server: NatsServer, nc: NATS, region: str, extra: dict[str, object]
) -> None:
    msg = await nc.request(stylize_subject(region), _request_with(**extra), timeout=5)
    reply = decode(msg.data, StylizeReply)
    assert not reply.ok and reply.error_code == ErrorCode.INVALID and len(msg.data) < SMALL_REPLY_BYTES


async def test_gateway_answers_a_huge_bad_offer_briefly_and_logs_it_rate_limited(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    style = base64.b64encode(encode_jpeg(default_style_photo())).decode()
    body = json.dumps({"type": "offer", "sdp": "v=0\r\n" + "m=" + "x" * 200_000, "style": style})
    caplog.set_level(logging.INFO, logger="streaming.gateway.server")
    async with aiohttp.ClientSession() as http:
        for _ in range(LOG_BURST * 3):
            async with http.post(f"{gateway.url}/offer", data=body) as response:
                reply = await response.read()
            assert response.status == 400 and len(reply) < SMALL_REPLY_BYTES
    refused = [r for r in caplog.records if r.getMessage() == "offer refused"]
    assert len(refused) == LOG_BURST


def test_log_limiter_bounds_each_source_and_reports_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.limiter")
    caplog.set_level(logging.INFO, logger="test.limiter")
    limiter = LogLimiter(burst=2, period_s=0.0)  # every call starts a new period: nothing is suppressed
    assert all(limiter.log(logger, logging.INFO, "a", "m") for _ in range(5))
    limiter = LogLimiter(burst=2, period_s=3600.0)
    logged = [limiter.log(logger, logging.INFO, "a", "m") for _ in range(10)]
    assert logged == [True, True] + [False] * 8
    assert limiter.log(logger, logging.INFO, "b", "m")  # another source has its own budget
    limiter._sources["a"][0] -= 7200.0  # the period has passed
    assert limiter.log(logger, logging.INFO, "a", "m")
    assert caplog.records[-1].suppressed == 8  # type: ignore[attr-defined]
