"""On-edge retraining and the edge side of federated learning (Algorithm 2 of the paper).

A worker keeps the key frames it served (:class:`KeyFrameBuffer`). When it has been idle for a
while it trains a copy of its model on them in a child process (:mod:`edge_worker.trainer_process`) that is
frozen the moment a stylize request arrives, so serving never shares the CPU with a training step. The worker keeps
serving the global version it adopted (local progress reaches the service through the next global
version, as in FedAvg). After ``publish_every`` trained samples it publishes its delta against that
base version, in fp16, through the model store (:func:`streaming.model_store.submit_delta`), once per
base version; it adopts every newer global version announced on ``mvs.fl.global``, into the served
model and the training copy. Before serving, it loads the latest global version.

Joining. A worker may start before the aggregator has stored version 0, or while the model store is
unreachable: it then serves the bundled model and keeps looking for a global version, on the aggregator's
announcements and by reading the store again with a backoff (:data:`JOIN_RETRY_S` doubling up to
:data:`JOIN_RETRY_MAX_S`), and joins (adopts the version) as soon as one is there. It trains only once it has
joined: a delta means something only against a global version.

A version is adopted only if its weights match the SHA-256 in its metadata (:meth:`ModelStore.weights`) and fit
the served model: the same tensor names and shapes, every value finite (:func:`check_weights`; a digest proves who
wrote a version, not that it is sane). On joining the worker takes the newest kept version that passes, and a
refused announcement leaves it serving what it has. Either way it logs why and keeps serving; versions refused for
unusable weights are counted by reason (``mvs_worker_versions_refused_total``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from prometheus_client import Counter

from edge_worker.key_buffer import DEFAULT_CAPACITY, KeyFrameBuffer
from edge_worker.model.base import Trainable, TrainingPair
from edge_worker.trainer_process import TrainerProcess
from streaming.config import flag
from streaming.images import ImageDecodeError, decode_image
from streaming.model_store import DeltaStore, ModelIntegrityError, ModelStore, StoreMissingError, submit_delta
from streaming.protocol import FL_GLOBAL_SUBJECT, ModelVersion, ProtocolError, decode
from streaming.style_store import UnknownStyleError
from streaming.tensors import NamedArrays

log = logging.getLogger(__name__)

DEFAULT_IDLE_S = 2.0
DEFAULT_PUBLISH_EVERY = 64
DEFAULT_BATCH = 2
POLL_S = 0.1
DELTA_DTYPE = np.float16
"""Deltas travel in fp16: half the bytes of fp32 weights."""
STORE_TIMEOUT_S = 5.0
"""How long a starting worker waits for the model store before it serves the bundled model."""
JOIN_RETRY_S = 0.5
"""First pause before a worker without a global version reads the store again (then doubled)."""
JOIN_RETRY_MAX_S = 10.0
"""Longest pause between two reads of the store while a worker waits to join."""

REFUSED = Counter("mvs_worker_versions_refused_total", "Global model versions a worker refused", ["reason"])


class UnusableWeightsError(ModelIntegrityError):
    """A version's weights (digest correct) do not fit the served model; ``reason``: names, shape or non_finite."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_weights(weights: NamedArrays, model: NamedArrays) -> None:
    """Raise :class:`UnusableWeightsError` unless ``weights`` has the tensor names and shapes of ``model`` (the
    served model's learned state) and only finite values."""
    if set(weights) != set(model):
        missing, extra = sorted(set(model) - set(weights)), sorted(set(weights) - set(model))
        raise UnusableWeightsError("names", f"tensor names differ: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, value in weights.items():
        if value.shape != model[name].shape:
            raise UnusableWeightsError("shape", f"{name}: shape {value.shape} != {model[name].shape}")
        if not np.isfinite(value).all():
            raise UnusableWeightsError("non_finite", f"{name}: NaN or Inf")


class NotTrainableError(ValueError):
    """Federated learning was asked of a stylizer that has nothing to retrain (the colour transfer)."""


def require_trainable(stylizer: object, name: str) -> Trainable:
    """``stylizer`` as a :class:`Trainable`, or :class:`NotTrainableError` naming the models that are."""
    if not isinstance(stylizer, Trainable):
        raise NotTrainableError(
            f"--federated-dir needs a trainable model (--model dnn or a model file); {name!r} has nothing to retrain"
        )
    return stylizer


@dataclass
class FederatedConfig:
    """Settings of a worker's federated learning."""

    buffer_dir: Path = field(metadata=flag("key-frame buffer directory; enables retraining", name="federated-dir"))
    buffer_size: int = field(default=DEFAULT_CAPACITY, metadata=flag("key frames kept for retraining"))
    idle_s: float = field(default=DEFAULT_IDLE_S, metadata=flag("train after this long without requests"))
    """Train only after this long without a stylize request."""
    publish_every: int = field(default=DEFAULT_PUBLISH_EVERY, metadata=flag("trained samples per delta"))
    """Trained samples before a delta is published."""
    batch_size: int = DEFAULT_BATCH
    seed: int = 0


class FederatedLearner:
    """Retrains a worker's model when idle and keeps it in sync with the global versions."""

    def __init__(
        self,
        config: FederatedConfig,
        model: Trainable,
        executor: Executor,
        fetch_style: Callable[[str], Awaitable[bytes]],
        worker_id: str,
        region: str,
        js_domain: str | None = None,
        threads: int = 1,
    ) -> None:
        self.config = config
        self.model = model
        self.trainer = TrainerProcess(model, threads)  # a copy, in a process serving can freeze
        self.buffer = KeyFrameBuffer(config.buffer_dir, config.buffer_size)
        self._executor = executor
        self._training = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fl-train")  # waits on the child
        self._fetch_style = fetch_style
        self._worker_id = worker_id
        self._region = region
        self._js_domain = js_domain
        self._rng = random.Random(config.seed)
        self._nc: NATS | None = None
        self._store: ModelStore | None = None
        self._deltas: DeltaStore | None = None
        self._adopting = asyncio.Lock()
        self._joining: asyncio.Task[None] | None = None
        self.joined = asyncio.Event()
        """Set once a global version is adopted (the learner trains and publishes only after that)."""
        self.base_version = -1
        self._base_weights: NamedArrays = {}
        self._published_base = -2
        self.samples_since_base = 0
        self.losses: list[float] = []
        self._last_request = time.monotonic()
        self.refusals: dict[str, int] = {}
        """Global versions refused for unusable weights, by reason."""

    async def start(self, nc: NATS) -> None:
        """Load the latest global version (before the worker serves) and follow new ones; without one (none stored
        yet, or the store unreachable) serve the bundled model and keep looking in the background."""
        self._nc = nc
        self._base_weights = self.model.learned_state()
        await nc.subscribe(FL_GLOBAL_SUBJECT, cb=self._on_global)  # before reading the store: no version missed
        if not await self._join_once(warn=True):
            self._joining = asyncio.create_task(self._keep_joining(), name="fl-join")

    async def _join_once(self, *, warn: bool = False) -> bool:
        """Open the store if need be and adopt its latest version; False if there is none or the store is out of
        reach."""
        assert self._nc is not None
        try:
            latest = await asyncio.wait_for(self._open_stores(), STORE_TIMEOUT_S)
            good = None if self._store is None or latest is None else await self._store.newest_good(latest, self._check)
        except (NatsError, asyncio.TimeoutError, StoreMissingError) as exc:  # direct gets: both look alike
            self._store = None
            if warn:
                log.warning(
                    "model store unreachable or not set up: serving the bundled model until a global version can be "
                    "read",
                    extra={"worker_id": self._worker_id, "error": f"{type(exc).__name__}: {exc}"},
                )
            return False
        if good is None:
            if warn:
                log.warning(
                    "no usable global model version in the store yet: serving the bundled model, joining when one "
                    "appears",
                    extra={"worker_id": self._worker_id, "latest": latest},
                )
            return False
        await self._adopt(*good)
        return True

    async def _open_stores(self) -> int | None:
        """Bind this region's delta bucket and the model store (the setup's or the aggregator's to create; absent:
        :class:`StoreMissingError`); the newest version number, None if there is none yet."""
        assert self._nc is not None
        js = self._nc.jetstream(domain=self._js_domain)
        if self._deltas is None:
            self._deltas = DeltaStore(js, self._region)
        if self._store is None:
            self._store = await ModelStore.open(js)
        return await self._store.latest_number()

    async def _keep_joining(self) -> None:
        """Read the store again, with a backoff, until a global version is adopted (here or on an announcement)."""
        pause = JOIN_RETRY_S
        while not self.joined.is_set():
            try:
                await asyncio.wait_for(self.joined.wait(), pause)
                return
            except asyncio.TimeoutError:
                pass
            try:
                if await self._join_once():
                    return
            except Exception:  # a damaged version must not end the search: log, retry later
                log.exception("reading the global version failed", extra={"worker_id": self._worker_id})
            pause = min(pause * 2, JOIN_RETRY_MAX_S)

    def close(self) -> None:
        """Stop looking for a global version, training (after the current step) and the trainer process."""
        if self._joining is not None:
            self._joining.cancel()
        self.trainer.resume()
        self._training.shutdown(wait=True, cancel_futures=True)
        self.trainer.close()

    def note_activity(self) -> None:
        """A stylize request arrived or was answered: training is frozen until the worker has been idle for
        ``idle_s`` (a step in progress stops at once and resumes later)."""
        self._last_request = time.monotonic()
        self.trainer.pause()

    def _idle(self) -> bool:
        return time.monotonic() - self._last_request >= self.config.idle_s

    async def _thaw_when_idle(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            if self.trainer.paused and self._idle():
                self.trainer.resume()

    def record(self, content_jpeg: bytes, style_id: str) -> None:
        """Keep a served key frame for retraining."""
        self.buffer.add(content_jpeg, style_id)

    async def run(self) -> None:
        """Train while idle and publish deltas, until cancelled."""
        thaw = asyncio.create_task(self._thaw_when_idle(), name="fl-thaw")
        try:
            while True:
                if not self.joined.is_set() or not self._idle() or len(self.buffer) < self.config.batch_size:
                    await asyncio.sleep(POLL_S)
                    continue
                try:
                    await self.train_once()
                    if (
                        self.samples_since_base >= self.config.publish_every
                        and self._published_base != self.base_version
                    ):
                        await self.publish()
                except Exception:  # a failed step or publish must not end retraining: retry after a pause
                    log.exception("retraining step failed", extra={"worker_id": self._worker_id})
                    await asyncio.sleep(self.config.idle_s)
        finally:
            thaw.cancel()

    async def train_once(self) -> float | None:
        """One step of the training copy on frames from the buffer (in the trainer process); None if no buffered
        frame was usable."""
        pairs = await self._pairs()
        if not pairs:
            return None
        loss = await asyncio.get_running_loop().run_in_executor(self._training, self.trainer.train_step, pairs)
        self.samples_since_base += len(pairs)
        self.losses.append(loss)
        return loss

    async def _pairs(self) -> list[TrainingPair]:
        """A batch from the buffer; frames that can no longer be used (their style gone from the store, an
        unreadable file) are dropped from the buffer. A style fetch that times out (a busy store) keeps its frame:
        ``TimeoutError`` is an ``OSError``, and catching it as one dropped good frames under load."""
        pairs = []
        for frame in self.buffer.sample(self.config.batch_size, self._rng):
            try:
                pairs.append(await self._pair(frame.path, frame.style_id))
            except TimeoutError:
                log.warning("style fetch timed out; frame kept for a later step", extra={"frame": frame.path.name})
            except (UnknownStyleError, ImageDecodeError, OSError) as exc:
                log.warning("dropping a buffered key frame", extra={"frame": frame.path.name, "error": str(exc)})
                self.buffer.discard(frame)
        return pairs

    async def _pair(self, path: Path, style_id: str) -> TrainingPair:
        content = cv2.cvtColor(decode_image(path.read_bytes()), cv2.COLOR_BGR2RGB)
        style = cv2.cvtColor(decode_image(await self._fetch_style(style_id)), cv2.COLOR_BGR2RGB)
        return content, style

    async def publish(self) -> None:
        """Publish this worker's delta against its base version (fp16)."""
        assert self._nc is not None
        if self._deltas is None or self.base_version < 0:
            log.warning("no global version to send a delta against", extra={"worker_id": self._worker_id})
            return
        state = await asyncio.get_running_loop().run_in_executor(self._training, self.trainer.learned_state)
        delta = {name: (state[name] - self._base_weights[name]).astype(DELTA_DTYPE) for name in state}
        recent = self.losses[-self.samples_since_base :] or [float("nan")]
        await submit_delta(
            self._nc.jetstream(domain=self._js_domain),
            self._deltas,
            worker_id=self._worker_id,
            base_version=self.base_version,
            samples=self.samples_since_base,
            delta=delta,
            loss=float(np.mean(recent)),
        )
        self._published_base = self.base_version
        log.info("delta published", extra={"base": self.base_version, "samples": self.samples_since_base})

    async def _on_global(self, msg: Msg) -> None:
        """A new version was announced: adopt it if its weights match the digest in the store's metadata (the KV
        entry, not the announcement, is the authority); otherwise keep serving the current one."""
        try:
            announced = decode(msg.data, ModelVersion)
        except ProtocolError as exc:
            log.warning("bad global version announcement", extra={"error": str(exc)})
            return
        if announced.version <= self.base_version:
            return
        if self._store is None:  # not joined yet: the store was out of reach until now
            await self._join_once()
            return
        try:
            meta = await self._store.version(announced.version)
            weights = await self._store.weights(meta)
            self._check(meta, weights)
        except (KeyError, ModelIntegrityError, NatsError, asyncio.TimeoutError) as exc:
            log.error(
                "global model version refused: serving the current one",
                extra={"worker_id": self._worker_id, "serving": self.base_version, "error": str(exc)},
            )
            return
        await self._adopt(meta, weights)

    def _check(self, meta: ModelVersion, weights: NamedArrays) -> None:
        """:func:`check_weights` against the served model; a refusal is counted by its reason."""
        try:
            check_weights(weights, self._base_weights)
        except UnusableWeightsError as exc:
            REFUSED.labels(exc.reason).inc()
            self.refusals[exc.reason] = self.refusals.get(exc.reason, 0) + 1
            raise UnusableWeightsError(exc.reason, f"model version {meta.version} is refused: {exc}") from exc

    async def _adopt(self, meta: ModelVersion, weights: NamedArrays) -> None:
        """Serve and train on ``weights`` (already checked against ``meta``'s digest); one at a time, never older."""
        async with self._adopting:
            if meta.version <= self.base_version:
                return  # adopted meanwhile (an announcement and a store read may race)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self.model.load_learned_state, weights)  # served model
            await loop.run_in_executor(self._training, self.trainer.load_learned_state, weights)
            self.base_version, self._base_weights, self.samples_since_base = meta.version, weights, 0
            self.joined.set()
        log.info("adopted global version", extra={"version": meta.version, "worker_id": self._worker_id})
