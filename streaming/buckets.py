"""JetStream buckets and streams: what exists (their configs, in one place), the setup that creates them, and the
one way services read and write them.

Nothing here lets a worker or a gateway create anything. The operator's setup (:func:`create_stores`, run by
``mvs setup``, by ``mvs nats``/``mvs demo``/``mvs local`` before their services start, and by a Job in a cluster)
creates every bucket and stream; the aggregator creates its own stores the same way when they are missing. Every
other service binds to what exists and uses two kinds of call only (``deploy/nats_auth.py`` allows no others):

- **direct gets** (``$JS.API.DIRECT.GET.<stream>``) to read: a reply to the requester, never a consumer whose
  delivery subject the requester could choose;
- **publishes** of an object's chunks and metadata (``$O.<bucket>.C|M.*``) to write, each acknowledged by the
  stream (the name format and digest of nats-py's object store, so both read each other's objects).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectInfo, ObjectStoreConfig, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from streaming.protocol import (
    FL_DELTA_STREAM,
    FL_DELTA_SUBJECTS,
    FL_ROUND_BUCKET,
    MODEL_BUCKET,
    MODEL_LATEST_BUCKET,
    STYLE_BUCKET,
    delta_bucket,
    token,
)

CHUNK_BYTES = 128 * 1024
SETTLE_POLL_S = 0.05
"""Pause between reads of an object not (fully) on the replica that answered yet."""
"""An object's chunk size (nats-py's default)."""
DIGEST_PREFIX = "SHA-256="
ROLLUP_HEADER = "Nats-Rollup"
KV_OPERATION_HEADER = "KV-Operation"
KV_REMOVED = frozenset({"DEL", "PURGE"})


class BucketMissingError(LookupError):
    """A bucket or stream does not exist (yet): the operator's setup creates it (``mvs setup``)."""


class ObjectIntegrityError(ValueError):
    """An object's chunks do not match its metadata (count, size or SHA-256)."""


class ObjectDeletedError(KeyError):
    """The object's metadata says it was deleted: final, no replica will come to hold it (not read again)."""


def object_stream(bucket: str) -> str:
    """The stream behind an object store bucket."""
    return f"OBJ_{bucket}"


def kv_stream(bucket: str) -> str:
    """The stream behind a KV bucket."""
    return f"KV_{bucket}"


def chunk_subject(bucket: str, nuid: str, owner: str | None = None) -> str:
    """Where an object's chunks are stored (a fresh random ``nuid`` per object version), under its ``owner``'s token
    when it has one (:class:`Bucket`)."""
    return f"$O.{bucket}.C.{nuid}" if owner is None else f"$O.{bucket}.C.{token(owner)}.{nuid}"


def meta_subject(bucket: str, name: str, owner: str | None = None) -> str:
    """Where an object's metadata is stored (its name in URL-safe base64, as nats-py writes it), under its
    ``owner``'s token when it has one (:class:`Bucket`)."""
    encoded = base64.urlsafe_b64encode(name.encode()).decode()
    return f"$O.{bucket}.M.{encoded}" if owner is None else f"$O.{bucket}.M.{token(owner)}.{encoded}"


def owned_subjects(bucket: str, owner: str = "*") -> list[str]:
    """The chunk and metadata subjects of ``owner``'s objects in ``bucket`` (``*``: any owner's), for permissions."""
    return [f"$O.{bucket}.C.{owner}.*", f"$O.{bucket}.M.{owner}.*"]


# What a deployment has: every bucket and stream, with its config and its limits (named beside it).
MIB = 1024 * 1024
JS_MAX_BYTES_EXCEEDED = 10077
"""JetStream's error code for a publish refused by a full stream (discard policy "new", as object stores have)."""

STYLE_BUCKET_MAX_BYTES = 1024 * MIB
"""Capacity of the style bucket (1 GiB: >= 1,024 styles); once full, new styles are refused until some expire."""
STYLE_TTL_S = 24 * 3600.0
"""A style expires this long after it was (last) stored."""
STYLES = ObjectStoreConfig(
    bucket=STYLE_BUCKET, storage=StorageType.FILE, max_bytes=STYLE_BUCKET_MAX_BYTES, ttl=STYLE_TTL_S
)

MODELS = ObjectStoreConfig(bucket=MODEL_BUCKET, storage=StorageType.FILE)
MODEL_LATEST = KeyValueConfig(bucket=MODEL_LATEST_BUCKET, storage=StorageType.FILE, direct=True)
ROUNDS = KeyValueConfig(bucket=FL_ROUND_BUCKET, storage=StorageType.FILE)

