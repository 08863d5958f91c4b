"""Named tensors (model weights, deltas) as bytes: msgpack (``streaming.protocol.pack``) of dtype, shape and raw
little-endian data.

No pickle, so a blob from the network cannot run code; numpy only, so the gateway needs no torch.
The tensor map is zlib-compressed (level 1): an fp16 delta of the stylizer shrinks to about a third
of its fp32 weights instead of a half. Blobs travel through the JetStream object store, never on a
subject.

Layout, for readers in other languages (the browser phone's ``affine-gl.js`` parses it): a msgpack map
``{"format": "mvs-tensors/1", "zlib": <bin>}`` (or ``"tensors": <bin>`` uncompressed); ``zlib`` is an RFC 1950
zlib stream (``DecompressionStream("deflate")`` in a browser) of the tensor map; the tensor map is a msgpack map
from name (names sorted) to ``{"dtype": <one of ALLOWED_DTYPES>, "shape": [int, ...], "data": <bin>}``, data
little-endian in C (row-major) order.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

import numpy as np

from streaming.protocol import ErrorCode, ProtocolError, pack, unpack

TENSORS_FORMAT = "mvs-tensors/1"
ALLOWED_DTYPES = frozenset({"float16", "float32", "float64", "int64", "int32", "uint8", "bool"})
ZLIB_LEVEL = 1
"""Fastest zlib level: within 4 % of level 6 on stylizer deltas at about half the time."""
MAX_TENSOR_BYTES = 1 << 30
"""Largest uncompressed tensor map accepted (guards against decompression bombs)."""

NamedArrays = dict[str, np.ndarray]
"""Arrays by name (model weights, deltas): the one definition every package uses."""


def digest(blob: bytes) -> str:
    """Hex SHA-256 of a tensor blob (weights, a delta), as kept in ``ModelVersion.sha256`` and ``DeltaRef.sha256``."""
    return hashlib.sha256(blob).hexdigest()


def encode_tensors(tensors: NamedArrays, compress: bool = True) -> bytes:
    """Serialize named arrays (names sorted, so equal inputs give equal bytes), zlib-compressed by default."""
    body = {}
    for name in sorted(tensors):
        array = np.asarray(tensors[name])  # not ascontiguousarray: it turns 0-d arrays into shape (1,)
        if array.dtype.name not in ALLOWED_DTYPES:
            raise ValueError(f"{name}: dtype {array.dtype} cannot be serialized")
        body[name] = {
            "dtype": array.dtype.name,
            "shape": list(array.shape),
            "data": array.astype(array.dtype.newbyteorder("<")).tobytes(order="C"),
        }
    packed = pack(body)
    if compress:
        return pack({"format": TENSORS_FORMAT, "zlib": zlib.compress(packed, ZLIB_LEVEL)})
    return pack({"format": TENSORS_FORMAT, "tensors": packed})


def decode_tensors(data: bytes) -> NamedArrays:
    """Parse :func:`encode_tensors` output; :class:`ProtocolError` on anything else."""
    body = unpack(data, "not a tensor blob")
    if not isinstance(body, dict) or body.get("format") != TENSORS_FORMAT:
        raise ProtocolError(ErrorCode.VERSION, f"expected a {TENSORS_FORMAT} blob")
    packed: Any = body.get("tensors")
    if isinstance(body.get("zlib"), bytes):
        inflater = zlib.decompressobj()
        try:
            packed = inflater.decompress(body["zlib"], MAX_TENSOR_BYTES)
        except zlib.error as exc:
            raise ProtocolError(ErrorCode.MALFORMED, f"corrupt tensor blob: {exc}") from exc
        if inflater.unconsumed_tail:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"tensor map larger than {MAX_TENSOR_BYTES} B")
    tensors = unpack(packed, "corrupt tensor map") if isinstance(packed, bytes) else None
    if not isinstance(tensors, dict):
        raise ProtocolError(ErrorCode.MALFORMED, "tensor blob holds no tensor map")
    out: NamedArrays = {}
    for name, entry in tensors.items():
        try:
            dtype = np.dtype(entry["dtype"]).newbyteorder("<")
            if entry["dtype"] not in ALLOWED_DTYPES:
                raise ValueError(f"dtype {entry['dtype']} not allowed")
            shape = tuple(int(d) for d in entry["shape"])
            array = np.frombuffer(entry["data"], dtype=dtype).reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(ErrorCode.INVALID, f"tensor {name!r}: {exc}") from exc
        out[name] = array.astype(dtype.newbyteorder("="))
    return out
