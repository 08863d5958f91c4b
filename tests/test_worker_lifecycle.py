"""The worker's less travelled paths against a real nats-server: its style cache, a model that fails on one
input, a request still running when it stops, and its exit once NATS is gone for good; and the gateway's
stylize client with no worker or a peer answering junk."""

from __future__ import annotations

import asyncio
import functools
import logging

import nats
import numpy as np
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

import edge_worker.service as service
from deploy.nats_servers import NatsServer
from edge_worker.model.color_transfer import ColorStats, LinearColorTransfer
from edge_worker.model.emulated import EmulatedAccelerator, ServiceTimeProfile
from edge_worker.service import StylizerWorker, WorkerConfig, run
from mobile_sim.sources import default_style_photo
from streaming.gateway.stylize_client import discover_workers, request_stylize
from streaming.images import encode_jpeg
from streaming.nats_connect import connect_nats
from streaming.protocol import STYLE_BUCKET, ErrorCode, StylizeRequest, decode, stylize_subject
from streaming.style_store import StyleStore
from tests.support import ask_worker, stylize_request, wait_until

TIMEOUT_S = 10.0
POISON_WIDTH = 321
"""Frames of this width make the broken model below fail."""


_request = functools.partial(stylize_request, size=(160, 96), budget_ms=5000.0)


async def _put_styles(nc: NATS, count: int) -> list[str]:
    store = await StyleStore.open(nc.jetstream())
    base = default_style_photo()
    return [await store.put(encode_jpeg(np.roll(base, 40 * i, axis=2 if i % 2 else 1))) for i in range(count)]


async def test_the_style_cache_keeps_only_the_newest_styles(nats_server: NatsServer, nc: NATS, region: str) -> None:
    """With room for one style: a style deleted from the store is still served from the cache until another
    style pushes it out."""
    first, second = await _put_styles(nc, 2)
    worker = StylizerWorker(WorkerConfig(nats_url=nats_server.url, region=region, style_cache=1, warmup=False))
    await worker.start()
    try:
        assert (await ask_worker(nc, region, _request(first), TIMEOUT_S)).ok
        await (await nc.jetstream().object_store(STYLE_BUCKET)).delete(first)
        assert (await ask_worker(nc, region, _request(first), TIMEOUT_S)).ok  # cached
        assert (await ask_worker(nc, region, _request(second), TIMEOUT_S)).ok  # evicts the first
        reply = await ask_worker(nc, region, _request(first), TIMEOUT_S)
        assert not reply.ok and reply.error_code == ErrorCode.UNKNOWN_STYLE
    finally:
        await worker.stop()


class _BrokenModel(LinearColorTransfer):
    """The colour transfer, except that it fails (not a ValueError: a bug) on frames of one width."""

    def stylize(self, content: np.ndarray, style: ColorStats, out_size: tuple[int, int]) -> np.ndarray:
        if out_size[0] == POISON_WIDTH:
            raise RuntimeError("model bug")
        return super().stylize(content, style, out_size)


async def test_a_model_failure_is_an_internal_error_reply_and_the_worker_serves_on(
    nats_server: NatsServer, nc: NATS, region: str
) -> None:
    (style_id,) = await _put_styles(nc, 1)
    worker = StylizerWorker(WorkerConfig(nats_url=nats_server.url, region=region, warmup=False), _BrokenModel())
    await worker.start()
    try:
        reply = await ask_worker(nc, region, _request(style_id, out_width=POISON_WIDTH), TIMEOUT_S)
        assert not reply.ok and reply.error_code == ErrorCode.INTERNAL and "RuntimeError: model bug" in reply.error
        assert (await ask_worker(nc, region, _request(style_id), TIMEOUT_S)).ok
    finally:
        await worker.stop()


async def test_stop_gives_up_on_a_request_running_past_its_grace(
    nats_server: NatsServer, nc: NATS, region: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    grace_s, service_s = 0.2, 3.0
    monkeypatch.setattr(service, "STOP_GRACE_S", grace_s)
    (style_id,) = await _put_styles(nc, 1)
    model = EmulatedAccelerator(ServiceTimeProfile(fixed_ms=service_s * 1000, per_item_ms=0.0))
    worker = StylizerWorker(WorkerConfig(nats_url=nats_server.url, region=region, warmup=False), model)
    await worker.start()
    caplog.set_level(logging.WARNING, logger="edge_worker.service")
    pending = asyncio.ensure_future(ask_worker(nc, region, _request(style_id, budget_ms=10_000), TIMEOUT_S))
    try:

        def started() -> float | None:  # the batch-size histogram is observed as inference starts
            return REGISTRY.get_sample_value("mvs_worker_batch_size_count", {"region": region})

        await wait_until(started, TIMEOUT_S, "inference started", poll_s=0.01)
        loop = asyncio.get_running_loop()
        stopping = loop.time()
        await worker.stop()
        assert loop.time() - stopping < service_s  # it did not wait for the request
        assert "stopping with a request still running" in [r.getMessage() for r in caplog.records]
    finally:
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)


@pytest.mark.slow
async def test_the_worker_exits_once_nats_is_gone_for_good(
    region: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The reconnect policy shortened to one attempt (the real one tries for two minutes)."""
    monkeypatch.setattr(service, "connect_nats", functools.partial(connect_nats, max_reconnect_attempts=1))
    caplog.set_level(logging.ERROR, logger="edge_worker.service")
    server = NatsServer().start()
    try:
        worker = asyncio.create_task(run(WorkerConfig(nats_url=server.url, region=region, warmup=False)))
        client = await nats.connect(server.url)

        async def serving() -> None:
            while not await discover_workers(client, region, wait_s=0.1):
                pass

        await asyncio.wait_for(serving(), TIMEOUT_S)
        await client.close()
    finally:
        server.stop()
    await asyncio.wait_for(worker, 30)  # run() returns; python -m edge_worker then exits 1 for its orchestrator
    assert "NATS connection closed for good; worker exits" in [r.getMessage() for r in caplog.records]


async def test_no_worker_is_told_apart_from_a_timeout(nc: NATS, region: str) -> None:
    outcome = await request_stylize(nc, stylize_subject(region), _request("0" * 32), 2000.0, 500.0)
    assert not outcome.ok and outcome.reply is None
    assert outcome.error_code == ErrorCode.NO_WORKERS and outcome.attempts == 2


async def test_a_junk_reply_is_a_protocol_error_retried_once(nc: NATS, region: str) -> None:
    received: list[int] = []

    async def junk(msg: Msg) -> None:
        received.append(decode(msg.data, StylizeRequest).attempt)
        await msg.respond(b"\xc1 not a reply")

    sub = await nc.subscribe(stylize_subject(region), queue="stylizers", cb=junk)
    try:
        outcome = await request_stylize(nc, stylize_subject(region), _request("0" * 32), 2000.0, 500.0)
    finally:
        await sub.unsubscribe()
    assert not outcome.ok and outcome.reply is None and outcome.attempts == 2 and received == [0, 1]
    assert outcome.error_code == ErrorCode.MALFORMED and "bad reply from worker" in outcome.error
