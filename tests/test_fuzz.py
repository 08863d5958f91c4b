"""Keep the holes closed (issue 14): a few thousand mutated stylize requests to a real worker and a few hundred
bad offers to a real gateway, each answered with a bounded reply, and both still serve a good request after."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import AsyncIterator

import aiohttp
import msgpack
import pytest
from nats.aio.client import Client as NATS

from deploy.faults import jpeg_bomb, png_bomb, unanswered_offer_sdp
from deploy.nats_servers import NatsServer
from edge_worker.service import StylizerWorker
from mobile_sim.sources import default_style_photo
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK
from streaming.images import encode_jpeg
from streaming.protocol import (
    MAX_MESSAGE_BYTES,
    StylizeReply,
    StylizeRequest,
    decode,
    encode,
    stylize_subject,
)
from streaming.style_store import StyleStore

REQUESTS = 2000
OFFERS = 300
CONCURRENCY = 32
ERROR_REPLY_BYTES = 2048
"""An error reply quotes its input at most briefly (streaming.protocol.MAX_ERROR_CHARS)."""
SEED = 14


def _mutations(valid: bytes, rng: random.Random) -> bytes:
    """One hostile variant of a valid msgpack request."""
    body = msgpack.unpackb(valid)
    kind = rng.randrange(9)
    if kind == 0:  # flip bytes
        data = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 1:  # truncate
        return valid[: rng.randrange(len(valid))]
    if kind == 2:  # a field of the wrong type
        name = rng.choice(list(body))
        body[name] = rng.choice([None, -1, 1e300, "x" * rng.randint(0, 5000), b"\x00" * 10, [1, 2], {"a": 1}])
    elif kind == 3:  # a big unknown field
        body["k" * rng.randint(1, 100_000)] = 1
    elif kind == 4:  # a bomb for a frame
        body["image"] = rng.choice([jpeg_bomb(), png_bomb(), jpeg_bomb(4097, 10)])
    elif kind == 5:  # sizes out of bounds
        body["out_width"], body["out_height"] = rng.choice([(0, 10), (100_000, 10), (-5, -5), (2**62, 1)])
    elif kind == 6:  # a missing field
        del body[rng.choice(list(body))]
    elif kind == 7:  # many stamps, long ids
        body["stamps"] = {f"s{i}": i for i in range(rng.randint(33, 5000))}
        body["stream_id"] = "s" * rng.randint(129, 100_000)
    else:  # random bytes
        return rng.randbytes(rng.randint(0, 2000))
    return msgpack.packb(body)


@pytest.mark.slow
async def test_worker_answers_every_mutated_request_briefly_and_keeps_serving(
    worker: StylizerWorker, nats_server: NatsServer, nc: NATS, region: str
) -> None:
    rng = random.Random(SEED)
    style_id = await (await StyleStore.open(nc.jetstream())).put(encode_jpeg(default_style_photo()))
    frame = encode_jpeg(default_style_photo()[:64, :64])
    good = encode(
        StylizeRequest(
            stream_id="s", frame_id=1, style_id=style_id, image=frame, out_width=64, out_height=64, budget_ms=5000.0
        )
    )
    subject = stylize_subject(region)
    limit = asyncio.Semaphore(CONCURRENCY)
    unanswered, oversized = 0, []

    async def ask(data: bytes) -> None:
        nonlocal unanswered
        async with limit:
            try:
                msg = await nc.request(subject, data, timeout=10)
            except Exception:
                unanswered += 1
                return
        reply = decode(msg.data, StylizeReply)
        if len(msg.data) > (MAX_MESSAGE_BYTES if reply.ok else ERROR_REPLY_BYTES):
            oversized.append(len(msg.data))

    start = time.monotonic()
    await asyncio.gather(*(ask(_mutations(good, rng)) for _ in range(REQUESTS)))
    assert unanswered == 0 and oversized == [], (unanswered, oversized[:5])
    reply = decode((await nc.request(subject, good, timeout=10)).data, StylizeReply)
    assert reply.ok
    assert time.monotonic() - start < 30.0


def _bad_offer(sdp: str, style: str, rng: random.Random) -> bytes:
    body: dict[str, object] = {"type": "offer", "sdp": sdp, "style": style}
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 3000))
    if kind == 1:
        return json.dumps(body).encode()[: rng.randrange(200)]
    if kind == 2:
        body["sdp"] = sdp.replace("m=video", rng.choice(["m=audio", "m=" + "x" * 50_000, ""]))
    elif kind == 3:
        body["style"] = base64.b64encode(rng.choice([jpeg_bomb(), png_bomb(), rng.randbytes(500)])).decode()
    elif kind == 4:
        body[rng.choice(["type", "sdp", "style", "out_width", "result"])] = rng.choice(
            [None, 3, -1, "x" * 100_000, [1], {"a": 1}]
        )
    elif kind == 5:
        body["k" * 100_000] = 1
        body["type"] = "answer"
    elif kind == 6:
        del body[rng.choice(["type", "sdp", "style"])]
    else:
        body["style"] = "%%" + "A" * rng.randint(1, 1000)
    return json.dumps(body).encode()


@pytest.fixture
async def gateway(nats_server: NatsServer, region: str) -> AsyncIterator[Gateway]:
    """A gateway whose offer rate per address lets :data:`OFFERS` bad offers from this one address through."""
    config = GatewayConfig(
        port=0, nats_url=nats_server.url, region=region, ice_hosts=LOOPBACK, offer_burst_per_address=OFFERS
    )
    g = Gateway(config)
    await g.start()
    yield g
    await g.stop()


@pytest.mark.slow
async def test_gateway_answers_every_bad_offer_briefly_and_keeps_serving(gateway: Gateway) -> None:
    rng = random.Random(SEED)
    sdp = await unanswered_offer_sdp()
    style = base64.b64encode(encode_jpeg(default_style_photo())).decode()
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession() as http:
        for _ in range(OFFERS):
            async with http.post(f"{gateway.url}/offer", data=_bad_offer(sdp, style, rng)) as response:
                body = await response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
            assert response.status in (400, 413) and len(body) < ERROR_REPLY_BYTES, (response.status, body[:200])
        async with http.get(f"{gateway.url}/healthz") as response:
            health = await response.json()
    assert health["sessions"] == 0 and health["nats_connected"], health
    assert statuses.get(400, 0) > OFFERS // 2
