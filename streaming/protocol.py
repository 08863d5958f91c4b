"""The bytes on the wire: subjects, message dataclasses and their msgpack codec.

This module is the only place that knows the encoding. Every message is a msgpack map with the
schema version ``v`` and the message type ``t``; :func:`decode` checks both and the field types,
and raises :class:`ProtocolError` (with a machine-readable ``code``) on anything else.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union

import msgpack

SCHEMA_VERSION = 2
"""2: stylize requests, replies and key results name their result kind (a frame or affine coefficients)."""

# Subjects and stores (DESIGN.md, "Subjects and stores").
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_REGION = "local"
STYLIZE_QUEUE_GROUP = "stylizers"
STYLE_BUCKET = "mvs-styles"
DATA_CHANNEL_LABEL = "mvs"

# Federated learning (DESIGN.md): deltas on a JetStream stream, new versions announced on core NATS.
FL_DELTA_STREAM = "MVS_FL_DELTAS"
FL_GLOBAL_SUBJECT = "mvs.fl.global"
MODEL_BUCKET = "mvs-models"
MODEL_LATEST_BUCKET = "mvs-model-latest"
FL_ROUND_BUCKET = "mvs-fl-rounds"


def fl_delta_subject(region: str) -> str:
    """Where a region's workers publish their delta references."""
    return stylize_subject(region).removesuffix(".stylize").replace("mvs.", "mvs.fl.delta.", 1)


# Size limits.
MAX_MESSAGE_BYTES = 512 * 1024
"""Nothing bigger rides a subject; blobs go to the object store."""
MAX_CONTROL_BYTES = 1024
"""Largest phone -> gateway data-channel message (frame announcements, clock probes)."""
MAX_FRAME_SIDE = 4096
"""Largest width or height of a frame the system accepts."""
MAX_STYLE_BYTES = 8 * 1024 * 1024
"""Largest encoded style image accepted at signaling."""
DATA_CHANNEL_CHUNK_BYTES = 48 * 1024
"""Payload bytes per data-channel chunk: below aiortc's 64 KiB SCTP default message limit."""

RTP_TIMESTAMP_MODULUS = 1 << 32
VIDEO_CLOCK_RATE = 90_000
"""RTP clock of video streams (RFC 3551); the phone stamps pts in this unit."""
RESULT_FRAME = "frame"
"""A key's result is the stylized frame (JPEG)."""
RESULT_COEFFICIENTS = "coefficients"
"""A key's result is the stylizer's local affine colour coefficients (``streaming.coefficients``)."""
RESULT_KINDS = (RESULT_FRAME, RESULT_COEFFICIENTS)
EXACT_PTS_QUANTUM = 9
"""90 kHz pts that are multiples of this survive aiortc's VP8 encoder exactly (9 ticks = 100 us)."""


class ErrorCode:
    """Error codes carried by :class:`StylizeReply` and :class:`KeyResult`."""

    MALFORMED = "malformed"
    VERSION = "unsupported_version"
    TOO_LARGE = "too_large"
    INVALID = "invalid"
    UNKNOWN_STYLE = "unknown_style"
    OVERLOADED = "overloaded"
    DEADLINE = "deadline"
    INTERNAL = "internal"
    TIMEOUT = "timeout"
    NO_WORKERS = "no_workers"
    LOST = "lost"
    DROPPED = "dropped"


RETRYABLE_CODES = frozenset({ErrorCode.OVERLOADED, ErrorCode.INTERNAL})
"""Worker error replies the gateway retries once on another worker."""


class ProtocolError(ValueError):
    """A message that cannot be decoded; ``code`` is one of :class:`ErrorCode`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def stylize_subject(region: str) -> str:
    """The request subject of a region's stylizer workers."""
    if not region or not all(c.isalnum() or c in "-_" for c in region):
        raise ValueError(f"region must be a non-empty [A-Za-z0-9_-] name, got {region!r}")
    return f"mvs.{region}.stylize"


def workers_subject(region: str) -> str:
    """Discovery subject: every worker of the region (no queue group) answers with a :class:`WorkerInfo`."""
    return stylize_subject(region).removesuffix(".stylize") + ".workers"


Stamps = dict[str, int]
"""Monotonic timestamps (ns) of the hops a message passed, by hop name. The prefix names whose clock
a stamp was read on (:data:`WORKER_STAMP_PREFIX`, ``gw_``, ``phone_``); hops convert stamps they
forward to their own clock (``streaming.clock``)."""
WORKER_STAMP_PREFIX = "w_"


class Message:
    """Base of every wire message; ``TYPE`` names it on the wire."""

    TYPE: ClassVar[str]


