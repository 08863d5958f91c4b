"""Versioned global models in JetStream: weights in the object store, metadata and the latest pointer in KV.

Bucket ``mvs-models`` holds ``global/v<N>`` (weights); KV ``mvs-model-latest`` holds ``v<N>`` (a
:class:`ModelVersion`, with the SHA-256 of the weights blob) and ``latest`` (the newest N). Deltas go to their
region's bucket ``mvs-deltas-<region>`` (:class:`DeltaStore`), under ``delta/<region>/<worker id>/``. All use file
storage, so versions survive a crash of the server's clients.

The stores are created by the operator's setup or the aggregator (:func:`streaming.buckets.create_stores`), never
here: opening one binds to what exists. Who writes what is NATS's business (``deploy/nats_auth.py``): the aggregator
alone writes ``mvs-models`` and the KV, a region's workers write only their region's delta bucket and read with
direct gets. The digest is the second lock: weights whose
SHA-256 differs from their metadata's are refused (:class:`ModelIntegrityError`), whoever wrote them.

Shared by both ends of federated learning: the aggregator publishes versions, an edge reads them and
submits its deltas (:func:`submit_delta`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from streaming.buckets import Bucket, BucketMissingError, ObjectIntegrityError, read_key
from streaming.protocol import (
    MODEL_BUCKET,
    MODEL_LATEST_BUCKET,
    DeltaRef,
    ModelVersion,
    ProtocolError,
    decode,
    delta_bucket,
    delta_object_owner,
    delta_object_prefix,
    encode,
    fl_delta_subject,
)
from streaming.tensors import NamedArrays, decode_tensors, digest, encode_tensors

log = logging.getLogger(__name__)

DEFAULT_KEEP_VERSIONS = 5
LATEST_KEY = "latest"


def version_object(version: int) -> str:
    """Object name of a global version's weights."""
    return f"global/v{version}"


class ModelIntegrityError(ValueError):
    """A version's weights are missing, unreadable or do not match the digest in its metadata."""


class StoreMissingError(BucketMissingError):
    """The model buckets do not exist yet (a worker does not create them: the setup or the aggregator does)."""


class ModelStore:
    """Global versions (keep the newest N): weights in the object store, metadata and ``latest`` in KV."""

    def __init__(self, js: JetStreamContext, keep: int = DEFAULT_KEEP_VERSIONS) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._js = js
        self._objects = Bucket(js, MODEL_BUCKET)
        self._kv: KeyValue | None = None
        self.keep = keep

    @classmethod
    async def open(cls, js: JetStreamContext, keep: int = DEFAULT_KEEP_VERSIONS) -> ModelStore:
        """Bind the store; :class:`StoreMissingError` when it does not exist yet."""
        store = cls(js, keep)
        await store.latest_number()
        return store

    async def _read(self, key: str) -> bytes | None:
        try:
            return await read_key(self._js, MODEL_LATEST_BUCKET, key)
        except BucketMissingError as exc:
            raise StoreMissingError(f"no model store yet ({MODEL_LATEST_BUCKET}): the setup creates it") from exc

    async def _writable_kv(self) -> KeyValue:
        """The KV bound for writing (the aggregator's alone)."""
        if self._kv is None:
            self._kv = await self._js.key_value(MODEL_LATEST_BUCKET)
        return self._kv

    async def latest_number(self) -> int | None:
        """The number ``latest`` points at, or None for an empty store."""
        value = await self._read(LATEST_KEY)
        return None if value is None else int(value.decode())

    async def latest(self) -> ModelVersion | None:
        """The newest published version, or None for an empty store."""
        number = await self.latest_number()
        return None if number is None else await self.version(number)

    async def version(self, version: int) -> ModelVersion:
        """Metadata of a version (KeyError if unknown or pruned)."""
        value = await self._read(f"v{version}")
        if value is None:
            raise KeyError(f"model version {version} is not in the store")
        return decode(value, ModelVersion)

    async def weights(self, meta: ModelVersion) -> NamedArrays:
        """The weights of a version, checked against the digest in ``meta``: :class:`ModelIntegrityError` when they
        are missing, differ from the digest, have none, or do not decode."""
        what = f"model version {meta.version} ({meta.object_name!r})"
        if not meta.sha256:
            raise ModelIntegrityError(f"{what} is refused: its metadata has no SHA-256 digest")
        try:
            blob = await self.get_blob(meta.object_name)
        except KeyError as exc:
            raise ModelIntegrityError(f"{what} is refused: its weights are missing from {MODEL_BUCKET}") from exc
        except ObjectIntegrityError as exc:
            raise ModelIntegrityError(f"{what} is refused: {exc}") from exc
        found = digest(blob)
        if found != meta.sha256:
            raise ModelIntegrityError(
                f"{what} is refused: its {len(blob)} bytes have SHA-256 {found[:16]}..., "
                f"the version's metadata says {meta.sha256[:16]}..."
            )
        try:
            return decode_tensors(blob)
        except ProtocolError as exc:
            raise ModelIntegrityError(f"{what} is refused: {exc}") from exc

    async def newest_good(
        self, newest: int, check: Callable[[ModelVersion, NamedArrays], None] | None = None
    ) -> tuple[ModelVersion, NamedArrays] | None:
        """The newest version at or below ``newest`` (among the kept ones) whose weights pass :meth:`weights` and
        ``check`` (which raises :class:`ModelIntegrityError`), or None. Each refused version is skipped with a warning
        naming why."""
        for version in range(newest, max(-1, newest - self.keep - 1), -1):
            try:
                meta = await self.version(version)
                weights = await self.weights(meta)
                if check is not None:
                    check(meta, weights)
                return meta, weights
            except (KeyError, ModelIntegrityError) as exc:
                log.warning("skipping a global model version", extra={"version": version, "error": str(exc)})
        return None

    async def put_version(self, weights: NamedArrays, meta: ModelVersion) -> ModelVersion:
        """Store a version's weights and metadata with their digest (idempotent); ``latest`` does not move yet."""
        blob = encode_tensors(weights)
        meta.object_name = version_object(meta.version)
        meta.created_ns = meta.created_ns or time.time_ns()
        meta.sha256 = digest(blob)
        await self._objects.put(meta.object_name, blob)
        await (await self._writable_kv()).put(f"v{meta.version}", encode(meta))
        return meta

    async def set_latest(self, version: int) -> None:
        """Point ``latest`` at a stored version and prune versions beyond the newest ``keep``."""
        await (await self._writable_kv()).put(LATEST_KEY, str(version).encode())
        await self._prune(version)

    async def publish(self, weights: NamedArrays, meta: ModelVersion) -> ModelVersion:
        """:meth:`put_version` then :meth:`set_latest`."""
        meta = await self.put_version(weights, meta)
        await self.set_latest(meta.version)
        return meta

    async def _prune(self, newest: int) -> None:
        kv = await self._writable_kv()
        for old in range(max(0, newest - self.keep - 2), newest - self.keep + 1):
            try:
                await kv.delete(f"v{old}")
            except KeyNotFoundError:
                continue
            await self._objects.delete(version_object(old))

    async def put_blob(self, name: str, data: bytes) -> None:
        """Store a blob under ``name``."""
        await self._objects.put(name, data)

    async def get_blob(self, name: str) -> bytes:
        """Read a blob (KeyError if absent)."""
        return await self._objects.get(name)

    async def delete_blob(self, name: str) -> None:
        """Remove a blob if present."""
        await self._objects.delete(name)


