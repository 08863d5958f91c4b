"""Helpers the tests share: one way to wait for a condition, to build a stylize request, to ask a worker, to post
an offer to a gateway and to make the tiny test network. Fixtures live in ``tests/conftest.py``."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import inspect
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import cv2
import numpy as np
import torch
from aiortc import RTCPeerConnection, RTCSessionDescription
from nats.aio.client import Client as NATS

from deploy.faults import key_request, offer_body
from deploy.nats_servers import NatsServer
from edge_worker.model.base import Stylizer
from edge_worker.model.stylizer import CONFIGS, PhotoStylizer
from edge_worker.retrain import RetrainableStylizer
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.sources import default_style_photo, sample_photo
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK, gathering_on
from streaming.images import encode_jpeg
from streaming.protocol import StylizeReply, StylizeRequest, decode, encode, stylize_subject
from streaming.style_store import StyleStore

T = TypeVar("T")

POLL_S = 0.05
"""How often :func:`wait_until` looks again: short against every wait here, long against a loop turn."""


async def wait_until(
    predicate: Callable[[], T | Awaitable[T]], timeout_s: float, what: str, poll_s: float = POLL_S
) -> T:
    """The first truthy value of ``predicate`` (a plain or an async callable), asked every ``poll_s`` seconds;
    fails the test naming ``what`` and the last value seen when none comes within ``timeout_s`` seconds (a
    predicate still running then is cancelled). ``poll_s=0`` only yields to the loop: for predicates that wait
    themselves (an aggregator's ``step``, a discovery round)."""
    last: object = None
    try:
        async with asyncio.timeout(timeout_s) as deadline:
            while True:
                value = predicate()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value  # type: ignore[return-value]
                last = value
                await asyncio.sleep(poll_s)
    except TimeoutError:
        if deadline.expired():
            raise AssertionError(f"not within {timeout_s} s: {what} (last: {last!r})") from None
        raise


def wait_until_sync(predicate: Callable[[], T], timeout_s: float, what: str, poll_s: float = POLL_S) -> T:
    """:func:`wait_until` for code outside an event loop (another process's state, a file)."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what} (last: {value!r})")
        time.sleep(poll_s)
    return value


def stylize_request(
    style_id: str, size: tuple[int, int] = (320, 180), shift: int = 0, **overrides: Any
) -> StylizeRequest:
    """The fault kit's :func:`key_request` for the sample photo resized to ``size`` (rolled ``shift`` columns:
    another picture per frame), answered at that size within 3 s; ``overrides`` sets any other field (``image``
    included)."""
    image = overrides.pop("image", None)
    if image is None:
        image = encode_jpeg(np.roll(cv2.resize(sample_photo(), size), shift, axis=1))
    request = key_request(style_id, image, size, 3000.0)
    return dataclasses.replace(request, **overrides)


async def ask_worker(nc: NATS, region: str, request: StylizeRequest | bytes, timeout_s: float) -> StylizeReply:
    """One stylize request to ``region``'s workers (raw bytes are sent as they are), its decoded reply."""
    data = request if isinstance(request, bytes) else encode(request)
    msg = await nc.request(stylize_subject(region), data, timeout=timeout_s)
    return decode(msg.data, StylizeReply)


def tiny_dnn(**config: Any) -> PhotoStylizer:
    """The paper's network in its ``tiny`` test configuration (fields of ``config`` replaced), seeded, in eval."""
    torch.manual_seed(0)
    return PhotoStylizer(dataclasses.replace(CONFIGS["tiny"], **config)).eval()


TRAINING_WAIT_S = 30.0
"""How long a federated test waits for a worker to train, publish or adopt a version on a busy 2-core machine."""


def tiny_retrainable_dnn() -> RetrainableStylizer:
    """:func:`tiny_dnn`, retrainable on 64-pixel crops."""
    return RetrainableStylizer(tiny_dnn(), train_size=64)


async def serve_key_frames(nc: NATS, count: int, region: str = "fl") -> None:
    """Store the default style and have ``region`` stylize ``count`` small key frames; each must succeed."""
    style_id = await (await StyleStore.open(nc.jetstream())).put(DEFAULT_STYLE_JPEG)
    for i in range(count):
        request = stylize_request(style_id, size=(64, 36), frame_id=i, budget_ms=2000.0)
        assert (await ask_worker(nc, region, request, timeout_s=5.0)).ok


DEFAULT_STYLE_JPEG = encode_jpeg(default_style_photo())
"""The bundled style photo as a phone uploads it."""


def phone_offer(sdp: str, style: bytes = DEFAULT_STYLE_JPEG, **fields: object) -> bytes:
    """A phone's ``/offer`` body: the SDP offer, the style image (base64) and any other ``fields``."""
    return offer_body(type="offer", sdp=sdp, style=base64.b64encode(style).decode(), **fields)


async def post_offer(
    gateway: Gateway, body: str | bytes, source: str = "127.0.0.1", token: str | None = None
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to the gateway's ``/offer`` from the loopback address ``source`` (with a bearer ``token``):
    the status and the JSON answer."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(f"{gateway.url}/offer", data=body, headers=headers) as response:
            return response.status, await response.json()


async def offer_peer(gateway: Gateway, pc: RTCPeerConnection) -> dict[str, Any]:
    """Offer ``pc`` (its channels and tracks added; host candidates on loopback) with the default style and take
    the gateway's answer: the answer's JSON (``stream_id``, ``style_id``, ...)."""
    with gathering_on(LOOPBACK):
        await pc.setLocalDescription(await pc.createOffer())
    status, answer = await post_offer(gateway, phone_offer(pc.localDescription.sdp))
    assert status == 200, answer
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    return answer


@asynccontextmanager
async def running_gateway(nats_server: NatsServer, region: str, **settings: Any) -> AsyncIterator[Gateway]:
    """A gateway on loopback with ``settings`` (fields of :class:`GatewayConfig`), stopped on exit."""
    gateway = Gateway(GatewayConfig(port=0, nats_url=nats_server.url, region=region, ice_hosts=LOOPBACK, **settings))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


@asynccontextmanager
async def running_worker(
    nats_server: NatsServer, region: str, stylizer: Stylizer | None = None, **settings: Any
) -> AsyncIterator[StylizerWorker]:
    """A worker on one inference thread with ``settings`` (fields of :class:`WorkerConfig`), stopped on exit."""
    config = WorkerConfig(nats_url=nats_server.url, region=region, threads=1, **settings)
    worker = StylizerWorker(config, stylizer=stylizer)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


LOOP_TICK_S = 0.01
"""How often :func:`longest_loop_stall` wakes (its worst gap includes this)."""


async def longest_loop_stall(stop: asyncio.Event) -> float:
    """The longest the event loop went without running this task until ``stop`` (a blocked loop shows here)."""
    worst, last = 0.0, time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(LOOP_TICK_S)
        now = time.monotonic()
        worst, last = max(worst, now - last), now
    return worst


async def start_module(
    module: str, *argv: str, stdout: int | None = asyncio.subprocess.DEVNULL
) -> asyncio.subprocess.Process:
    """``python -m module argv...`` as a user runs it, stderr piped (and stdout when asked)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *argv, stdout=stdout, stderr=asyncio.subprocess.PIPE
    )


async def run_module(module: str, *argv: str, timeout_s: float = 120.0) -> tuple[int, list[str]]:
    """Run ``python -m module argv...`` to its end: its exit status and stderr lines."""
    proc = await start_module(module, *argv)
    _, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, err.decode().splitlines()
