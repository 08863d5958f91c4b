"""Dynamic batching in the worker (real nats-server): a full batch leaves at once and equals the unbatched
results, a lone request leaves after the batch wait, requests past their deadline are answered ``deadline``;
and the device option fails clearly where the device is missing."""

from __future__ import annotations

import asyncio
import functools

import pytest
import torch
from nats.aio.client import Client as NATS

from deploy.nats_servers import NatsServer
from edge_worker.model.base import BatchStylizer
from edge_worker.model.emulated import EmulatedAccelerator, ServiceTimeProfile
from edge_worker.quality import psnr
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.sources import default_style_photo, sample_photo
from streaming.images import decode_image, encode_jpeg
from streaming.protocol import (
    ErrorCode,
    ResultKind,
    Stamp,
    StylizeRequest,
)
from streaming.style_store import StyleStore
from tests.support import ask_worker, running_worker, stylize_request, tiny_dnn, wait_until

TIMEOUT_S = 20.0
BATCH = 4
MIN_PSNR_DB = 40.0
"""Batched vs unbatched frames through JPEG (quality 90): a batched network sums in another fp32 order, which
moves a tiny net's maps by ~2e-3 and its frames by at most one level on under 1 % of values (test_model_batch)."""


@pytest.fixture
async def style_ids(nc: NATS) -> list[str]:
    store = await StyleStore.open(nc.jetstream())
    return [await store.put(encode_jpeg(default_style_photo())), await store.put(encode_jpeg(sample_photo()[::-1]))]


_worker = functools.partial(running_worker, worker_id="w-batch", warmup=False)


def _request(frame_id: int, style_id: str, budget_ms: float = 10_000.0, **overrides: object) -> StylizeRequest:
    """Another picture per frame."""
    return stylize_request(style_id, frame_id=frame_id, shift=17 * frame_id, budget_ms=budget_ms, **overrides)


@pytest.mark.slow
async def test_a_full_batch_runs_once_and_equals_single_requests(
    nats_server: NatsServer, nc: NATS, region: str, style_ids: list[str]
) -> None:
    model = tiny_dnn()
    assert isinstance(model, BatchStylizer)
    requests = [_request(i, style_ids[i % 2]) for i in range(BATCH)]
    async with _worker(nats_server, region, model, max_batch=BATCH, batch_wait_ms=60_000.0):
        batched = await asyncio.wait_for(
            asyncio.gather(*(ask_worker(nc, region, r, TIMEOUT_S) for r in requests)), TIMEOUT_S
        )
    assert all(reply.ok for reply in batched)
    # A full batch does not wait out its 60 s, and its items ran in one call (one inference start).
    assert len({reply.stamps[Stamp.W_INFER_START] for reply in batched}) == 1
    async with _worker(nats_server, region, model, max_batch=1):
        single = [await ask_worker(nc, region, r, TIMEOUT_S) for r in requests]
    assert all(reply.ok for reply in single)
    assert len({reply.stamps[Stamp.W_INFER_START] for reply in single}) == BATCH
    for a, b in zip(batched, single, strict=True):
        assert a.frame_id == b.frame_id
        assert psnr(decode_image(a.image), decode_image(b.image)) >= MIN_PSNR_DB


async def test_mixed_results_in_one_batch_each_get_their_kind(
    nats_server: NatsServer, nc: NATS, region: str, style_ids: list[str]
) -> None:
    async with _worker(nats_server, region, tiny_dnn(), max_batch=BATCH, batch_wait_ms=60_000.0):
        kinds = [ResultKind.COEFFICIENTS, ResultKind.FRAME] * (BATCH // 2)
        requests = [_request(i, style_ids[0], result=kind) for i, kind in enumerate(kinds)]
        replies = await asyncio.wait_for(
            asyncio.gather(*(ask_worker(nc, region, r, TIMEOUT_S) for r in requests)), TIMEOUT_S
        )
        assert [reply.kind for reply in replies] == kinds and all(reply.ok for reply in replies)


@pytest.mark.slow
async def test_a_lone_request_leaves_after_the_batch_wait(
    nats_server: NatsServer, nc: NATS, region: str, style_ids: list[str]
) -> None:
    wait_ms = 150.0
    async with _worker(nats_server, region, EmulatedAccelerator(), max_batch=BATCH, batch_wait_ms=wait_ms):
        reply = await ask_worker(nc, region, _request(1, style_ids[0], result=ResultKind.COEFFICIENTS), TIMEOUT_S)
        assert reply.ok and reply.kind == ResultKind.COEFFICIENTS
        assert reply.stamps[Stamp.W_START] - reply.stamps[Stamp.W_RECEIVED] >= wait_ms * 1e6


@pytest.mark.slow
async def test_requests_past_their_deadline_are_answered_deadline(
    nats_server: NatsServer, nc: NATS, region: str, style_ids: list[str]
) -> None:
    slow = EmulatedAccelerator(ServiceTimeProfile(fixed_ms=400.0, per_item_ms=0.0))
    async with _worker(nats_server, region, slow, max_batch=1) as worker:
        first = asyncio.create_task(ask_worker(nc, region, _request(1, style_ids[0]), TIMEOUT_S))
        await wait_until(
            lambda: not worker._idle.is_set() or first.done(), TIMEOUT_S, "the first request served", poll_s=0.005
        )
        late = await ask_worker(nc, region, _request(2, style_ids[0], budget_ms=50.0), TIMEOUT_S)
        assert not late.ok and late.error_code == ErrorCode.DEADLINE
        assert (await first).ok


def test_batch_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="--queue-size"):
        WorkerConfig(max_batch=8, queue_size=4)
    with pytest.raises(ValueError, match="--max-batch"):
        WorkerConfig(max_batch=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_a_cuda_worker_without_cuda_fails_clearly() -> None:
    with pytest.raises(RuntimeError, match="--device cpu"):
        StylizerWorker(WorkerConfig(device="cuda"))
    assert StylizerWorker(WorkerConfig(device="auto")).device.type == "cpu"
