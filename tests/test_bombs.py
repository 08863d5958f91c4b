"""Decompression bombs (issue 14, item 6) at the services: a key frame or a style whose header claims a huge
image is answered with a bounded, fast error, and the worker and the gateway keep serving."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from deploy.faults import jpeg_bomb, png_bomb, unanswered_offer_sdp
from deploy.nats_servers import NatsServer
from edge_worker.service import StylizerWorker
from mobile_sim.sources import default_style_photo
from streaming.gateway.server import Gateway
from streaming.images import encode_jpeg
from streaming.protocol import ErrorCode, StylizeReply, decode, encode, stylize_subject
from streaming.style_store import StyleStore
from tests.support import longest_loop_stall, phone_offer, stylize_request

ANSWERED_WITHIN_S = 1.0
MAX_LOOP_STALL_S = 0.25


async def test_worker_refuses_bomb_frames_and_styles_and_keeps_serving(
    worker: StylizerWorker, nats_server: NatsServer, nc: NATS, region: str
) -> None:
    store = await StyleStore.open(nc.jetstream())
    good_style = await store.put(encode_jpeg(default_style_photo()))
    bomb_style = await store.put(png_bomb(16_000, 16_000))
    good_frame = encode_jpeg(default_style_photo())
    for style_id, image in ((good_style, jpeg_bomb(30_000, 30_000)), (bomb_style, good_frame)):
        start = time.monotonic()
        msg = await nc.request(
            stylize_subject(region),
            encode(stylize_request(style_id, image=image, out_width=64, out_height=64)),
            timeout=5,
        )
        reply = decode(msg.data, StylizeReply)
        assert time.monotonic() - start < ANSWERED_WITHIN_S
        assert not reply.ok and reply.error_code == ErrorCode.INVALID and "exceeds" in reply.error
        assert len(msg.data) < 1024
    msg = await nc.request(
        stylize_subject(region),
        encode(stylize_request(good_style, image=good_frame, out_width=64, out_height=64)),
        timeout=10,
    )
    assert decode(msg.data, StylizeReply).ok


@pytest.mark.slow
async def test_gateway_refuses_a_bomb_style_fast_without_blocking_its_loop(gateway: Gateway) -> None:
    sdp = await unanswered_offer_sdp()
    bombs = [png_bomb(16_000, 16_000), jpeg_bomb(30_000, 30_000), png_bomb(4000, 4000)]  # the last one passes
    # the header check (within limits) but is no real image: the decoder finds out, on its own thread.
    stop = asyncio.Event()
    stall = asyncio.create_task(longest_loop_stall(stop))
    async with aiohttp.ClientSession() as http:
        for bomb in bombs:
            body = phone_offer(sdp, bomb)
            start = time.monotonic()
            async with http.post(f"{gateway.url}/offer", data=body) as response:
                assert response.status == 400
                assert "not a usable image" in (await response.json())["error"]
            assert time.monotonic() - start < ANSWERED_WITHIN_S
        stop.set()
        assert await stall < MAX_LOOP_STALL_S
        async with http.get(f"{gateway.url}/healthz") as response:
            body = await response.json()
        assert body["sessions"] == 0 and body["nats_connected"]
