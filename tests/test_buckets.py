"""streaming/buckets.py on a real nats-server: the setup creates what is missing and turns on direct gets where an
older store lacks them; objects written and read by direct gets and publishes are nats-py's object format, and a
damaged one is refused."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType

from deploy.nats_servers import NatsServer
from streaming.buckets import (
    CHUNK_BYTES,
    Bucket,
    BucketMissingError,
    ObjectIntegrityError,
    Store,
    chunk_subject,
    create_stores,
    read_key,
)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


def _name() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


async def test_the_setup_creates_what_is_missing_and_turns_on_direct_gets(nc: NATS) -> None:
    js = nc.jetstream()
    older, fresh = _name(), _name()
    kv = await js.create_key_value(config=KeyValueConfig(bucket=older, storage=StorageType.FILE))  # no direct gets
    await kv.put("latest", b"3")
    with pytest.raises(BucketMissingError):
        await read_key(js, older, "latest")
    stores: list[Store] = [
        KeyValueConfig(bucket=older, direct=True),
        ObjectStoreConfig(bucket=fresh, storage=StorageType.FILE),
    ]
    assert await create_stores(js, stores) == [f"KV_{older}", f"OBJ_{fresh}"]
    assert await create_stores(js, stores) == []  # again: nothing to do
    assert await read_key(js, older, "latest") == b"3" and await read_key(js, older, "other") is None
    await kv.delete("latest")
    assert await read_key(js, older, "latest") is None


async def test_objects_are_nats_py_objects_and_a_damaged_one_is_refused(nc: NATS) -> None:
    js = nc.jetstream()
    name = _name()
    await create_stores(js, [ObjectStoreConfig(bucket=name, storage=StorageType.FILE)])
    ours, theirs = Bucket(js, name), await js.object_store(name)
    blob = os.urandom(2 * CHUNK_BYTES + 5)
    await ours.put("a", blob)
    assert (await theirs.get("a")).data == blob and await ours.get("a") == blob
    await theirs.put("b", blob[:100])
    assert await ours.get("b") == blob[:100]
    with pytest.raises(KeyError):
        await ours.get("missing")
    info = await ours.info("a")
    assert info is not None and info.chunks == 3
    await js.purge_stream(f"OBJ_{name}", subject=chunk_subject(name, info.nuid))  # chunks swapped for others
    for start in range(0, len(blob), CHUNK_BYTES):
        await js.publish(chunk_subject(name, info.nuid), bytes(len(blob[start : start + CHUNK_BYTES])))
    with pytest.raises(ObjectIntegrityError):
        await ours.get("a")
    await ours.delete("b")
    assert await ours.info("b") is None
    with pytest.raises(BucketMissingError):
        await Bucket(js, _name()).get("a")
