"""Style images in the JetStream object store, named by content hash (bucket ``mvs-styles``, ARCHITECTURE.md)."""

from __future__ import annotations

import hashlib

from nats.js import JetStreamContext

from streaming.buckets import Bucket
from streaming.protocol import STYLE_BUCKET

STYLE_ID_HEX_CHARS = 32
REPLICA_SETTLE_S = 2.0
"""How long a style just stored may take to reach the replica answering a read (a hub cluster's follower is
milliseconds behind its leader; past this, the style is unknown)."""


class UnknownStyleError(KeyError):
    """No style with that id is stored."""


def style_id_of(data: bytes) -> str:
    """Content-derived id of an encoded style image."""
    return hashlib.sha256(data).hexdigest()[:STYLE_ID_HEX_CHARS]


class StyleStore:
    """Put and get encoded style images by id (the bucket is the setup's to create: ``streaming.buckets``)."""

    def __init__(self, js: JetStreamContext, bucket: str = STYLE_BUCKET) -> None:
        self._store = Bucket(js, bucket)

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str = STYLE_BUCKET) -> StyleStore:
        """Bind the style bucket (its absence shows on the first put or get: :class:`BucketMissingError`)."""
        return cls(js, bucket)

    async def put(self, data: bytes) -> str:
        """Store an encoded style image; return its id (idempotent)."""
        style_id = style_id_of(data)
        if await self._store.info(style_id) is None:
            await self._store.put(style_id, data)
        return style_id

    async def get(self, style_id: str) -> bytes:
        """The encoded style image with id ``style_id`` (:class:`UnknownStyleError` if none has been stored, after
        :data:`REPLICA_SETTLE_S`)."""
        try:
            return await self._store.get(style_id, REPLICA_SETTLE_S)
        except KeyError as exc:
            raise UnknownStyleError(style_id) from exc
