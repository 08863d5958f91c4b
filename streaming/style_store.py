"""Style images in the JetStream object store, named by content hash (bucket ``mvs-styles``, ARCHITECTURE.md).

What is stored is never a phone's upload: :func:`normalized_style` decodes it (bounded), scales it down to
:data:`STORED_STYLE_MAX_SIDE` and encodes a JPEG of at most :data:`STORED_STYLE_MAX_BYTES`, so bytes after an
image's end marker, metadata and oversized photos stay out. The bucket (its config: ``streaming.buckets.STYLES``,
created by the operator's setup) is bounded (``STYLE_BUCKET_MAX_BYTES``, new styles refused once full) and each
style expires ``STYLE_TTL_S`` after it was stored; a style offered again after half of that is stored again, so a
style in use stays.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import cv2
from nats.js import JetStreamContext
from nats.js.errors import APIError

from streaming.buckets import JS_MAX_BYTES_EXCEEDED, MIB, STYLE_BUCKET_MAX_BYTES, STYLE_TTL_S, Bucket
from streaming.images import decode_image, encode_jpeg
from streaming.protocol import MAX_FRAME_SIDE, STYLE_BUCKET

STYLE_ID_HEX_CHARS = 32
REPLICA_SETTLE_S = 2.0
"""How long a style just stored may take to reach the replica answering a read (a hub cluster's follower is
milliseconds behind its leader; past this, the style is unknown)."""
STORED_STYLE_MAX_SIDE = 1024
"""Longest side of a stored style (px): the DNN encodes styles at its working size (<= 512), colour transfer
uses their statistics."""
STORED_STYLE_MAX_BYTES = 1024 * 1024
"""Largest stored style (its JPEG quality is lowered until it fits)."""
STORED_STYLE_QUALITY = 90


class UnknownStyleError(KeyError):
    """No style with that id is stored."""


class StyleStoreFull(Exception):
    """The style bucket is at its capacity."""


def style_id_of(data: bytes) -> str:
    """Content-derived id of an encoded style image."""
    return hashlib.sha256(data).hexdigest()[:STYLE_ID_HEX_CHARS]


def upload_digest(upload: bytes) -> str:
    """Digest of an upload as sent (not of the style stored from it): CPU work for a big one, off the loop."""
    return hashlib.sha256(upload).hexdigest()


def normalized_style(upload: bytes) -> bytes:
    """The JPEG stored for an uploaded style (JPEG or PNG): decoded within the frame limits, scaled down to
    :data:`STORED_STYLE_MAX_SIDE`, at most :data:`STORED_STYLE_MAX_BYTES`. CPU work: call it off the event loop;
    :class:`streaming.images.ImageDecodeError` if the upload is no usable image."""
    image = decode_image(upload, max_side=MAX_FRAME_SIDE)
    height, width = image.shape[:2]
    scale = STORED_STYLE_MAX_SIDE / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return encode_jpeg(image, STORED_STYLE_QUALITY, STORED_STYLE_MAX_BYTES)


class StyleStore:
    """Put and get encoded style images by id (the bucket is the setup's to create: ``streaming.buckets``)."""

    def __init__(self, js: JetStreamContext, bucket: str = STYLE_BUCKET) -> None:
        self._store = Bucket(js, bucket)

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str = STYLE_BUCKET) -> StyleStore:
        """Bind the style bucket (its absence shows on the first put or get: :class:`BucketMissingError`)."""
        return cls(js, bucket)

    async def _age_s(self, style_id: str) -> float | None:
        """Seconds since ``style_id`` was stored (its metadata's ``mtime``), or None if it is not."""
        info = await self._store.info(style_id)
        if info is None:
            return None
        try:
            stored = datetime.fromisoformat(info.mtime or "")
        except ValueError:
            return STYLE_TTL_S
        if stored.tzinfo is None:
            return STYLE_TTL_S
        return (datetime.now(timezone.utc) - stored).total_seconds()

    async def fresh(self, style_id: str) -> bool:
        """Whether this style is stored and far from expiring (storing it again would add nothing)."""
        age = await self._age_s(style_id)
        return age is not None and age < STYLE_TTL_S / 2

    async def put(self, data: bytes) -> str:
        """Store an encoded style image (again, if it is past half its life); return its id.
        :class:`StyleStoreFull` when the bucket is at its capacity (the acknowledged publish is refused)."""
        style_id = style_id_of(data)
        if not await self.fresh(style_id):
            try:
                await self._store.put(style_id, data)
            except APIError as exc:
                if exc.err_code == JS_MAX_BYTES_EXCEEDED:
                    raise StyleStoreFull(f"the style store is full ({STYLE_BUCKET_MAX_BYTES // MIB} MiB)") from exc
                raise
        return style_id

    async def get(self, style_id: str) -> bytes:
        """The encoded style image with id ``style_id`` (:class:`UnknownStyleError` if none has been stored, after
        :data:`REPLICA_SETTLE_S`)."""
        try:
            return await self._store.get(style_id, REPLICA_SETTLE_S)
        except KeyError as exc:
            raise UnknownStyleError(style_id) from exc