class DeltaStore:
    """One region's delta blobs (bucket :func:`streaming.protocol.delta_bucket`), each under the subjects of the
    worker its name names (:func:`~streaming.protocol.delta_object_owner`): NATS lets a worker write its own only."""

    def __init__(self, js: JetStreamContext, region: str, direct: bool = True) -> None:
        """``direct=False``: reads through the bucket's stream leader (the aggregator's: see :class:`Bucket`)."""
        self._js, self._direct = js, direct
        self.region = region

    def _objects(self, name: str) -> Bucket:
        """The bucket as seen by the worker owning object ``name`` (ValueError: not a delta object's name)."""
        return Bucket(self._js, delta_bucket(self.region), self._direct, delta_object_owner(self.region, name))

    async def put(self, name: str, data: bytes) -> None:
        """Store a delta blob."""
        await self._objects(name).put(name, data)

    async def get(self, name: str) -> bytes:
        """Read a delta blob (KeyError if absent, its bucket too, its name not a delta's, or its chunks do not match
        its metadata)."""
        try:
            return await self._objects(name).get(name)
        except (ObjectIntegrityError, BucketMissingError, ValueError) as exc:
            raise KeyError(str(exc)) from exc

    async def delete(self, name: str) -> None:
        """Remove a delta blob if present."""
        await self._objects(name).delete(name)


async def submit_delta(
    js: JetStreamContext,
    deltas: DeltaStore,
    *,
    worker_id: str,
    base_version: int,
    samples: int,
    delta: NamedArrays,
    loss: float = float("nan"),
) -> DeltaRef:
    """What an edge does: store the delta blob in its region's bucket, then publish its reference (with the blob's
    SHA-256) on ``mvs.fl.delta.<region>.<worker id>``. The blob is written under the worker's own subjects of the
    bucket (:class:`DeltaStore`), which no other worker may write; its name ends in 122 random bits besides."""
    region, blob = deltas.region, encode_tensors(delta)
    ref = DeltaRef(
        worker_id=worker_id,
        region=region,
        base_version=base_version,
        samples=samples,
        object_name=f"{delta_object_prefix(region, worker_id)}v{base_version}-{uuid.uuid4().hex}",
        loss=loss,
        sha256=digest(blob),
    )
    await deltas.put(ref.object_name, blob)
    await js.publish(fl_delta_subject(region, worker_id), encode(ref))
    return ref