@dataclass
class StylizeRequest(Message):
    """Gateway -> worker: stylize one key frame before ``budget_ms`` runs out."""

    TYPE: ClassVar[str] = "stylize"
    stream_id: str
    frame_id: int
    style_id: str
    image: bytes
    """The key frame, JPEG."""
    out_width: int
    out_height: int
    budget_ms: float
    """Time left for this attempt when sent; the worker drops the request once it has passed."""
    result: str = RESULT_FRAME
    """What the phone wants back (one of :data:`RESULT_KINDS`); a stylizer without coefficients sends a frame."""
    attempt: int = 0
    stamps: Stamps = field(default_factory=dict)


@dataclass
class StylizeReply(Message):
    """Worker -> gateway: the stylized frame (JPEG), its affine coefficients, or an error."""

    TYPE: ClassVar[str] = "stylized"
    stream_id: str
    frame_id: int
    worker_id: str
    ok: bool
    image: bytes = b""
    """The result, of kind ``kind``: a JPEG or a coefficient blob."""
    kind: str = RESULT_FRAME
    error_code: str = ""
    error: str = ""
    stamps: Stamps = field(default_factory=dict)


@dataclass
class FrameMeta(Message):
    """Phone -> gateway (data channel): a frame handed to the video encoder."""

    TYPE: ClassVar[str] = "frame"
    frame_id: int
    pts: int
    """Sender pts in 90 kHz units, before the RTP timestamp origin is added."""
    key: bool
    capture_ns: int


@dataclass
class ClockPing(Message):
    """Phone -> gateway (data channel): a clock probe sent at ``phone_ns`` (phone clock)."""

    TYPE: ClassVar[str] = "ping"
    phone_ns: int


@dataclass
class ClockPong(Message):
    """Gateway -> phone: the probe's send time echoed, with its receive and answer times on the gateway clock."""

    TYPE: ClassVar[str] = "pong"
    phone_ns: int
    gw_received_ns: int
    gw_sent_ns: int


@dataclass
class KeyResult(Message):
    """Gateway -> phone (data channel): outcome of one key frame; ``chunks`` :class:`Chunk` follow if ok."""

    TYPE: ClassVar[str] = "result"
    frame_id: int
    ok: bool
    chunks: int = 0
    size: int = 0
    kind: str = RESULT_FRAME
    """What the chunks hold: a JPEG (:data:`RESULT_FRAME`) or a coefficient blob (:data:`RESULT_COEFFICIENTS`)."""
    worker_id: str = ""
    attempts: int = 0
    error_code: str = ""
    error: str = ""
    stamps: Stamps = field(default_factory=dict)


@dataclass
class Chunk(Message):
    """One piece of a key's result (JPEG or coefficient blob) on the data channel."""

    TYPE: ClassVar[str] = "chunk"
    frame_id: int
    index: int
    data: bytes


@dataclass
class WorkerInfo(Message):
    """A worker's answer on ``mvs.<region>.workers``."""

    TYPE: ClassVar[str] = "worker"
    worker_id: str
    region: str
    model: str
    queue_depth: int
    served: int


@dataclass
class DeltaRef(Message):
    """Worker -> aggregator (``mvs.fl.delta.<region>``): a delta stored in the model bucket."""

    TYPE: ClassVar[str] = "delta"
    worker_id: str
    region: str
    base_version: int
    samples: int
    object_name: str
    loss: float = float("nan")


@dataclass
class ModelVersion(Message):
    """A global model version: stored as metadata in the KV bucket and announced on ``mvs.fl.global``."""

    TYPE: ClassVar[str] = "version"
    version: int
    object_name: str
    parent: int = -1
    contributors: list[str] = field(default_factory=list)
    samples: int = 0
    loss: float = float("nan")
    strategy: str = ""
    created_ns: int = 0


@dataclass
class RoundState(Message):
    """The aggregator's durable state of the round on ``base_version`` (KV ``mvs-fl-rounds``)."""

    TYPE: ClassVar[str] = "round"
    base_version: int
    accepted: list[bytes] = field(default_factory=list)
    """Encoded :class:`DeltaRef` of every accepted update, in arrival order."""
    opened_ns: int = 0


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        StylizeRequest,
        StylizeReply,
        FrameMeta,
        ClockPing,
        ClockPong,
        KeyResult,
        Chunk,
        WorkerInfo,
        DeltaRef,
        ModelVersion,
        RoundState,
    )
}

M = TypeVar("M", bound=Message)


def encode(message: Message) -> bytes:
    """Serialize a message (schema version and type included)."""
    body = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}  # type: ignore[arg-type]
    body["v"] = SCHEMA_VERSION
    body["t"] = message.TYPE
    return msgpack.packb(body, use_bin_type=True)


