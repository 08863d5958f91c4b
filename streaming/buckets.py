"""JetStream buckets the stores bind to: an existing bucket, or a new one created on first use.

Every store (styles in :mod:`streaming.style_store`, models in :mod:`streaming.model_store`, the
aggregator's round state) opens its buckets here, so "bind or create" is written once.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore


async def open_object_store(js: JetStreamContext, bucket: str, config: ObjectStoreConfig | None = None) -> ObjectStore:
    """Bind to an object store bucket, creating it if it does not exist (with ``config``: its limits; default: file
    storage, unbounded)."""
    try:
        return await js.object_store(bucket)
    except BucketNotFoundError:
        return await js.create_object_store(bucket, config)


async def open_key_value(js: JetStreamContext, bucket: str) -> KeyValue:
    """Bind to a KV bucket, creating it (file storage, history 1) if it does not exist."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=bucket, storage=StorageType.FILE)


async def read_object(objects: ObjectStore, bucket: str, name: str) -> bytes:
    """The object ``name`` of ``objects`` (the bucket ``bucket``); KeyError if absent."""
    try:
        result = await objects.get(name)
    except ObjectNotFoundError as exc:
        raise KeyError(f"no object {name!r} in {bucket}") from exc
    return bytes(result.data or b"")


async def delete_object(objects: ObjectStore, name: str) -> None:
    """Remove the object ``name`` if present."""
    try:
        await objects.delete(name)
    except ObjectNotFoundError:
        return
