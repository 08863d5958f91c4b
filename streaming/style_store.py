"""Style images in the JetStream object store, named by content hash (bucket ``mvs-styles``, ARCHITECTURE.md)."""

from __future__ import annotations

import hashlib

from nats.js import JetStreamContext
from nats.js.errors import ObjectNotFoundError
from nats.js.object_store import ObjectStore

from streaming.buckets import open_object_store
from streaming.protocol import STYLE_BUCKET

STYLE_ID_HEX_CHARS = 32


class UnknownStyleError(KeyError):
    """No style with that id is stored."""


def style_id_of(data: bytes) -> str:
    """Content-derived id of an encoded style image."""
    return hashlib.sha256(data).hexdigest()[:STYLE_ID_HEX_CHARS]


class StyleStore:
    """Put and get encoded style images by id."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str = STYLE_BUCKET) -> StyleStore:
        """Open (or create) the style bucket."""
        return cls(await open_object_store(js, bucket))

    async def put(self, data: bytes) -> str:
        """Store an encoded style image; return its id (idempotent)."""
        style_id = style_id_of(data)
        try:
            await self._store.get_info(style_id)
        except ObjectNotFoundError:
            await self._store.put(style_id, data)
        return style_id

    async def get(self, style_id: str) -> bytes:
        """The encoded style image with id ``style_id``."""
        try:
            result = await self._store.get(style_id)
        except ObjectNotFoundError as exc:
            raise UnknownStyleError(style_id) from exc
        return bytes(result.data or b"")
