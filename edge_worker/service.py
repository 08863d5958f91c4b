"""The stylizer worker: a NATS queue-group subscriber on ``mvs.<region>.stylize``.

Each request is decoded and checked on the event loop (bad ones get an error reply at once), then
queued in a bounded latest-wins queue; one inference thread decodes the JPEG, stylizes and encodes
the reply, so the loop never blocks. Requests whose budget has passed are answered with
``deadline`` instead of being computed; requests pushed out of a full queue get ``overloaded`` so
the gateway can retry elsewhere. Prepared styles are cached by style id. Before subscribing, the worker
stylizes one synthetic frame so that no request pays the model's one-time set-up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter, Gauge, Histogram

from edge_worker.federated import FederatedConfig, FederatedLearner
from edge_worker.model.base import CoefficientStylizer, Size, Stylizer, Trainable
from edge_worker.model.registry import DEFAULT_STYLIZER, load_stylizer
from streaming.coefficients import encode_coefficients
from streaming.config import JS_DOMAIN_FLAG, NATS_FLAG, REGION_FLAG, flag
from streaming.images import DEFAULT_JPEG_QUALITY, ImageDecodeError, decode_image, encode_jpeg
from streaming.nats_connect import connect_nats
from streaming.protocol import (
    DEFAULT_NATS_URL,
    DEFAULT_REGION,
    MAX_FRAME_SIDE,
    MAX_MESSAGE_BYTES,
    STYLIZE_QUEUE_GROUP,
    ErrorCode,
    ProtocolError,
    ResultKind,
    Stamp,
    StylizeReply,
    StylizeRequest,
    WorkerInfo,
    decode,
    encode,
    stylize_subject,
    validate_request,
    workers_subject,
)
from streaming.queues import LatestQueue
from streaming.style_store import StyleStore, UnknownStyleError
from streaming.telemetry import DEFAULT_METRICS_HOST, start_metrics_server

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 4
DEFAULT_STYLE_CACHE = 32
STOP_GRACE_S = 10.0
"""How long stop() lets the request being computed finish."""
REPLY_OVERHEAD_BYTES = 4096
"""Room left in a reply for everything but the image."""
WARMUP_SIZE: Size = (640, 360)
"""Frame of the start-up warm-up: 16:9 like the phones' key frames (the DNN runs every 16:9 frame at one size)."""

