"""The aggregator: consumes edge deltas from JetStream, aggregates rounds, publishes global versions.

Crash safety. A delta is acked only after its reference is part of the round state persisted in
KV (``mvs-fl-rounds``), so a kill at any moment loses no accepted delta: unacked ones are
redelivered, and redelivered ones already in the state are recognised. Closing a round is
deterministic (updates sorted by worker id) and idempotent: the new version's weights and metadata
are written before ``latest`` moves and before the round state is reset, so a restart either
re-publishes the very same version or finds it published and only resets the round. The reset state lists the
closed round's references twice: as consumed (a replay of one is a duplicate for as long as its base may be a
delta's base) and as blobs to delete, which are deleted only after that state is saved and struck from it after,
so a crash in between neither counts a delta twice nor leaves its blob behind: a restart deletes what is listed.

What a round aggregates is what was checked. A reference names its blob's SHA-256 (checked on arrival), so the
persisted round state holds the digest of the bytes that were validated. Workers may rewrite their region's bucket
at any time: when the round closes each blob is read again and must still match its digest and pass every check
(finite, names, shapes, norms); one that does not is dropped from the round, counted by reason
(``mvs_aggregator_updates_dropped_total``) and its blob deleted, never aggregated and never a crash (a bad blob
must not put a restarting aggregator in a loop). A round the drops leave short of being due waits for more.
The state stays small: a reference is at most ``MAX_REF_BYTES``, a round holds fewer than ``min_updates`` plus a
fetch batch of them, and consumed ones are kept for ``max_staleness`` + 1 rounds.

When a round closes. With ``min_updates`` accepted deltas, at once. With fewer (but at least one), once
``round_timeout_s`` has passed since the round's *first accepted delta* (persisted in the round state, so a
restart does not reset it): a round never closes on its age alone, and a lone delta always waits a full timeout
for company. An empty round never closes.

Announcements. Every version the aggregator stores is announced on ``mvs.fl.global``, the initial version 0
too, and the current version again whenever the aggregator starts; a worker that started first (and found no
version in the store) joins on that announcement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge, Histogram

from aggregator.strategies import DEFAULT_SERVER_LR, STRATEGIES, Strategy, Update, apply_delta, make_strategy
from aggregator.validation import (
    DEFAULT_MAX_NORM,
    DEFAULT_MAX_RELATIVE_NORM,
    DEFAULT_MAX_SAMPLES,
    DEFAULT_MAX_SAMPLES_PER_S,
    DEFAULT_MAX_STALENESS,
    DEFAULT_SAMPLE_BURST,
    MAX_REF_BYTES,
    Reason,
    RejectedUpdate,
    Rules,
    checked_update,
    l2_norm,
    validate_ref,
    validate_update,
)
from streaming.buckets import BucketMissingError, aggregator_stores, create_stores
from streaming.config import flag
from streaming.jetstream_health import JetStreamStatus
from streaming.model_store import (
    DEFAULT_KEEP_VERSIONS,
    DeltaStore,
    ModelIntegrityError,
    ModelStore,
)
from streaming.nats_connect import NatsClientConfig, connect_nats
from streaming.protocol import (
    FL_DELTA_STREAM,
    FL_DELTA_SUBJECTS,
    FL_GLOBAL_SUBJECT,
    FL_ROUND_BUCKET,
    DeltaRef,
    ModelVersion,
    ProtocolError,
    RoundState,
    decode,
    encode,
)
from streaming.telemetry import DEFAULT_METRICS_HOST
from streaming.tensors import NamedArrays

log = logging.getLogger(__name__)

DURABLE = "aggregator"
ROUND_KEY = "current"
DEFAULT_MIN_UPDATES = 2
DEFAULT_ROUND_TIMEOUT_S = 60.0
CRASH_POINTS = ("delta_accepted", "delta_saved", "weights_stored", "latest_moved", "round_reset")
"""Named steps a test can kill the process right after: a delta accepted but not yet persisted (so not acked), a
delta persisted but not yet acked, a round's weights stored before ``latest`` moved, ``latest`` moved, the round
state reset (its blobs listed for deletion, none deleted yet)."""
ACK_WAIT_S = 5.0
"""A delta handed to an aggregator that died unacked is redelivered after this long."""
FETCH_BATCH = 16
FETCH_WAIT_S = 0.5

ROUND = Gauge("mvs_aggregator_version", "Newest published global version")
JETSTREAM_AVAILABLE = Gauge(
    "mvs_aggregator_jetstream_available",
    "1 while the hub's JetStream answers (the delta stream has a leader: a quorum of the hub's servers), else 0",
)
ACCEPTED = Counter("mvs_aggregator_updates_accepted_total", "Deltas accepted into a round")
REJECTED = Counter("mvs_aggregator_updates_rejected_total", "Deltas rejected", ["reason"])
DROPPED = Counter("mvs_aggregator_updates_dropped_total", "Accepted deltas dropped when their round closed", ["reason"])
ROUND_SECONDS = Histogram("mvs_aggregator_round_seconds", "Time to aggregate and publish a round")


@dataclass
class AggregatorConfig(NatsClientConfig):
    """Settings of the cloud aggregator (``js_domain``: the hub's, None when connected to the hub itself)."""

    strategy: str = field(default="fedavg", metadata=flag("aggregation rule", choices=sorted(STRATEGIES)))
    server_lr: float = field(
        default=DEFAULT_SERVER_LR,
        metadata=flag("multiply the aggregated delta by this (server SGD, Reddi et al. 2021; 1: plain average)"),
    )
    """Scale of the aggregated delta (server SGD; 1 is the paper's average)."""
    min_updates: int = field(default=DEFAULT_MIN_UPDATES, metadata=flag("close a round at this many deltas"))
    """Close a round as soon as this many updates are in."""
    round_timeout_s: float = field(
        default=DEFAULT_ROUND_TIMEOUT_S,
        metadata=flag("or this long (s) after its first delta, with fewer", name="round-timeout"),
    )
    """Close a round with fewer than ``min_updates`` (at least one) this long after its first accepted delta."""
    keep_versions: int = field(default=DEFAULT_KEEP_VERSIONS, metadata=flag("global versions kept"))
    max_staleness: int = field(default=DEFAULT_MAX_STALENESS, metadata=flag("versions a delta's base may lag"))
    max_norm: float = field(default=DEFAULT_MAX_NORM, metadata=flag("largest L2 norm of a delta"))
    max_relative_norm: float = field(
        default=DEFAULT_MAX_RELATIVE_NORM, metadata=flag("largest L2 norm of a delta as a share of the model's")
    )
    max_samples: int = field(default=DEFAULT_MAX_SAMPLES, metadata=flag("largest sample count of one delta"))
    max_samples_per_s: float = field(
        default=DEFAULT_MAX_SAMPLES_PER_S,
        metadata=flag("training samples a worker can do per second: bounds the samples claimed on a base version"),
    )
    sample_burst: int = field(
        default=DEFAULT_SAMPLE_BURST, metadata=flag("samples allowed on top of that rate times the base's age")
    )
    init: Path | None = field(
        default=None,
        metadata=flag("initial weights if the store is empty: a tensor blob (from a model file: mvs export-weights)"),
    )
    """Tensor blob (``streaming.tensors``) stored as version 0 when the store has no version yet."""
    metrics_port: int = field(default=0, metadata=flag("Prometheus port (0: off)"))
    metrics_host: str = field(default=DEFAULT_METRICS_HOST, metadata=flag("address the metrics listen on"))
    ack_wait_s: float = field(
        default=ACK_WAIT_S, metadata=flag("redeliver a delta not acked after this long (s)", name="ack-wait")
    )
    """A delta handed to an aggregator that died before acking it is redelivered after this long (set when the
    durable consumer is created)."""
    durable: str = DURABLE
    crash_after: str = field(default="", metadata=flag("fault injection", choices=("", *CRASH_POINTS), hidden=True))
    """Fault injection for tests: kill the process right after this step of closing a round (see CRASH_POINTS)."""


def _round_order(held: tuple[DeltaRef, bytes]) -> tuple[str, int]:
    """Updates are aggregated by worker id (then base), whatever their arrival order: a round closed again after a
    crash gives the same version."""
    return held[0].worker_id, held[0].base_version


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation nats-py turned into a timeout (a pull fetch cancelled mid-wait answers with one)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError


class Aggregator:
    """Rounds of federated averaging over the deltas of every region."""

    def __init__(self, config: AggregatorConfig) -> None:
        self.config = config
        self.strategy: Strategy = make_strategy(config.strategy, config.server_lr)
        self.rules = Rules(
            max_staleness=config.max_staleness,
            max_norm=config.max_norm,
            max_relative_norm=config.max_relative_norm,
            max_samples=config.max_samples,
            max_samples_per_s=config.max_samples_per_s,
            sample_burst=config.sample_burst,
        )
        self._nc: NATS | None = None
        self.store: ModelStore | None = None
        self._js: JetStreamContext | None = None
        self._deltas: dict[str, DeltaStore] = {}
        """Delta buckets by region, opened on a region's first delta."""
        self._published_ns: dict[int, int] = {}
        """When each version a delta may be based on was published (aggregator clock), for the sample bound."""
        self._rounds: KeyValue | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self.current: ModelVersion | None = None
        self._weights: NamedArrays = {}
        self.state = RoundState(base_version=-1)
        self.rejections: dict[str, int] = {}
        self.jetstream_available = True
        """False from a JetStream call that failed (a hub cluster without a quorum) to the next that succeeds."""
        self._jetstream_status = JetStreamStatus("aggregator")
        JETSTREAM_AVAILABLE.set(1)
        self.drops: dict[str, int] = {}
        """Accepted deltas dropped at the close of their round, by reason."""

    async def start(self, initial: NamedArrays | None = None) -> None:
        """Connect, bind the stores and the durable consumer, recover the round, publish v0 if the store is empty."""
        self._nc = await connect_nats(
            self.config.nats_url,
            "aggregator",
            service="aggregator",
            tls_ca=self.config.nats_ca,
            reconnect_wait_s=self.config.nats_reconnect_wait_s,
        )
        js = self._js = self._nc.jetstream(domain=self.config.js_domain)
        await create_stores(js, aggregator_stores())  # the setup's already, unless it has not run
        self.store = await ModelStore.open(js, keep=self.config.keep_versions)
        self._rounds = await js.key_value(FL_ROUND_BUCKET)
        latest = await self.store.latest()
        if latest is None:
            if initial is None:
                raise RuntimeError("the model store is empty: start the aggregator with initial weights (--init)")
            latest = await self.store.publish(initial, ModelVersion(version=0, object_name="", strategy="init"))
            log.info("published initial version", extra={"version": 0})
        await self._load(latest)
        await self._recover_round()
        await self._announce()  # v0, or the current version again: workers that started first join on it
        self._sub = await js.pull_subscribe(
            FL_DELTA_SUBJECTS,
            durable=self.config.durable,
            stream=FL_DELTA_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self.config.ack_wait_s),
        )
        log.info("aggregator ready", extra={"version": latest.version, "pending": len(self.state.accepted)})

    def ready(self) -> bool:
        """Serving: started (stores bound, consumer subscribed), NATS connected and JetStream answering now (a
        readiness probe: a hub cluster with two servers of three down is connected but cannot store anything)."""
        connected = self._nc is not None and self._sub is not None and self._nc.is_connected
        return connected and self.jetstream_available

    def _jetstream(self, available: bool, error: BaseException | None = None) -> None:
        """Note whether JetStream answers (both gauges); log each change (a warning when it stops, rate-limited)."""
        self._jetstream_status.note(available, error)
        self.jetstream_available = available
        JETSTREAM_AVAILABLE.set(1 if available else 0)

    def live(self) -> bool:
        """Not dead: starting, connected, or reconnecting during a NATS outage (which it does forever,
        ``streaming.nats_connect``); False once its connection is closed for good (a liveness probe)."""
        return self._nc is None or not self._nc.is_closed

    async def stop(self) -> None:
        """Disconnect. Nothing needs draining: every accepted delta is in the durable round state before its ack.

        (nats-py's drain() hangs on a pull subscription whose fetch was cancelled, so unsubscribe and close.)
        """
        if self._nc is None:
            return
        if self._sub is not None and self._nc.is_connected:
            await self._sub.unsubscribe()
        await self._nc.close()
        self._nc = None

    async def _load(self, meta: ModelVersion) -> None:
        """Make ``meta`` the current version; refuse to go on from weights that fail their digest or hold NaN/Inf (an
        operator must look: rounds built on them would spread them, and no norm bound holds against a NaN norm)."""
        assert self.store is not None
        try:
            weights = await self.store.weights(meta)
        except ModelIntegrityError as exc:
            raise RuntimeError(f"the aggregator cannot continue from the latest version: {exc}") from exc
        if not np.isfinite(l2_norm(weights)):
            raise RuntimeError(f"the aggregator cannot continue from version {meta.version}: its weights hold NaN/Inf")
        self.current, self._weights = meta, weights
        for older in range(max(0, meta.version - self.rules.max_staleness), meta.version):
            with contextlib.suppress(KeyError):
                self._note_published(await self.store.version(older))
        self._note_published(meta)
        ROUND.set(meta.version)

    def _note_published(self, meta: ModelVersion) -> None:
        """Remember when ``meta`` was published; forget versions too old to be a delta's base."""
        self._published_ns[meta.version] = meta.created_ns
        oldest = meta.version - self.rules.max_staleness
        self._published_ns = {v: t for v, t in self._published_ns.items() if v >= oldest}

    async def _delta_store(self, region: str) -> DeltaStore:
        """The region's delta bucket (the setup creates it), read through its leader: a follower answering a direct
        get may not hold a delta just written, which would reject a good delta as unreadable."""
        assert self._js is not None
        if region not in self._deltas:
            self._deltas[region] = DeltaStore(self._js, region, direct=False)
        return self._deltas[region]

    async def _checked(self, ref: DeltaRef, seen: set[tuple[str, int]]) -> Update:
        """The update ``ref`` names, read from its bucket and checked (off the event loop): its blob must match the
        reference's digest and pass :func:`validate_update`. :class:`RejectedUpdate` otherwise (``unreadable`` when
        the blob or its bucket is gone)."""
        assert self.current is not None
        try:
            blob = await (await self._delta_store(ref.region)).get(ref.object_name)
        except KeyError as exc:
            raise RejectedUpdate(Reason.UNREADABLE, str(exc)) from exc
        return await asyncio.to_thread(self._validate, ref, blob, self._weights, self.current.version, seen)

    def _validate(
        self, ref: DeltaRef, blob: bytes, reference: NamedArrays, version: int, seen: set[tuple[str, int]]
    ) -> Update:
        update = checked_update(ref, blob)
        validate_update(update, reference, version, seen, self.rules)
        return update

    def _base_age_s(self, base_version: int) -> float:
        """Seconds since ``base_version`` was published (0 when unknown: the burst alone applies)."""
        published = self._published_ns.get(base_version, 0)
        return max(0.0, (time.time_ns() - published) / 1e9) if published else 0.0

    async def _recover_round(self) -> None:
        assert self._rounds is not None and self.current is not None
        try:
            entry = await self._rounds.get(ROUND_KEY)
            state = decode(entry.value or b"", RoundState)
        except KeyNotFoundError:
            state = RoundState(base_version=self.current.version)
        if state.base_version < self.current.version:
            # That round was published just before a crash, its state not reset yet (start announces the version).
            state = self._next_round(state, self.current.version)
        self.state = state
        if not state.opened_ns:
            self.state.opened_ns = time.monotonic_ns()
        if state.accepted and not state.first_update_ns:  # a state written before first_update_ns existed
            self.state.first_update_ns = time.time_ns()
        await self._save_round()
        await self._delete_listed_blobs()  # those of a round closed (or deltas dropped) just before a crash

    def _next_round(self, closed: RoundState, version: int) -> RoundState:
        """The state of the round on ``version`` after ``closed``: its deltas consumed and their blobs to delete;
        consumed deltas too old to be any delta's base are forgotten."""
        oldest = version - self.rules.max_staleness
        consumed = [data for data in closed.consumed + closed.accepted if decode(data, DeltaRef).base_version >= oldest]
        return RoundState(
            base_version=version,
            opened_ns=time.monotonic_ns(),
            consumed=consumed,
            to_delete=closed.to_delete + closed.accepted,
        )

    async def _delete_listed_blobs(self) -> None:
        """Delete the blobs the persisted state lists (``to_delete``), then strike them from it."""
        if not self.state.to_delete:
            return
        for data in self.state.to_delete:
            ref = decode(data, DeltaRef)
            with contextlib.suppress(KeyError):
                await (await self._delta_store(ref.region)).delete(ref.object_name)
        self.state.to_delete = []
        await self._save_round()

    async def _save_round(self) -> None:
        assert self._rounds is not None
        await self._rounds.put(ROUND_KEY, encode(self.state))

    def _refs(self) -> list[DeltaRef]:
        return [decode(data, DeltaRef) for data in self.state.accepted]

    def _seen(self) -> set[tuple[str, int]]:
        """(worker, base) of every delta in this round or consumed by a round still in the staleness window."""
        refs = [decode(data, DeltaRef) for data in self.state.accepted + self.state.consumed]
        return {(r.worker_id, r.base_version) for r in refs}

    async def run(self) -> None:
        """Serve until cancelled (:meth:`attempt` after :meth:`attempt`)."""
        while True:
            await self.attempt()

    async def attempt(self) -> ModelVersion | None:
        """One :meth:`step`; one that JetStream fails (a hub cluster electing leaders, or without a quorum) is noted
        (:attr:`jetstream_available`) and waited out for the reconnect wait, to be tried again: nothing is acked
        before it is persisted, so nothing is lost."""
        try:
            published = await self.step()
        except (NatsError, asyncio.TimeoutError, BucketMissingError) as exc:  # no leader, no responder
            _raise_if_cancelled()
            self._jetstream(False, exc)
            await asyncio.sleep(self.config.nats_reconnect_wait_s)
            published = None
        _raise_if_cancelled()
        return published

    async def step(self) -> ModelVersion | None:
        """Take what deltas are waiting, then close the round if it is due; return a new version if any. When none
        came, ask JetStream for the delta stream (a fetch's silence cannot tell an idle stream from one without a
        leader)."""
        assert self._sub is not None and self._js is not None
        try:
            msgs = await self._sub.fetch(FETCH_BATCH, timeout=FETCH_WAIT_S)
        except (NatsTimeoutError, asyncio.TimeoutError):
            msgs = []
            await self._js.stream_info(FL_DELTA_STREAM)
        self._jetstream(True)
        for msg in msgs:
            await self._consume(msg)
        if self._round_due():
            return await self.close_round()
        return None

    def _round_due(self) -> bool:
        """``min_updates`` deltas in, or at least one and ``round_timeout_s`` since the first (module docstring)."""
        count = len(self.state.accepted)
        if count >= self.config.min_updates:
            return True
        waited_s = (time.time_ns() - self.state.first_update_ns) / 1e9
        return count > 0 and waited_s >= self.config.round_timeout_s

    async def _consume(self, msg: Msg) -> None:
        """Validate one delta; persist it into the round state, then ack. Rejections are acked and logged."""
        assert self.store is not None and self.current is not None
        try:
            ref = decode(msg.data, DeltaRef, max_bytes=MAX_REF_BYTES)
            held = msg.data in self.state.accepted or msg.data in self.state.consumed
            if held and msg.metadata.num_delivered > 1:
                await msg.ack()  # a redelivery of a delta we already hold (or held in a closed round)
                return
            validate_ref(ref, msg.subject, self._base_age_s(ref.base_version), self.rules)
            await self._checked(ref, self._seen())
        except ProtocolError as exc:
            self._reject(Reason.UNREADABLE, str(exc), msg)
        except RejectedUpdate as exc:
            self._reject(exc.reason, str(exc), msg)
        else:
            self.state.accepted.append(msg.data)
            if not self.state.first_update_ns:
                self.state.first_update_ns = time.time_ns()
            self._maybe_crash("delta_accepted")
            await self._save_round()
            self._maybe_crash("delta_saved")
            ACCEPTED.inc()
            log.info(
                "delta accepted", extra={"worker_id": ref.worker_id, "base": ref.base_version, "samples": ref.samples}
            )
        await msg.ack()

    def _reject(self, reason: str, text: str, msg: Msg) -> None:
        REJECTED.labels(reason).inc()
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
        log.warning("delta rejected", extra={"reason": reason, "error": text, "subject": msg.subject})

    async def close_round(self) -> ModelVersion | None:
        """Check every accepted delta again and drop the bad ones (module docstring); aggregate the rest into the
        next version and publish it. None when the drops left the round short of being due."""
        assert self.store is not None and self.current is not None and self._nc is not None
        started = time.monotonic()
        held = sorted(((decode(data, DeltaRef), data) for data in self.state.accepted), key=_round_order)
        refs, updates, dropped = [], [], []
        for ref, data in held:
            try:
                updates.append(await self._checked(ref, set()))
                refs.append(ref)
            except RejectedUpdate as exc:
                dropped.append(data)
                DROPPED.labels(exc.reason).inc()
                self.drops[exc.reason] = self.drops.get(exc.reason, 0) + 1
                log.warning(
                    "accepted delta dropped at the close of its round",
                    extra={"reason": exc.reason, "error": str(exc), "worker_id": ref.worker_id},
                )
        if dropped:
            await self._drop(dropped)
            if not self._round_due():
                return None
        weights = apply_delta(self._weights, self.strategy.aggregate(updates))
        samples = sum(r.samples for r in refs)
        loss = sum(r.samples * r.loss for r in refs) / samples
        meta = ModelVersion(
            version=self.current.version + 1,
            object_name="",
            parent=self.current.version,
            contributors=[r.worker_id for r in refs],
            samples=samples,
            loss=loss,
            strategy=self.strategy.name,
        )
        meta = await self.store.put_version(weights, meta)
        self._maybe_crash("weights_stored")
        await self.store.set_latest(meta.version)
        self._maybe_crash("latest_moved")
        self.current, self._weights = meta, weights
        self._note_published(meta)
        self.state = self._next_round(self.state, meta.version)
        await self._save_round()
        self._maybe_crash("round_reset")
        await self._announce()
        ROUND.set(meta.version)
        await self._delete_listed_blobs()
        ROUND_SECONDS.observe(time.monotonic() - started)
        log.info("published version", extra={"version": meta.version, "contributors": meta.contributors, "loss": loss})
        return meta

    async def _announce(self) -> None:
        """Tell the workers the current version (``mvs.fl.global``)."""
        assert self._nc is not None and self.current is not None
        await self._nc.publish(FL_GLOBAL_SUBJECT, encode(self.current))
        await self._nc.flush()

    async def _drop(self, dropped: list[bytes]) -> None:
        """Take the encoded references ``dropped`` out of the round and delete their blobs. They are not consumed
        (none was counted): a reference to the checked bytes again may join a round later, once."""
        self.state.accepted = [data for data in self.state.accepted if data not in dropped]
        self.state.to_delete += dropped
        if not self.state.accepted:
            self.state.first_update_ns = 0  # the next accepted delta starts the round's timeout
        await self._save_round()
        await self._delete_listed_blobs()

    def _maybe_crash(self, step: str) -> None:
        if self.config.crash_after == step:
            log.warning("fault injection: killing the process", extra={"after": step})
            os._exit(1)
