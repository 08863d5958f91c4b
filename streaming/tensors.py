"""Named tensors (model weights, deltas) as bytes: msgpack of dtype, shape and raw little-endian data.

No pickle, so a blob from the network cannot run code; numpy only, so the gateway needs no torch.
Blobs travel through the JetStream object store, never on a subject.
"""

from __future__ import annotations

import msgpack
import numpy as np

from streaming.protocol import ErrorCode, ProtocolError

TENSORS_FORMAT = "mvs-tensors/1"
ALLOWED_DTYPES = frozenset({"float16", "float32", "float64", "int64", "int32", "uint8", "bool"})

NamedArrays = dict[str, np.ndarray]


def encode_tensors(tensors: NamedArrays) -> bytes:
    """Serialize named arrays (names sorted, so equal inputs give equal bytes)."""
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
    return msgpack.packb({"format": TENSORS_FORMAT, "tensors": body}, use_bin_type=True)


def decode_tensors(data: bytes) -> NamedArrays:
    """Parse :func:`encode_tensors` output; :class:`ProtocolError` on anything else."""
    try:
        body = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise ProtocolError(ErrorCode.MALFORMED, f"not a tensor blob ({type(exc).__name__}: {exc})") from exc
    if not isinstance(body, dict) or body.get("format") != TENSORS_FORMAT or not isinstance(body.get("tensors"), dict):
        raise ProtocolError(ErrorCode.VERSION, f"expected a {TENSORS_FORMAT} blob")
    out: NamedArrays = {}
    for name, entry in body["tensors"].items():
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