def _check_type(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_check_type(value, arg) for arg in typing.get_args(annotation))
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_check_type(v, item_type) for v in value)
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        return isinstance(value, dict) and all(
            _check_type(k, key_type) and _check_type(v, value_type) for k, v in value.items()
        )
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def decode(data: bytes, expected: type[M], max_bytes: int = MAX_MESSAGE_BYTES) -> M:
    """Parse ``data`` as a message of type ``expected``; raise :class:`ProtocolError` otherwise."""
    return typing.cast(M, decode_any(data, (expected,), max_bytes))


def decode_any(data: bytes, expected: tuple[type[Message], ...], max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Parse ``data`` as one of the ``expected`` message types."""
    if len(data) > max_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message of {len(data)} B exceeds the {max_bytes} B limit")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise ProtocolError(ErrorCode.MALFORMED, f"not a msgpack message ({type(exc).__name__}: {exc})") from exc
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.MALFORMED, f"expected a msgpack map, got {type(body).__name__}")
    version = body.pop("v", None)
    if version != SCHEMA_VERSION:
        raise ProtocolError(
            ErrorCode.VERSION, f"schema version {version!r} is not supported (this is {SCHEMA_VERSION})"
        )
    kind = body.pop("t", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None or cls not in expected:
        names = ", ".join(c.TYPE for c in expected)
        raise ProtocolError(ErrorCode.INVALID, f"unexpected message type {kind!r} (expected {names})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(body) - set(fields)
    if unknown:
        raise ProtocolError(ErrorCode.INVALID, f"{kind}: unknown fields {sorted(unknown)}")
    for name, f in fields.items():
        if name not in body:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(ErrorCode.INVALID, f"{kind}: missing field {name!r}")
            continue
        if not _check_type(body[name], hints[name]):
            raise ProtocolError(
                ErrorCode.INVALID,
                f"{kind}: field {name!r} has type {type(body[name]).__name__}, expected {hints[name]}",
            )
    return cls(**body)


def validate_request(request: StylizeRequest) -> None:
    """Raise :class:`ProtocolError` if a decoded request asks for something out of bounds."""
    if not (0 < request.out_width <= MAX_FRAME_SIDE and 0 < request.out_height <= MAX_FRAME_SIDE):
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"output size {request.out_width}x{request.out_height} outside 1..{MAX_FRAME_SIDE} per side",
        )
    if not request.image:
        raise ProtocolError(ErrorCode.INVALID, "empty key frame image")
    if request.result not in RESULT_KINDS:
        raise ProtocolError(ErrorCode.INVALID, f"result must be one of {RESULT_KINDS}, got {request.result!r}")
    if request.budget_ms <= 0:
        raise ProtocolError(ErrorCode.DEADLINE, f"budget {request.budget_ms} ms already spent")


def chunk_payload(frame_id: int, payload: bytes, chunk_bytes: int = DATA_CHANNEL_CHUNK_BYTES) -> list[Chunk]:
    """Split an encoded frame into data-channel chunks."""
    return [
        Chunk(frame_id=frame_id, index=i, data=payload[start : start + chunk_bytes])
        for i, start in enumerate(range(0, len(payload), chunk_bytes))
    ]


class ChunkAssembler:
    """Reassembles :class:`Chunk` messages announced by a :class:`KeyResult` (bounded in frames held)."""

    def __init__(self, max_frames: int = 8) -> None:
        self._max_frames = max_frames
        self._pending: dict[int, tuple[KeyResult, list[bytes | None]]] = {}
        self.discarded = 0

    def start(self, result: KeyResult) -> None:
        """Expect ``result.chunks`` chunks for ``result.frame_id``."""
        if len(self._pending) >= self._max_frames:
            oldest = min(self._pending)
            del self._pending[oldest]
            self.discarded += 1
        self._pending[result.frame_id] = (result, [None] * result.chunks)

    def add(self, chunk: Chunk) -> tuple[KeyResult, bytes] | None:
        """Store a chunk; return the header and payload once the frame is complete."""
        entry = self._pending.get(chunk.frame_id)
        if entry is None or not 0 <= chunk.index < len(entry[1]):
            self.discarded += 1
            return None
        result, parts = entry
        parts[chunk.index] = chunk.data
        if any(p is None for p in parts):
            return None
        del self._pending[chunk.frame_id]
        payload = b"".join(typing.cast(list[bytes], parts))
        if len(payload) != result.size:
            raise ProtocolError(
                ErrorCode.INVALID, f"frame {chunk.frame_id}: {len(payload)} B, announced {result.size} B"
            )
        return result, payload
