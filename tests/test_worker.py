"""The stylizer worker against a real nats-server: good requests, and every kind of bad one gets an
error reply while the worker keeps serving."""

from __future__ import annotations

import asyncio

import cv2
import msgpack
import nats
import numpy as np
import pytest
from nats.aio.client import Client as NATS

from deploy.nats_servers import NatsServer
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.sources import default_style_photo, sample_photo
from streaming.coefficients import decode_coefficients
from streaming.gateway.stylize_client import discover_workers
from streaming.images import decode_image, encode_jpeg
from streaming.protocol import (
    MAX_FRAME_SIDE,
    MAX_MESSAGE_BYTES,
    SCHEMA_VERSION,
    ErrorCode,
    ResultKind,
    WorkerInfo,
    encode,
    stylize_subject,
)
from streaming.style_store import StyleStore
from tests.oracles import colour_transfer_bgr, monge_kantorovich
from tests.support import ask_worker, stylize_request, wait_until

TIMEOUT_S = 5.0
MAP_TOLERANCE = 0.02
"""The worker takes the style's colour statistics on a downsized copy; the oracle on every pixel."""


@pytest.fixture
async def style_id(nc: NATS) -> str:
    return await (await StyleStore.open(nc.jetstream())).put(encode_jpeg(default_style_photo()))


async def _style_jpeg(nc: NATS, style_id: str) -> bytes:
    """The style as the worker reads it from the store."""
    return await (await StyleStore.open(nc.jetstream())).get(style_id)


async def test_stylizes_a_key_frame_with_timings(worker: StylizerWorker, nc: NATS, region: str, style_id: str) -> None:
    request = stylize_request(style_id)
    reply = await ask_worker(nc, region, request, TIMEOUT_S)
    assert reply.ok and reply.frame_id == 1 and reply.worker_id == "w-inproc"
    out = decode_image(reply.image)
    assert out.shape == (180, 320, 3)
    # The closed-form colour transfer of the same (decoded) input, written out independently of the worker's
    # model, gives the same picture up to JPEG loss.
    expected = colour_transfer_bgr(decode_image(request.image), decode_image(encode_jpeg(default_style_photo())))
    assert cv2.PSNR(out, expected) > 35
    assert cv2.PSNR(out, decode_image(request.image)) < 25  # and it is not the input
    s = reply.stamps
    assert s["w_received"] <= s["w_start"] <= s["w_infer_start"] <= s["w_infer_end"] <= s["w_sent"]


async def test_coefficient_request_gets_the_colour_map(
    worker: StylizerWorker, nc: NATS, region: str, style_id: str
) -> None:
    request = stylize_request(style_id, result=ResultKind.COEFFICIENTS)
    reply = await ask_worker(nc, region, request, TIMEOUT_S)
    assert reply.ok and reply.kind == ResultKind.COEFFICIENTS
    coeffs = decode_coefficients(reply.image)
    assert coeffs.shape == (1, 1, 12)  # colour transfer is one global affine map
    # Applied to the key frame, the map gives what a frame request returns, up to quantization and JPEG.
    content = cv2.cvtColor(decode_image(request.image), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    a, b = coeffs[0, 0, :9].reshape(3, 3), coeffs[0, 0, 9:]
    rgb = [
        cv2.cvtColor(decode_image(jpeg), cv2.COLOR_BGR2RGB) for jpeg in (request.image, await _style_jpeg(nc, style_id))
    ]
    expected_a, expected_b = monge_kantorovich(*rgb)  # the closed form, written out here
    np.testing.assert_allclose(a, expected_a, atol=MAP_TOLERANCE)
    np.testing.assert_allclose(b, expected_b, atol=MAP_TOLERANCE)
    restyled = np.clip(content @ a.T + b, 0, 1) * 255
    framed = await ask_worker(nc, region, stylize_request(style_id), TIMEOUT_S)
    assert framed.kind == ResultKind.FRAME
    expected = cv2.cvtColor(decode_image(framed.image), cv2.COLOR_BGR2RGB)
    assert cv2.PSNR(restyled.round().astype(np.uint8), expected) > 35
    bad = await ask_worker(nc, region, stylize_request(style_id, result="pixels"), TIMEOUT_S)
    assert not bad.ok and bad.error_code == ErrorCode.INVALID and "result" in bad.error


async def _until_delivered(nc: NATS, region: str, requests: int) -> None:
    """Until the region's one worker says (discovery) that it has all ``requests``: served, in hand or queued, with
    at least one still queued."""

    def delivered(info: WorkerInfo) -> bool:
        return info.queue_depth >= 1 and info.served + info.queue_depth >= requests - 1

    async def holding() -> list[WorkerInfo]:
        return [i for i in await discover_workers(nc, region, wait_s=0.05) if delivered(i)]

    await wait_until(holding, TIMEOUT_S, f"the worker holding {requests} requests", poll_s=0)


async def _assert_alive(nc: NATS, region: str, style_id: str) -> None:
    assert (await ask_worker(nc, region, stylize_request(style_id), TIMEOUT_S)).ok


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\xc1 not msgpack", ErrorCode.MALFORMED),
        (msgpack.packb({"v": SCHEMA_VERSION + 7, "t": "stylize"}), ErrorCode.VERSION),
        (msgpack.packb({"v": SCHEMA_VERSION, "t": "stylize", "frame_id": "x"}), ErrorCode.INVALID),
        (b"", ErrorCode.MALFORMED),
    ],
)
async def test_undecodable_requests_get_error_replies(
    worker: StylizerWorker, nc: NATS, region: str, style_id: str, payload: bytes, code: str
) -> None:
    reply = await ask_worker(nc, region, payload, TIMEOUT_S)
    assert not reply.ok and reply.error_code == code and reply.error
    await _assert_alive(nc, region, style_id)


