"""The stylizer worker: a NATS queue-group subscriber on ``mvs.<region>.stylize``.

Each request is decoded and checked on the event loop (bad ones get an error reply at once), then
queued in a bounded latest-wins queue. The serving loop takes a dynamic batch from it (Triton's dynamic
batcher: up to ``max_batch`` requests, waiting at most ``batch_wait_ms`` after the first), answers those whose
budget has passed with ``deadline`` instead of computing them, and hands the rest to one inference thread
(:mod:`edge_worker.inference`: decode, stylize once for the batch, encode), so the loop never blocks. Requests
pushed out of a full queue get ``overloaded`` so the gateway can retry elsewhere. Prepared styles are cached by
style id (on the model's device). Before subscribing, the worker stylizes a synthetic frame (and a full batch)
so that no request pays the model's one-time set-up.
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
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter, Gauge, Histogram

from edge_worker.federated import FederatedConfig, FederatedLearner, require_trainable
from edge_worker.inference import WARMUP_SIZE, Inference, Item, error_reply, warm_up
from edge_worker.model.base import Stylizer
from edge_worker.model.device import DEFAULT_DEVICE, DEVICE_SPECS, resolve_device, serve_on
from edge_worker.model.emulated import DEFAULT_FIXED_MS, DEFAULT_PER_ITEM_MS, ServiceTimeProfile
from edge_worker.model.int8 import FP32, INT8
from edge_worker.model.registry import DEFAULT_STYLIZER, DNN_NAME, STYLIZER_NAMES, is_dnn, is_lite
from edge_worker.model.serving import (
    AUTO,
    CPU_LIVE_PRECISION,
    CPU_LIVE_WORK_SIZE,
    PRECISION_CHOICES,
    ServingSettings,
    parse_work_size,
    resolve_serving,
)
from edge_worker.stylizers import load_stylizer
from streaming.config import REGION_FLAG, flag
from streaming.images import DEFAULT_JPEG_QUALITY, ImageDecodeError, check_image_size, image_size
from streaming.jetstream_health import JetStreamProbe, probe_subject
from streaming.nats_connect import NatsClientConfig, connect_nats
from streaming.protocol import (
    DEFAULT_REGION,
    MAX_FRAME_SIDE,
    STYLIZE_QUEUE_GROUP,
    ErrorCode,
    ProtocolError,
    Stamp,
    StylizeReply,
    StylizeRequest,
    WorkerInfo,
    check_result_size,
    decode,
    delta_bucket,
    encode,
    stylize_subject,
    validate_request,
    workers_subject,
)
from streaming.queues import LatestQueue
from streaming.style_store import StyleStore, UnknownStyleError
from streaming.telemetry import DEFAULT_METRICS_HOST, LATENCY_BUCKETS_S, LogLimiter, start_health_server

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 4
DEFAULT_STYLE_CACHE = 32
STOP_GRACE_S = 10.0
"""How long stop() lets the request being computed finish."""
DEFAULT_MAX_BATCH = 1
"""Requests run together at most; 1 turns batching off (on a CPU a batch gains nothing and multiplies latency)."""
DEFAULT_BATCH_WAIT_MS = 2.0
"""How long a batch waits for more requests after its first (only with max_batch > 1)."""

REQUESTS = Counter("mvs_worker_requests_total", "Stylize requests by outcome", ["region", "outcome"])
INFERENCE_SECONDS = Histogram(
    "mvs_worker_inference_seconds",
    "Stylizer time per key frame",
    ["region"],
    buckets=LATENCY_BUCKETS_S,
)
QUEUE_DEPTH = Gauge("mvs_worker_queue_depth", "Requests waiting for the inference thread", ["region"])
QUEUE_WAIT_SECONDS = Histogram(
    "mvs_worker_queue_wait_seconds",
    "Time from a request's arrival to the start of its batch",
    ["region"],
    buckets=LATENCY_BUCKETS_S,
)
BATCH_SIZE = Histogram(
    "mvs_worker_batch_size", "Requests per batch run by the stylizer", ["region"], buckets=(1, 2, 4, 8, 16, 32, 64)
)


def default_worker_id() -> str:
    """host-pid: unique per process on a site."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class WorkerConfig(NatsClientConfig):
    """Settings of one stylizer worker process (each field with a ``flag`` is a ``mvs worker`` flag)."""

    region: str = field(default=DEFAULT_REGION, metadata=REGION_FLAG)
    model: str = field(
        default=DEFAULT_STYLIZER,
        metadata=flag(
            "color-transfer, dnn (the bundled paper model), lite (frozen ImageNet EfficientNet-Lite0, learned head), "
            "lite-look (the same trained on colour looks, no colour alignment), "
            "emulated (a stand-in for a GPU: sleeps a service time, for scaling experiments) or a model file (.pt)"
        ),
    )
    device: str = field(
        default=DEFAULT_DEVICE,
        metadata=flag(f"where the DNN runs: {', '.join(DEVICE_SPECS)} (auto: CUDA when available, fp16 there)"),
    )
    work_size: int | str = field(
        default=AUTO,
        metadata=flag(
            f"the DNN's network working size, short side in pixels (0: the model file's own; {AUTO}: "
            f"{CPU_LIVE_WORK_SIZE} on the CPU for the DNN, the model's own on CUDA, when retraining or for lite)",
            parse=parse_work_size,
        ),
    )
    precision: str = field(
        default=AUTO,
        metadata=flag(
            f"the DNN's arithmetic: {FP32} (fp16 autocast on CUDA) or {INT8} (CPU only: convolutions quantized at "
            f"start-up, serve only; the DNN's only); {AUTO}: {CPU_LIVE_PRECISION} on the CPU, {FP32} on CUDA, when "
            "retraining or for lite",
            choices=PRECISION_CHOICES,
        ),
    )
    max_batch: int = field(
        default=DEFAULT_MAX_BATCH, metadata=flag("dynamic batching: requests run together at most (1: off)")
    )
    batch_wait_ms: float = field(
        default=DEFAULT_BATCH_WAIT_MS, metadata=flag("dynamic batching: wait at most this long after a batch's first")
    )
    emulated_fixed_ms: float = field(
        default=DEFAULT_FIXED_MS, metadata=flag("--model emulated (a GPU stand-in): service time per batch (ms)")
    )
    emulated_per_item_ms: float = field(
        default=DEFAULT_PER_ITEM_MS, metadata=flag("--model emulated (a GPU stand-in): service time per item (ms)")
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

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.batch_wait_ms < 0:
            raise ValueError(
                f"--max-batch must be >= 1 and --batch-wait-ms >= 0, got {self.max_batch}, {self.batch_wait_ms}"
            )
        if self.queue_size < self.max_batch:
            raise ValueError(f"--queue-size ({self.queue_size}) must be at least --max-batch ({self.max_batch})")


def serving_settings(config: WorkerConfig, device: torch.device) -> ServingSettings:
    """How the worker's DNN runs on ``device`` (``auto`` resolved; :mod:`edge_worker.model.serving`); a
    ``ValueError`` for a combination that cannot run (``int8`` on CUDA or with retraining)."""
    return resolve_serving(
        device,
        config.work_size,
        config.precision,
        trainable=config.federated is not None,
        int8=is_dnn(config.model),
    )


def preflight(config: WorkerConfig, trainable: bool | None = None) -> ServingSettings | None:
    """Check what a worker of ``config`` would fail on only after starting: the device, the model name or file,
    the DNN's settings (``trainable``: it will retrain; default: ``config.federated`` is set). Returns the DNN's
    or the lite model's resolved settings (None for another model); raises ``ValueError`` with one line for a
    person."""
    try:
        device = resolve_device(config.device)
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None
    if is_lite(config.model):
        trains = config.federated is not None if trainable is None else trainable
        return resolve_serving(device, config.work_size, config.precision, trainable=trains, int8=False)
    if not is_dnn(config.model):
        if config.model not in STYLIZER_NAMES:
            raise ValueError(f"unknown model {config.model!r}: use one of {', '.join(STYLIZER_NAMES)} or a .pt file")
        return None
    if config.model != DNN_NAME and not Path(config.model).is_file():
        raise ValueError(f"model file {config.model} does not exist")
    trains = config.federated is not None if trainable is None else trainable
    return resolve_serving(device, config.work_size, config.precision, trainable=trains)


@dataclass
class _Job:
    msg: Msg
    request: StylizeRequest
    deadline: float  # time.monotonic() after which the answer is worthless


class StylizerWorker:
    """Serves stylize requests of one region until :meth:`stop`."""

    def __init__(self, config: WorkerConfig, stylizer: Stylizer | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.serving = serving_settings(config, self.device)
        self.stylizer = (
            stylizer
            if stylizer is not None
            else load_stylizer(
                config.model,
                device=str(self.device),
                work_size=self.serving.work_size,
                precision=self.serving.precision,
                profile=ServiceTimeProfile(config.emulated_fixed_ms, config.emulated_per_item_ms),
            )
        )
        self._bad_input_log = LogLimiter()
        """Bad requests are logged rate-limited per error code: a NATS request does not say who sent it."""
        self._inference = Inference(self.stylizer, config.worker_id, config.jpeg_quality)
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
        self.jetstream: JetStreamProbe | None = None
        """Whether the hub's JetStream (the style store) answers, once started (streaming.jetstream_health)."""
        self._probing: asyncio.Task[None] | None = None
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
        if is_dnn(self.config.model) or is_lite(self.config.model):
            log.info("worker settings", extra={"worker_id": self.config.worker_id, "dnn": self.serving.describe()})
        serve_on(self.device, self.config.threads)
        if self.config.warmup:
            log.info(
                "worker warming up",
                extra={"worker_id": self.config.worker_id, "model": self.stylizer.name, "batch": self.config.max_batch},
            )
        warming = (
            asyncio.get_running_loop().run_in_executor(
                self._executor, partial(warm_up, self.stylizer, batch=self.config.max_batch)
            )
            if self.config.warmup
            else None
        )
        self._nc = await connect_nats(
            self.config.nats_url,
            f"worker-{self.config.worker_id}",
            service="worker",
            closed_cb=self._on_closed,
            tls_ca=self.config.nats_ca,
            reconnect_wait_s=self.config.nats_reconnect_wait_s,
        )
        js = self._nc.jetstream(domain=self.config.js_domain)
        self._style_store = await StyleStore.open(js)
        probe = probe_subject(delta_bucket(self.config.region), self.config.worker_id)  # it writes its own deltas
        self.jetstream = JetStreamProbe(self._nc, js, probe, "worker", self.config.region)
        self._probing = asyncio.create_task(self.jetstream.run(), name="jetstream-probe")
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
        self.learner = FederatedLearner(
            config,
            require_trainable(self.stylizer, self.stylizer.name),
            self._executor,
            self._style_store.get,
            self.config.worker_id,
            self.config.region,
            js_domain=self.config.js_domain,
            threads=self.config.threads,
        )
        await self.learner.start(self._nc)
        self._learning = asyncio.create_task(self.learner.run(), name="federated-learning")

    def ready(self) -> bool:
        """Serving: subscribed, and NATS connected now."""
        return self._nc is not None and self._nc.is_connected and bool(self._subscriptions)

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
        for task in (self._consumer, self._learning, self._probing):
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
        return error_reply(request, self.config.worker_id, code, text)

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
            _check_result_size(request)
        except ProtocolError as exc:
            self._bad_input_log.log(
                log, logging.WARNING, exc.code, "bad stylize request", {"code": exc.code, "error": str(exc)}
            )
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
        region = self.config.region
        while True:
            self._idle.set()
            jobs = await self._queue.get_batch(self.config.max_batch, self.config.batch_wait_ms / 1000.0)
            self._idle.clear()
            QUEUE_DEPTH.labels(region).set(len(self._queue))
            items: list[tuple[_Job, Item]] = []
            now = time.monotonic()
            for job in jobs:
                if now > job.deadline:
                    reply = self._error(job.request, ErrorCode.DEADLINE, "budget spent while queued")
                    await self._reply(job.msg, reply, "deadline")
                    continue
                try:
                    items.append((job, Item(job.request, await self._style(job.request.style_id))))
                except Exception as exc:
                    await self._reply(job.msg, self._style_error(job.request, exc), "style")
            if not items:
                continue
            start_ns = time.monotonic_ns()
            BATCH_SIZE.labels(region).observe(len(items))
            for job, _ in items:
                QUEUE_WAIT_SECONDS.labels(region).observe((start_ns - job.request.stamps[Stamp.W_RECEIVED]) / 1e9)
            replies = await loop.run_in_executor(self._executor, self._inference.run, [item for _, item in items])
            if self.learner is not None:
                self.learner.note_activity()  # idle time counts from the end of serving
            for (job, _), reply in zip(items, replies, strict=True):
                if reply.ok:
                    self.served += 1
                    if self.learner is not None:
                        self.learner.record(job.request.image, job.request.style_id)
                    INFERENCE_SECONDS.labels(region).observe(
                        (reply.stamps[Stamp.W_INFER_END] - reply.stamps[Stamp.W_INFER_START]) / 1e9
                    )
                await self._reply(job.msg, reply, "ok" if reply.ok else reply.error_code)

    def _style_error(self, request: StylizeRequest, exc: Exception) -> StylizeReply:
        """The reply to a request whose style could not be had."""
        if isinstance(exc, UnknownStyleError):
            return self._error(request, ErrorCode.UNKNOWN_STYLE, f"no style with id {request.style_id!r}")
        if isinstance(exc, ImageDecodeError | ValueError):
            return self._error(request, ErrorCode.INVALID, f"style {request.style_id!r}: {exc}")
        log.error("style failed", exc_info=exc, extra={"style_id": request.style_id})
        return self._error(request, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    async def _style(self, style_id: str) -> Any:
        cached = self._styles.get(style_id)
        if cached is not None:
            self._styles.move_to_end(style_id)
            return cached
        assert self._style_store is not None
        data = await self._style_store.get(style_id)
        check_image_size(data, max_side=MAX_FRAME_SIDE)  # a bomb is refused here, before any thread decodes it
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self._executor, self._inference.prepare_style, data)
        self._styles[style_id] = prepared
        while len(self._styles) > self.config.style_cache:
            self._styles.popitem(last=False)
        return prepared


def _check_result_size(request: StylizeRequest) -> None:
    """Refuse (:class:`ProtocolError`, ``too_large``) a result too large for its key frame before any work; a key
    whose header cannot be read is left to the inference thread, which answers ``invalid``."""
    try:
        key_size = image_size(request.image)
    except ImageDecodeError:
        return
    check_result_size(key_size, (request.out_width, request.out_height))


async def run(config: WorkerConfig) -> None:
    """Run a worker (and its health endpoint) until cancelled (SIGINT/SIGTERM in ``python -m edge_worker``).

    The endpoint comes up once the worker serves (warmed up, subscribed): ``/healthz`` is 200 while NATS is
    connected (readiness; its ``jetstream`` field says whether the hub's JetStream answers), ``/livez`` while the
    connection is not closed for good (liveness: during an outage the worker reconnects by itself,
    streaming.nats_connect), ``/metrics`` is Prometheus. A connection closed for good
    returns (``python -m edge_worker`` then exits with status 1 for its orchestrator to restart it)."""
    worker = StylizerWorker(config)
    await worker.start()
    health = await start_health_server(
        config.metrics_port,
        config.metrics_host,
        ready=worker.ready,
        live=lambda: not worker.closed.is_set(),
        details=lambda: {"jetstream": worker.jetstream is not None and worker.jetstream.available},
    )
    try:
        await worker.closed.wait()
        log.error("NATS connection closed for good; worker exits", extra={"worker_id": config.worker_id})
    finally:
        await worker.stop()
        if health is not None:
            await health.cleanup()
