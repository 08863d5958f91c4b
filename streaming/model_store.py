"""Versioned global models in JetStream: weights in the object store, metadata and the latest pointer in KV.

Bucket ``mvs-models`` holds ``global/v<N>`` (weights) and ``delta/...`` (edge deltas); KV
``mvs-model-latest`` holds ``v<N>`` (a :class:`ModelVersion`) and ``latest`` (the newest N). Both use
file storage, so versions survive a crash of the server's clients.

Shared by both ends of federated learning: the aggregator publishes versions, an edge reads them and
submits its deltas (:func:`submit_delta`).
"""

from __future__ import annotations

import time
import uuid

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from streaming.buckets import open_key_value, open_object_store
from streaming.protocol import (
    MODEL_BUCKET,
    MODEL_LATEST_BUCKET,
    DeltaRef,
    ModelVersion,
    decode,
    encode,
    fl_delta_subject,
)
from streaming.tensors import NamedArrays, decode_tensors, encode_tensors

DEFAULT_KEEP_VERSIONS = 5
LATEST_KEY = "latest"


def version_object(version: int) -> str:
    """Object name of a global version's weights."""
    return f"global/v{version}"


class ModelStore:
    """Global versions (keep the newest N) and delta blobs."""

    def __init__(self, objects: ObjectStore, kv: KeyValue, keep: int = DEFAULT_KEEP_VERSIONS) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._objects = objects
        self._kv = kv
        self.keep = keep

    @classmethod
    async def open(cls, js: JetStreamContext, keep: int = DEFAULT_KEEP_VERSIONS) -> ModelStore:
        """Open (or create) the buckets."""
        return cls(await open_object_store(js, MODEL_BUCKET), await open_key_value(js, MODEL_LATEST_BUCKET), keep)

    async def latest(self) -> ModelVersion | None:
        """The newest published version, or None for an empty store."""
        try:
            entry = await self._kv.get(LATEST_KEY)
        except KeyNotFoundError:
            return None
        return await self.version(int((entry.value or b"-1").decode()))

    async def version(self, version: int) -> ModelVersion:
        """Metadata of a version (KeyError if unknown or pruned)."""
        try:
            entry = await self._kv.get(f"v{version}")
        except KeyNotFoundError as exc:
            raise KeyError(f"model version {version} is not in the store") from exc
        return decode(entry.value or b"", ModelVersion)

    async def weights(self, meta: ModelVersion) -> NamedArrays:
        """The weights of a version."""
        return decode_tensors(await self.get_blob(meta.object_name))

    async def put_version(self, weights: NamedArrays, meta: ModelVersion) -> ModelVersion:
        """Store a version's weights and metadata (idempotent); ``latest`` does not move yet."""
        meta.object_name = version_object(meta.version)
        meta.created_ns = meta.created_ns or time.time_ns()
        await self._objects.put(meta.object_name, encode_tensors(weights))
        await self._kv.put(f"v{meta.version}", encode(meta))
        return meta

    async def set_latest(self, version: int) -> None:
        """Point ``latest`` at a stored version and prune versions beyond the newest ``keep``."""
        await self._kv.put(LATEST_KEY, str(version).encode())
        await self._prune(version)

    async def publish(self, weights: NamedArrays, meta: ModelVersion) -> ModelVersion:
        """:meth:`put_version` then :meth:`set_latest`."""
        meta = await self.put_version(weights, meta)
        await self.set_latest(meta.version)
        return meta

    async def _prune(self, newest: int) -> None:
        for old in range(max(0, newest - self.keep - 2), newest - self.keep + 1):
            try:
                await self._kv.delete(f"v{old}")
                await self._objects.delete(version_object(old))
            except (KeyNotFoundError, ObjectNotFoundError):
                continue

    async def put_blob(self, name: str, data: bytes) -> None:
        """Store a blob (e.g. a delta) under ``name``."""
        await self._objects.put(name, data)

    async def get_blob(self, name: str) -> bytes:
        """Read a blob (KeyError if absent)."""
        try:
            result = await self._objects.get(name)
        except ObjectNotFoundError as exc:
            raise KeyError(f"no object {name!r} in {MODEL_BUCKET}") from exc
        return bytes(result.data or b"")

    async def delete_blob(self, name: str) -> None:
        """Remove a blob if present."""
        try:
            await self._objects.delete(name)
        except ObjectNotFoundError:
            return


async def submit_delta(
    js: JetStreamContext,
    store: ModelStore,
    *,
    worker_id: str,
    region: str,
    base_version: int,
    samples: int,
    delta: NamedArrays,
    loss: float = float("nan"),
) -> DeltaRef:
    """What an edge does: store the delta blob, then publish its reference on ``mvs.fl.delta.<region>``."""
    ref = DeltaRef(
        worker_id=worker_id,
        region=region,
        base_version=base_version,
        samples=samples,
        object_name=f"delta/{region}/{worker_id}/v{base_version}-{uuid.uuid4().hex[:8]}",
        loss=loss,
    )
    await store.put_blob(ref.object_name, encode_tensors(delta))
    await js.publish(fl_delta_subject(region), encode(ref))
    return ref