async def test_oversize_frame_and_output_are_refused(
    worker: StylizerWorker, nc: NATS, region: str, style_id: str
) -> None:
    huge = encode(stylize_request(style_id, image=b"\xff" * MAX_MESSAGE_BYTES))
    reply = await ask_worker(nc, region, huge, TIMEOUT_S)
    assert reply.error_code == ErrorCode.TOO_LARGE
    reply = await ask_worker(nc, region, stylize_request(style_id, out_width=MAX_FRAME_SIDE * 2), TIMEOUT_S)
    assert reply.error_code == ErrorCode.TOO_LARGE
    big_picture = encode_jpeg(np.zeros((MAX_FRAME_SIDE + 8, 16, 3), np.uint8))
    reply = await ask_worker(nc, region, stylize_request(style_id, image=big_picture), TIMEOUT_S)
    assert reply.error_code == ErrorCode.INVALID and "exceeds" in reply.error
    await _assert_alive(nc, region, style_id)


@pytest.mark.slow
async def test_bad_image_and_unknown_style(worker: StylizerWorker, nc: NATS, region: str, style_id: str) -> None:
    reply = await ask_worker(nc, region, stylize_request(style_id, image=b"not a jpeg"), TIMEOUT_S)
    assert reply.error_code == ErrorCode.INVALID
    reply = await ask_worker(nc, region, stylize_request("0" * 32), TIMEOUT_S)
    assert reply.error_code == ErrorCode.UNKNOWN_STYLE
    await _assert_alive(nc, region, style_id)


async def test_spent_budget_is_not_computed(worker: StylizerWorker, nc: NATS, region: str, style_id: str) -> None:
    reply = await ask_worker(nc, region, stylize_request(style_id, budget_ms=-1.0), TIMEOUT_S)
    assert reply.error_code == ErrorCode.DEADLINE
    served = worker.served
    reply = await ask_worker(nc, region, stylize_request(style_id, budget_ms=0.001), TIMEOUT_S)  # expires while queued
    assert reply.error_code == ErrorCode.DEADLINE and worker.served == served


async def test_full_queue_sheds_the_oldest_with_overloaded(
    nats_server: NatsServer, nc: NATS, region: str, style_id: str
) -> None:
    worker = StylizerWorker(WorkerConfig(nats_url=nats_server.url, region=region, queue_size=1, threads=1))
    await worker.start()
    try:
        big = cv2.resize(sample_photo(), (1280, 720))
        requests = [
            stylize_request(style_id, frame_id=i, image=encode_jpeg(big), out_width=1280, out_height=720)
            for i in range(6)
        ]
        replies = await asyncio.gather(*(ask_worker(nc, region, r, TIMEOUT_S) for r in requests))
    finally:
        await worker.stop()
    codes = [r.error_code for r in replies]
    assert codes.count(ErrorCode.OVERLOADED) >= 1, codes
    assert sum(r.ok for r in replies) >= 1
    assert replies[-1].ok  # the newest frame always wins


@pytest.mark.slow
async def test_workers_answer_discovery(worker: StylizerWorker, nc: NATS, region: str) -> None:
    infos = await discover_workers(nc, region, wait_s=0.5)
    assert [(i.worker_id, i.region, i.model) for i in infos] == [("w-inproc", region, "color-transfer")]
    assert await discover_workers(nc, region + "x", wait_s=0.2) == []


@pytest.mark.slow
async def test_stop_hands_queued_requests_back(nats_server: NatsServer, nc: NATS, region: str, style_id: str) -> None:
    worker = StylizerWorker(WorkerConfig(nats_url=nats_server.url, region=region, queue_size=8, threads=1))
    await worker.start()
    big = encode_jpeg(cv2.resize(sample_photo(), (1920, 1080)))
    requests = [stylize_request(style_id, frame_id=i, image=big, out_width=1920, out_height=1080) for i in range(4)]
    pending = [asyncio.ensure_future(ask_worker(nc, region, r, TIMEOUT_S)) for r in requests]
    await _until_delivered(nc, region, len(requests))  # the first is being computed, the others wait
    await worker.stop()
    replies = await asyncio.gather(*pending)
    assert replies[0].ok  # the request in progress finishes
    assert {r.error_code for r in replies[1:]} <= {ErrorCode.OVERLOADED, ""}
    assert any(r.error_code == ErrorCode.OVERLOADED for r in replies)
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(stylize_subject(region), encode(requests[0]), timeout=1)