REQUESTS = Counter("mvs_worker_requests_total", "Stylize requests by outcome", ["region", "outcome"])
INFERENCE_SECONDS = Histogram(
    "mvs_worker_inference_seconds",
    "Stylizer time per key frame",
    ["region"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
QUEUE_DEPTH = Gauge("mvs_worker_queue_depth", "Requests waiting for the inference thread", ["region"])


def default_worker_id() -> str:
    """host-pid: unique per process on a site."""
    return f"{socket.gethostname()}-{os.getpid()}"


def warm_up(stylizer: Stylizer, size: Size = WARMUP_SIZE) -> dict[str, float]:
    """Prepare a style and stylize a synthetic frame of ``size`` the way requests do (the frame, then the
    coefficients when the stylizer has them), so that one-time set-up happens now; seconds per step."""
    frame = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    style = stylizer.prepare_style(frame)
    seconds["style"] = time.perf_counter() - start
    start = time.perf_counter()
    stylizer.stylize(frame, style, size)
    seconds["frame"] = time.perf_counter() - start
    if isinstance(stylizer, CoefficientStylizer):
        start = time.perf_counter()
        stylizer.coefficients(frame, style, size)
        seconds["coefficients"] = time.perf_counter() - start
    return seconds


@dataclass
class WorkerConfig:
    """Settings of one stylizer worker process (each field with a ``flag`` is a ``mvs worker`` flag)."""

    nats_url: str = field(default=DEFAULT_NATS_URL, metadata=NATS_FLAG)
    region: str = field(default=DEFAULT_REGION, metadata=REGION_FLAG)
    js_domain: str | None = field(default=None, metadata=JS_DOMAIN_FLAG)
    """JetStream domain of the style and model stores (when this site's NATS is a leaf node of the hub)."""
    model: str = field(
        default=DEFAULT_STYLIZER,
        metadata=flag("color-transfer, dnn (the bundled paper model) or a model file (.pt)"),
    )
    worker_id: str = field(
        default_factory=default_worker_id, metadata=flag("id in replies and logs (default: host-pid)")
    )
    queue_size: int = field(default=DEFAULT_QUEUE_SIZE, metadata=flag("requests queued (newest win)"))
    style_cache: int = field(default=DEFAULT_STYLE_CACHE, metadata=flag("prepared styles kept"))
    threads: int = field(default=0, metadata=flag("torch threads (0: torch default)"))
    """torch intra-op threads; 0 keeps torch's default."""
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    metrics_port: int = field(default=0, metadata=flag("Prometheus port (0: off); up once the worker serves"))
    metrics_host: str = field(default=DEFAULT_METRICS_HOST, metadata=flag("address the metrics listen on"))
    warmup: bool = field(
        default=True,
        metadata=flag("stylize a synthetic frame before serving so no request pays the model's one-time set-up"),
    )
    """Stylize one synthetic frame before serving, else the first request pays the one-time set-up (oneDNN's)."""
    federated: FederatedConfig | None = field(
        default=None, metadata=flag("retrain when idle", group="federated learning (needs a trainable model)")
    )
    """Retrain on served key frames when idle and sync with the cloud; None: serve only (no ``--federated-dir``)."""


@dataclass
class _Job:
    msg: Msg
    request: StylizeRequest
    deadline: float  # time.monotonic() after which the answer is worthless


class StylizerWorker:
    """Serves stylize requests of one region until :meth:`stop`."""

    def __init__(self, config: WorkerConfig, stylizer: Stylizer | None = None) -> None:
        self.config = config
        self.stylizer = stylizer if stylizer is not None else load_stylizer(config.model)
        self._queue: LatestQueue[_Job] = LatestQueue(config.queue_size)
        self._styles: OrderedDict[str, Any] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stylize")
        self._nc: NATS | None = None
        self._style_store: StyleStore | None = None
        self._consumer: asyncio.Task[None] | None = None
        self.served = 0
        self._subscriptions: list[Subscription] = []
        self.learner: FederatedLearner | None = None
        self._learning: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = asyncio.Event()
        """Set when the NATS connection is closed for good (stop, or reconnects exhausted)."""
        self.warmup_seconds: dict[str, float] = {}
        """Seconds per warm-up step (see :func:`warm_up`); empty without warm-up or before :meth:`start`."""
        self.warmed_up_ns: int | None = None
        """``time.monotonic_ns()`` when the warm-up ended (before the worker subscribed); None without warm-up."""

    async def start(self) -> None:
        """Warm the stylizer up (while connecting), subscribe to the region's subject in the queue group, serve."""
        if self.config.threads > 0:
            torch.set_num_threads(self.config.threads)
        warming = (
            asyncio.get_running_loop().run_in_executor(self._executor, warm_up, self.stylizer)
            if self.config.warmup
            else None
        )
        self._nc = await connect_nats(
            self.config.nats_url, f"worker-{self.config.worker_id}", service="worker", closed_cb=self._on_closed
        )
        self._style_store = await StyleStore.open(self._nc.jetstream(domain=self.config.js_domain))
        if self.config.federated is not None:
            await self._start_learner(self.config.federated)
        if warming is not None:
            self.warmup_seconds = await warming
            self.warmed_up_ns = time.monotonic_ns()
            log.info(
                "worker warmed up",
                extra={
                    "worker_id": self.config.worker_id,
                    "model": self.stylizer.name,
                    "size": "x".join(map(str, WARMUP_SIZE)),
                    "seconds": round(sum(self.warmup_seconds.values()), 3),
                    **{f"{step}_s": round(s, 3) for step, s in self.warmup_seconds.items()},
                },
            )
        self._consumer = asyncio.create_task(self._serve(), name="stylize-consumer")
        self._subscriptions = [
            await self._nc.subscribe(
                stylize_subject(self.config.region), queue=STYLIZE_QUEUE_GROUP, cb=self._on_request
            ),
            await self._nc.subscribe(workers_subject(self.config.region), cb=self._on_discover),
        ]
        await self._nc.flush()
        log.info(
            "worker serving",
            extra={"region": self.config.region, "worker_id": self.config.worker_id, "model": self.stylizer.name},
        )

    async def _start_learner(self, config: FederatedConfig) -> None:
        """Load the latest global version before serving, then retrain when idle."""
        assert self._nc is not None and self._style_store is not None
        if not isinstance(self.stylizer, Trainable):
            raise ValueError(f"stylizer {self.stylizer.name!r} has nothing to retrain: federated learning needs a DNN")
        self.learner = FederatedLearner(
            config,
            self.stylizer,
            self._executor,
            self._style_store.get,
            self.config.worker_id,
            self.config.region,
            js_domain=self.config.js_domain,
            threads=self.config.threads,
        )
        await self.learner.start(self._nc)
        self._learning = asyncio.create_task(self.learner.run(), name="federated-learning")

    async def _on_closed(self) -> None:
        self.closed.set()

    async def stop(self) -> None:
        """Stop taking requests, send queued ones elsewhere (``overloaded``), finish the current one, disconnect."""
        nc, self._nc = self._nc, None
        if nc is None:
            return
        if nc.is_connected:
            for sub in self._subscriptions:
                await sub.unsubscribe()
            for job in self._queue.drain():
                await self._reply(
                    job.msg, self._error(job.request, ErrorCode.OVERLOADED, "worker shutting down"), "shed"
                )
            try:
                await asyncio.wait_for(self._idle.wait(), STOP_GRACE_S)
            except asyncio.TimeoutError:
                log.warning("stopping with a request still running", extra={"worker_id": self.config.worker_id})
        for task in (self._consumer, self._learning):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.learner is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.learner.close)
        if nc.is_connected:
            await nc.drain()
        self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped", extra={"worker_id": self.config.worker_id, "served": self.served})

    async def _reply(self, msg: Msg, reply: StylizeReply, outcome: str) -> None:
        REQUESTS.labels(self.config.region, outcome).inc()
        reply.stamps[Stamp.W_SENT] = time.monotonic_ns()
        if msg.reply:
            await msg.respond(encode(reply))

    def _error(self, request: StylizeRequest | None, code: str, text: str) -> StylizeReply:
        return StylizeReply(
            stream_id=request.stream_id if request else "",
            frame_id=request.frame_id if request else -1,
            worker_id=self.config.worker_id,
            ok=False,
            error_code=code,
            error=text,
            stamps=dict(request.stamps) if request else {},
        )

    async def _on_discover(self, msg: Msg) -> None:
        info = WorkerInfo(
            worker_id=self.config.worker_id,
            region=self.config.region,
            model=self.stylizer.name,
            queue_depth=len(self._queue),
            served=self.served,
        )
        if msg.reply:
            await msg.respond(encode(info))

    async def _on_request(self, msg: Msg) -> None:
        received = time.monotonic_ns()
        if self.learner is not None:
            self.learner.note_activity()
        try:
            request = decode(msg.data, StylizeRequest)
            validate_request(request)
        except ProtocolError as exc:
            log.warning("bad stylize request", extra={"code": exc.code, "error": str(exc)})
            await self._reply(msg, self._error(None, exc.code, str(exc)), exc.code)
            return
        request.stamps[Stamp.W_RECEIVED] = received
        job = _Job(msg, request, deadline=time.monotonic() + request.budget_ms / 1000.0)
        dropped = self._queue.put(job)
        QUEUE_DEPTH.labels(self.config.region).set(len(self._queue))
        if dropped is not None:
            await self._reply(
                dropped.msg,
                self._error(dropped.request, ErrorCode.OVERLOADED, "pushed out of a full queue by a newer frame"),
                ErrorCode.OVERLOADED,
            )

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._idle.set()
            job = await self._queue.get()
            self._idle.clear()
            QUEUE_DEPTH.labels(self.config.region).set(len(self._queue))
            request = job.request
            if time.monotonic() > job.deadline:
                await self._reply(
                    job.msg, self._error(request, ErrorCode.DEADLINE, "budget spent while queued"), "deadline"
                )
                continue
            try:
                style = await self._style(request.style_id)
                reply = await loop.run_in_executor(self._executor, self._stylize, request, style)
            except UnknownStyleError:
                reply = self._error(request, ErrorCode.UNKNOWN_STYLE, f"no style with id {request.style_id!r}")
            except (ImageDecodeError, ValueError) as exc:
                reply = self._error(request, ErrorCode.INVALID, str(exc))
            except Exception as exc:  # a worker must survive any single request
                log.exception("stylize failed", extra={"frame_id": request.frame_id})
                reply = self._error(request, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            if self.learner is not None:
                self.learner.note_activity()  # idle time counts from the end of serving
            if reply.ok:
                self.served += 1
                if self.learner is not None:
                    self.learner.record(request.image, request.style_id)
                INFERENCE_SECONDS.labels(self.config.region).observe(
                    (reply.stamps[Stamp.W_INFER_END] - reply.stamps[Stamp.W_INFER_START]) / 1e9
                )
            await self._reply(job.msg, reply, "ok" if reply.ok else reply.error_code)

    async def _style(self, style_id: str) -> Any:
        cached = self._styles.get(style_id)
        if cached is not None:
            self._styles.move_to_end(style_id)
            return cached
        assert self._style_store is not None
        data = await self._style_store.get(style_id)
        image = decode_image(data, max_side=MAX_FRAME_SIDE)
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(
            self._executor, self.stylizer.prepare_style, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        )
        self._styles[style_id] = prepared
        while len(self._styles) > self.config.style_cache:
            self._styles.popitem(last=False)
        return prepared

    def _stylize(self, request: StylizeRequest, style: Any) -> StylizeReply:
        """Decode, stylize and encode one key frame (runs on the inference thread)."""
        stamps = dict(request.stamps)
        stamps[Stamp.W_START] = time.monotonic_ns()
        content = cv2.cvtColor(decode_image(request.image, max_side=MAX_FRAME_SIDE), cv2.COLOR_BGR2RGB)
        stamps[Stamp.W_INFER_START] = time.monotonic_ns()
        out_size = (request.out_width, request.out_height)
        if request.result == ResultKind.COEFFICIENTS and isinstance(self.stylizer, CoefficientStylizer):
            coeffs = self.stylizer.coefficients(content, style, out_size)
            stamps[Stamp.W_INFER_END] = time.monotonic_ns()
            payload, kind = encode_coefficients(coeffs), ResultKind.COEFFICIENTS
        else:  # a stylizer without coefficients answers a coefficient request with the frame
            out = self.stylizer.stylize(content, style, out_size)
            stamps[Stamp.W_INFER_END] = time.monotonic_ns()
            payload = encode_jpeg(
                cv2.cvtColor(out, cv2.COLOR_RGB2BGR), self.config.jpeg_quality, MAX_MESSAGE_BYTES - REPLY_OVERHEAD_BYTES
            )
            kind = ResultKind.FRAME
        return StylizeReply(
            stream_id=request.stream_id,
            frame_id=request.frame_id,
            worker_id=self.config.worker_id,
            ok=True,
            image=payload,
            kind=kind,
            stamps=stamps,
        )


async def run(config: WorkerConfig) -> None:
    """Run a worker (and its metrics endpoint) until cancelled (SIGINT/SIGTERM in ``python -m edge_worker``).

    Metrics come up once the worker serves (warmed up, subscribed): a probe on them is a readiness check."""
    worker = StylizerWorker(config)
    await worker.start()
    start_metrics_server(config.metrics_port, config.metrics_host)
    try:
        await worker.closed.wait()
        log.error("NATS connection closed for good; worker exits", extra={"worker_id": config.worker_id})
    finally:
        await worker.stop()