DELTA_STREAM_MAX_BYTES = 256 * MIB
"""Capacity of the delta stream (its messages are references of ~200 B; the blobs live in the delta buckets)."""
DELTA_STREAM_MAX_PER_SUBJECT = 10_000
"""References kept per worker's subject (``mvs.fl.delta.<region>.<worker>``): one flooding its subject pushes out
only its own oldest."""
DELTA_STREAM_MAX_MSG_BYTES = 64 * 1024
DELTA_STREAM_MAX_AGE_S = 7 * 24 * 3600.0
DELTA_REFS = StreamConfig(
    name=FL_DELTA_STREAM,
    subjects=[FL_DELTA_SUBJECTS],
    storage=StorageType.FILE,
    max_bytes=DELTA_STREAM_MAX_BYTES,
    max_msgs_per_subject=DELTA_STREAM_MAX_PER_SUBJECT,
    max_msg_size=DELTA_STREAM_MAX_MSG_BYTES,
    max_age=DELTA_STREAM_MAX_AGE_S,
)

DELTA_BUCKET_MAX_BYTES = 2 * 1024 * MIB
"""Capacity of a region's delta bucket (2 GiB: ~1,000 deltas of the DNN); once full, new deltas are refused."""
DELTA_TTL_S = 7 * 24 * 3600.0
"""A delta blob left behind (its round never closed) expires after this long."""


def deltas(region: str) -> ObjectStoreConfig:
    """Region ``region``'s delta bucket (bounded in bytes and age)."""
    return ObjectStoreConfig(
        bucket=delta_bucket(region), storage=StorageType.FILE, max_bytes=DELTA_BUCKET_MAX_BYTES, ttl=DELTA_TTL_S
    )


Store = ObjectStoreConfig | KeyValueConfig | StreamConfig


def aggregator_stores() -> list[Store]:
    """The stores federated learning's cloud side owns (the aggregator may create them itself)."""
    return [MODELS, MODEL_LATEST, ROUNDS, DELTA_REFS]


def deployment_stores(regions: Sequence[str]) -> list[Store]:
    """Every bucket and stream of a deployment serving ``regions``."""
    return [STYLES, *aggregator_stores(), *(deltas(region) for region in regions)]


def stream_name(store: Store) -> str:
    """The stream a store config describes."""
    if isinstance(store, ObjectStoreConfig):
        assert store.bucket is not None
        return object_stream(store.bucket)
    if isinstance(store, KeyValueConfig):
        return kv_stream(store.bucket)
    assert store.name is not None
    return store.name


def read_directly(store: Store) -> bool:
    """Whether services read ``store`` by direct get (object stores and KV buckets created ``direct``)."""
    return isinstance(store, ObjectStoreConfig) or (isinstance(store, KeyValueConfig) and bool(store.direct))


def with_replicas(store: Store, replicas: int) -> Store:
    """A copy of ``store`` with ``replicas`` copies of its stream on as many servers of a JetStream cluster."""
    if isinstance(store, StreamConfig):
        return replace(store, num_replicas=replicas)
    return replace(store, replicas=replicas)


async def create_stores(js: JetStreamContext, stores: Sequence[Store], replicas: int | None = None) -> list[str]:
    """Create each of ``stores`` that does not exist yet, with ``replicas`` (the setup's: min(3, hub servers); None:
    one); one that exists is left as it is, except that direct gets are turned on where services read by direct get
    (a store made before they did) and, given ``replicas``, its replicas are set to that (a hub grown from one server
    to a cluster; the aggregator, which passes none, never changes them). The streams created or changed."""
    created = []
    for store in stores:
        name = stream_name(store)
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            pass
        else:
            direct = read_directly(store) and not info.config.allow_direct
            rescale = replicas is not None and (info.config.num_replicas or 1) != replicas
            if direct or rescale:
                changed = replace(info.config, num_replicas=replicas) if rescale else info.config
                await js.update_stream(replace(changed, allow_direct=True) if direct else changed)
                created.append(name)
            continue
        store = with_replicas(store, replicas or 1)
        if isinstance(store, ObjectStoreConfig):  # nats-py overwrites the config's bucket: give it a copy
            assert store.bucket is not None
            await js.create_object_store(store.bucket, config=store)
        elif isinstance(store, KeyValueConfig):
            await js.create_key_value(config=store)
        else:
            await js.add_stream(store)
        created.append(name)
    return created


@dataclass
class Bucket:
    """An object store bucket, read with direct gets and written with acknowledged publishes.

    In a hub cluster any replica answers a direct get, and a follower may not hold the newest writes yet: a reader
    that must see an object just written by someone else (the aggregator, a delta whose reference it holds) reads
    through the stream's leader instead (``direct=False``: ``STREAM.MSG.GET``).

    With an ``owner`` (a subject token: a worker id) the objects' subjects carry it (:func:`owned_subjects`), so
    NATS permissions can let each owner write its own objects of a shared bucket only: an object's subjects are
    otherwise one random token (chunks) and the base64 of its name (metadata), and a subject wildcard matches
    whole tokens only, never a name prefix. nats-py's object store API does not read such objects; this class
    does (the bucket's stream takes ``$O.<bucket>.C.>`` and ``M.>``)."""

    js: JetStreamContext
    name: str
    direct: bool = True
    owner: str | None = None

    @property
    def stream(self) -> str:
        return object_stream(self.name)

    async def _direct_get(self, subject: str, after: int | None = None) -> tuple[int, bytes]:
        """(sequence, data) of the last message on ``subject``, or with ``after`` the first one past that sequence;
        KeyError when there is none, :class:`BucketMissingError` when the bucket does not exist."""
        try:
            if after is None:
                msg = await self.js.get_last_msg(self.stream, subject, direct=self.direct)
            else:
                msg = await self.js.get_msg(self.stream, seq=after + 1, subject=subject, direct=self.direct, next=True)
        except NotFoundError as exc:
            raise KeyError(subject) from exc
        except NoRespondersError as exc:
            raise BucketMissingError(f"no bucket {self.name}: the operator's setup creates it (mvs setup)") from exc
        return int(msg.seq or 0), bytes(msg.data or b"")

    async def info(self, name: str) -> ObjectInfo | None:
        """The metadata of object ``name``, or None if there is none (or it was deleted)."""
        try:
            return await self._info(name)
        except KeyError:
            return None

    async def _info(self, name: str) -> ObjectInfo:
        """The metadata of object ``name``; KeyError if there is none, :class:`ObjectDeletedError` if deleted."""
        _, data = await self._direct_get(meta_subject(self.name, name, self.owner))
        info = ObjectInfo.from_response(json.loads(data))
        if info.deleted:
            raise ObjectDeletedError(f"object {name!r} of {self.name} was deleted")
        return info

    async def get(self, name: str, settle_s: float = 0.0) -> bytes:
        """Object ``name``'s bytes, checked against its metadata; KeyError if absent, :class:`ObjectIntegrityError`
        if its chunks do not match. ``settle_s``: an object absent or incomplete, or no responder, is read again for up
        to that long (a hub cluster's follower may answer a direct get before it holds an object just written, and
        for a moment of a failover no replica answers); a deleted one is not (:class:`ObjectDeletedError`)."""
        deadline = time.monotonic() + settle_s
        while True:
            try:
                return await self._get(name)
            except ObjectDeletedError:
                raise
            except (LookupError, ObjectIntegrityError):  # missing (or no responder yet: a cluster's failover)
                if time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(SETTLE_POLL_S)

    async def _get(self, name: str) -> bytes:
        try:
            info = await self._info(name)
        except ObjectDeletedError:
            raise
        except KeyError as exc:
            raise KeyError(f"no object {name!r} in {self.name}") from exc
        subject, seq = chunk_subject(self.name, info.nuid, self.owner), 0
        data = bytearray()
        for _ in range(info.chunks or 0):
            try:
                seq, chunk = await self._direct_get(subject, after=seq)
            except KeyError as exc:
                raise ObjectIntegrityError(f"object {name!r} of {self.name} lacks chunks") from exc
            data += chunk
        digest = DIGEST_PREFIX + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        if len(data) != (info.size or 0) or digest != info.digest:
            raise ObjectIntegrityError(f"object {name!r} of {self.name} does not match its metadata")
        return bytes(data)

    async def put(self, name: str, data: bytes) -> None:
        """Store ``data`` as object ``name``: its chunks on a fresh subject, then its metadata (with its ``mtime``, as
        nats-py writes it). A refused publish (a full bucket: :data:`JS_MAX_BYTES_EXCEEDED`) raises its
        ``APIError``."""
        nuid = uuid.uuid4().hex
        for start in range(0, len(data), CHUNK_BYTES):
            await self.js.publish(chunk_subject(self.name, nuid, self.owner), data[start : start + CHUNK_BYTES])
        digest = DIGEST_PREFIX + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        info = {
            "name": name,
            "bucket": self.name,
            "nuid": nuid,
            "size": len(data),
            "chunks": -(-len(data) // CHUNK_BYTES),
            "digest": digest,
            "mtime": datetime.now(timezone.utc).isoformat(),
            "options": {"max_chunk_size": CHUNK_BYTES},
        }
        await self.js.publish(
            meta_subject(self.name, name, self.owner), json.dumps(info).encode(), headers={ROLLUP_HEADER: "sub"}
        )

    async def delete(self, name: str) -> None:
        """Remove object ``name`` if present (its metadata marked deleted, its chunks purged): the aggregator's."""
        info = await self.info(name)
        if info is None:
            return
        info.deleted, info.size, info.chunks, info.digest = True, 0, 0, ""
        await self.js.publish(
            meta_subject(self.name, name, self.owner),
            json.dumps(info.as_dict()).encode(),
            headers={ROLLUP_HEADER: "sub"},
        )
        await self.js.purge_stream(self.stream, subject=chunk_subject(self.name, info.nuid, self.owner))


async def read_key(js: JetStreamContext, bucket: str, key: str) -> bytes | None:
    """The value of ``key`` in KV ``bucket`` (a direct get), None if absent or deleted; :class:`BucketMissingError`
    if the bucket does not exist."""
    try:
        msg = await js.get_last_msg(kv_stream(bucket), f"$KV.{bucket}.{key}", direct=True)
    except NotFoundError:
        return None
    except NoRespondersError as exc:
        raise BucketMissingError(f"no KV bucket {bucket}: the operator's setup creates it (mvs setup)") from exc
    if (msg.headers or {}).get(KV_OPERATION_HEADER) in KV_REMOVED:
        return None
    return bytes(msg.data or b"")
