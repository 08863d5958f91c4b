"""The bytes on the wire: subjects, message dataclasses, their msgpack codec and the signaling JSON.

This module is the only place that knows the encodings. Every message is a msgpack map with the
schema version ``v`` and the message type ``t``; :func:`decode` checks both and the field types,
and raises :class:`ProtocolError` (with a machine-readable ``code``) on anything else.

Unknown fields: within one schema version a decoder ignores fields it does not know, so a newer sender
can add optional information, except for the messages marked ``STRICT``: a :class:`StylizeRequest` asks for
work (ignoring a field could silently compute something other than what was asked), and the federated
records (:class:`DeltaRef`, :class:`ModelVersion`, :class:`RoundState`) are persisted and rewritten, so an
ignored field would be lost on the next write. Those reject unknown fields. The signaling bodies
(``POST /offer`` and its answer) are JSON: :func:`encode_offer` / :func:`decode_offer` and
:func:`encode_answer` / :func:`decode_answer`.

Browser clients (``streaming/gateway/static/``) speak the same msgpack through the vendored
``@msgpack/msgpack`` library; what that means in JavaScript, decided here once:

- Integers must be msgpack integers: a JS number encodes as one only when ``Number.isInteger`` holds, so
  ``performance.now() * 1e6`` is sent as ``Math.round(performance.now() * 1e6)`` (an integer ns count stays
  exact below 2**53 ns, 104 days of page life). Booleans are ``true``/``false``, never ``0``/``1``.
- The gateway's own stamps are monotonic ns since its host booted, above 2**53 after 104 days of uptime,
  and msgpack sends any integer above 2**32 as a 64-bit one: a JS client decodes with ``useBigInt64: true``
  (such integers arrive as ``BigInt``, exact) and subtracts stamps of one clock before converting to Number.
- A phone message the gateway rejects (wrong type, wrong field type, text frame, too large) is answered with a
  :class:`ChannelError` naming the problem, so a client developer sees why instead of a silent drop.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import secrets
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, TypeVar, Union

import msgpack

SCHEMA_VERSION = 2
"""2: stylize requests, replies and key results name their result kind (a frame or affine coefficients)."""

# Subjects and stores (ARCHITECTURE.md, "Subjects and stores").
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_REGION = "local"
STYLIZE_QUEUE_GROUP = "stylizers"
STYLE_BUCKET = "mvs-styles"
DATA_CHANNEL_LABEL = "mvs"
GATEWAY_INSTANCE_HEADER = "X-MVS-Gateway-Instance"
"""HTTP header of the gateway's ``/offer`` answer and ``/livez``: an id drawn when the process starts, so that a
phone whose gateway fell silent can tell a restarted gateway on the same address from its own (mobile_sim.link)."""

# Federated learning (ARCHITECTURE.md): deltas on a JetStream stream, new versions announced on core NATS.
FL_DELTA_STREAM = "MVS_FL_DELTAS"
FL_DELTA_SUBJECTS = "mvs.fl.delta.>"
"""What the delta stream keeps: every region's :func:`fl_delta_subject`."""
FL_GLOBAL_SUBJECT = "mvs.fl.global"
MODEL_BUCKET = "mvs-models"
"""Global versions only: written by the aggregator alone (NATS permissions), read by every worker."""
DELTA_BUCKET_PREFIX = "mvs-deltas"
"""Deltas live in one object store bucket per region (:func:`delta_bucket`): only that region's workers may write it."""
MODEL_LATEST_BUCKET = "mvs-model-latest"
FL_ROUND_BUCKET = "mvs-fl-rounds"


def fl_delta_subject(region: str, worker_id: str) -> str:
    """Where worker ``worker_id`` of ``region`` publishes its delta references: NATS lets each worker publish on
    its own subject only, so the subject attests who sent a delta."""
    return fl_region_delta_subjects(region).replace("*", token(worker_id))


def fl_region_delta_subjects(region: str) -> str:
    """Every :func:`fl_delta_subject` of ``region`` (a subject pattern)."""
    return stylize_subject(region).removesuffix(".stylize").replace("mvs.", "mvs.fl.delta.", 1) + ".*"


def token(name: str) -> str:
    """``name`` if it is one subject token of ``[A-Za-z0-9_-]`` (ValueError otherwise)."""
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"a name in a subject must be a non-empty [A-Za-z0-9_-] token, got {name!r}")
    return name


def delta_bucket(region: str) -> str:
    """The object store bucket of a region's deltas.

    One bucket per region (its workers may write no other), and in it each worker's objects under subjects that
    carry its id (``streaming.buckets.Bucket``'s ``owner``): NATS permissions cannot enforce an object name prefix
    (an object's chunks go to ``$O.<bucket>.C.<random nuid>`` and its metadata to ``$O.<bucket>.M.<base64 of the
    name>``; subject wildcards match whole tokens only), but they can a token ``$O.<bucket>.C|M.<worker id>.*``."""
    return f"{DELTA_BUCKET_PREFIX}-{region}"


def delta_object_prefix(region: str, worker_id: str) -> str:
    """Names of a worker's delta objects start with this (in its region's :func:`delta_bucket`)."""
    return f"delta/{region}/{worker_id}/"


def delta_object_owner(region: str, name: str) -> str:
    """The worker whose delta object of region ``region`` is named ``name`` (:func:`delta_object_prefix`);
    ValueError for a name that is not one."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "delta" or parts[1] != region or not parts[3]:
        raise ValueError(f"{name[:80]!r} is not a delta object name of region {region!r}")
    return token(parts[2])


# Size limits.
MAX_MESSAGE_BYTES = 512 * 1024
"""Nothing bigger rides a subject; blobs go to the object store."""
MAX_CONTROL_BYTES = 1024
"""Largest phone -> gateway data-channel message (frame announcements, clock probes, latency reports)."""
MAX_REPORTED_LATENCY_MS = 60_000.0
"""Longest key-frame latency part a phone may report (:class:`KeyLatency`); beyond it the report is invalid."""
MAX_FRAME_SIDE = 4096
"""Largest width or height of a frame the system accepts."""
MAX_RESULT_PIXELS = 3840 * 2160
"""Largest result (width x height) a key may ask for: 4K UHD."""
MAX_RESULT_AREA_RATIO = 4
"""A key's result may have at most this many times the key frame's pixels (twice its width and height): a worker's
time grows with the result (issue 22: a 64x64 stream asking for 4096x4096 results cost 0.74 s per key, ~300x)."""
MAX_STYLE_BYTES = 8 * 1024 * 1024
"""Largest encoded style image accepted at signaling."""
MAX_OFFER_FIELDS_BYTES = 256 * 1024
"""Largest ``POST /offer`` body apart from its style's base64 (the SDP is at most 32 KB): what is JSON-parsed in one
call (~1 ms); the style's base64 is cut out of a bigger body and decoded in :data:`BASE64_CHUNK_CHARS` pieces."""
BASE64_CHUNK_CHARS = 256 * 1024
"""Base64 characters decoded per call (a few ms): a thread decoding an 8 MB style lets the event loop run between
chunks (one call over 11 MB held the interpreter ~150 ms)."""
MAX_ERROR_CHARS = 256
"""Longest error text sent back or logged: an error may quote its input, never at length (a 200 KB bad field name
once came back as an 800 KB reply)."""
MAX_QUOTED_CHARS = 40
"""Longest piece of input (a field name, a value) quoted inside an error text."""
MAX_ID_CHARS = 128
"""Longest stream or style id a stylize request may carry (a reply echoes them)."""
MAX_STAMPS = 32
"""Most hop timestamps a message may carry (a reply echoes them)."""
DATA_CHANNEL_CHUNK_BYTES = 48 * 1024
"""Payload bytes per data-channel chunk: below aiortc's 64 KiB SCTP default message limit."""

RTP_TIMESTAMP_MODULUS = 1 << 32
VIDEO_CLOCK_RATE = 90_000
"""RTP clock of video streams (RFC 3551); the phone stamps pts in this unit."""


class WireEnum(str, Enum):
    """A string enum whose members are their wire value everywhere (msgpack, JSON, logs, f-strings)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class ResultKind(WireEnum):
    """What a key's result holds."""

    FRAME = "frame"
    """The stylized frame (JPEG)."""
    COEFFICIENTS = "coefficients"
    """The stylizer's local affine colour coefficients (``streaming.coefficients``)."""


RESULT_KIND_VALUES = tuple(kind.value for kind in ResultKind)
EXACT_PTS_QUANTUM = 9
"""90 kHz pts that are multiples of this survive aiortc's VP8 encoder exactly (9 ticks = 100 us)."""


class ErrorCode(WireEnum):
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


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    note = f"... [{len(text) - limit} more chars]"
    return text[: max(0, limit - len(note))] + note


def quote(value: object) -> str:
    """``repr(value)``, short enough to put inside an error text."""
    return clip(repr(value), MAX_QUOTED_CHARS)


class ProtocolError(ValueError):
    """A message that cannot be decoded; ``code`` is one of :class:`ErrorCode`; the text is clipped to
    :data:`MAX_ERROR_CHARS` whatever it quotes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(clip(message))
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
"""Monotonic timestamps (ns) of the hops a message passed, by hop name (:class:`Stamp`). The prefix names
whose clock a stamp was read on (:data:`WORKER_STAMP_PREFIX`, ``gw_``,
:data:`PHONE_STAMP_PREFIX`); hops convert stamps they forward to their own clock (``streaming.clock``)."""
WORKER_STAMP_PREFIX = "w_"
PHONE_STAMP_PREFIX = "phone_"


class Stamp(WireEnum):
    """The hop timestamps of a key frame, in the order it passes them."""

    PHONE_CAPTURE = "phone_capture"
    """The phone captured the frame."""
    GW_DECODED = "gw_decoded"
    """The gateway decoded it from the video stream."""
    GW_SENT = "gw_sent"
    """The gateway sent the stylize request (each attempt)."""
    W_RECEIVED = "w_received"
    """A worker received the request."""
    W_START = "w_start"
    """The worker's inference thread took it from the queue."""
    W_INFER_START = "w_infer_start"
    """The stylizer started (JPEG decoded)."""
    W_INFER_END = "w_infer_end"
    """The stylizer finished."""
    W_SENT = "w_sent"
    """The worker sent the reply."""
    GW_REPLY = "gw_reply"
    """The gateway received the reply."""
    PHONE_RECEIVED = "phone_received"
    """The phone received the result header."""
    PHONE_DECODED = "phone_decoded"
    """The phone decoded the result."""


class Message:
    """Base of every wire message; ``TYPE`` names it on the wire; ``STRICT`` ones reject unknown fields."""

    TYPE: ClassVar[str]
    STRICT: ClassVar[bool] = False


@dataclass
class StylizeRequest(Message):
    """Gateway -> worker: stylize one key frame before ``budget_ms`` runs out."""

    TYPE: ClassVar[str] = "stylize"
    STRICT: ClassVar[bool] = True
    stream_id: str
    frame_id: int
    style_id: str
    image: bytes
    """The key frame, JPEG."""
    out_width: int
    out_height: int
    budget_ms: float
    """Time left for this attempt when sent; the worker drops the request once it has passed."""
    result: str = ResultKind.FRAME
    """What the phone wants back (a :class:`ResultKind` value); a stylizer without coefficients sends a frame."""
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
    kind: str = ResultKind.FRAME
    error_code: str = ""
    error: str = ""
    stamps: Stamps = field(default_factory=dict)


@dataclass
class FrameMeta(Message):
    """Phone -> gateway (data channel): a frame handed to the video encoder."""

    TYPE: ClassVar[str] = "frame"
    frame_id: int
    pts: int
    """Sender pts in 90 kHz units, before the RTP timestamp origin is added (a browser sends its RTP timestamp,
    origin included, read through Encoded Transform: the gateway needs only differences, modulo 2**32)."""
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


LATENCY_PARTS = ("uplink", "queue", "inference", "downlink", "round_trip")
"""How a key frame's round trip splits (ms, from the hop stamps): uplink, capture -> decoded at the gateway; queue,
-> inference starts on a worker (gateway JPEG, NATS hop, worker queue); inference, the stylizer; downlink,
-> result decoded on the phone; round_trip, capture -> result decoded."""


@dataclass
class KeyLatency(Message):
    """Phone -> gateway (data channel): one key frame's round trip as the phone measured it, split into
    :data:`LATENCY_PARTS` (ms, each in 0..:data:`MAX_REPORTED_LATENCY_MS`), so the site sees the user's latency."""

    TYPE: ClassVar[str] = "latency"
    frame_id: int
    parts_ms: dict[str, float]


def validate_key_latency(report: KeyLatency) -> None:
    """Raise :class:`ProtocolError` unless ``report`` names only :data:`LATENCY_PARTS`, each a bounded time."""
    unknown = sorted(set(report.parts_ms) - set(LATENCY_PARTS))
    if unknown:
        raise ProtocolError(ErrorCode.INVALID, f"latency: unknown parts {unknown} (known: {list(LATENCY_PARTS)})")
    for part, value in report.parts_ms.items():
        if not 0.0 <= value <= MAX_REPORTED_LATENCY_MS:
            raise ProtocolError(ErrorCode.INVALID, f"latency: {part} = {value} ms outside 0..{MAX_REPORTED_LATENCY_MS}")


@dataclass
class ChannelError(Message):
    """Gateway -> phone (data channel): a message from the phone was rejected and ignored (session unchanged)."""

    TYPE: ClassVar[str] = "error"
    code: str
    """An :class:`ErrorCode` value."""
    error: str
    """What was wrong, at most :data:`MAX_ERROR_CHARS` characters."""

    @classmethod
    def of(cls, exc: ProtocolError) -> ChannelError:
        """The answer to a message that raised ``exc`` (its text clipped to :data:`MAX_ERROR_CHARS`)."""
        return cls(code=str(exc.code), error=clip(str(exc)))


@dataclass
class KeyResult(Message):
    """Gateway -> phone (data channel): outcome of one key frame; ``chunks`` :class:`Chunk` follow if ok."""

    TYPE: ClassVar[str] = "result"
    frame_id: int
    ok: bool
    chunks: int = 0
    size: int = 0
    kind: str = ResultKind.FRAME
    """What the chunks hold: a JPEG (:attr:`ResultKind.FRAME`) or coefficients (:attr:`ResultKind.COEFFICIENTS`)."""
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
    STRICT: ClassVar[bool] = True
    worker_id: str
    region: str
    base_version: int
    samples: int
    object_name: str
    loss: float = float("nan")
    sha256: str = ""
    """Hex SHA-256 of the delta blob: the aggregator refuses a blob that differs, when the reference arrives and
    again when its round closes (a worker may rewrite its region's bucket in between)."""


@dataclass
class ModelVersion(Message):
    """A global model version: stored as metadata in the KV bucket and announced on ``mvs.fl.global``."""

    TYPE: ClassVar[str] = "version"
    STRICT: ClassVar[bool] = True
    version: int
    object_name: str
    parent: int = -1
    contributors: list[str] = field(default_factory=list)
    samples: int = 0
    loss: float = float("nan")
    strategy: str = ""
    created_ns: int = 0
    sha256: str = ""
    """Hex SHA-256 of the stored weights blob: a worker or the aggregator refuses weights that do not match it."""


@dataclass
class RoundState(Message):
    """The aggregator's durable state of the round on ``base_version`` (KV ``mvs-fl-rounds``)."""

    TYPE: ClassVar[str] = "round"
    STRICT: ClassVar[bool] = True
    base_version: int
    accepted: list[bytes] = field(default_factory=list)
    """Encoded :class:`DeltaRef` of every accepted update, in arrival order."""
    opened_ns: int = 0
    """``time.monotonic_ns()`` of the aggregator process when the round opened (informational)."""
    first_update_ns: int = 0
    """Wall-clock ``time.time_ns()`` when the round's first delta was accepted (0: none yet); the round timeout
    counts from here. Wall clock, not monotonic: the state outlives the process and may be resumed on another
    host."""
    consumed: list[bytes] = field(default_factory=list)
    """Encoded :class:`DeltaRef` of the deltas aggregated by closed rounds whose base may still be a delta's base: a
    replay of one is a duplicate, not a new delta."""
    to_delete: list[bytes] = field(default_factory=list)
    """Encoded :class:`DeltaRef` whose blobs are still to be deleted (written before any is, so a restart finishes)."""


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        StylizeRequest,
        StylizeReply,
        FrameMeta,
        ClockPing,
        ClockPong,
        ChannelError,
        KeyLatency,
        KeyResult,
        Chunk,
        WorkerInfo,
        DeltaRef,
        ModelVersion,
        RoundState,
    )
}

M = TypeVar("M", bound=Message)


def pack(value: object) -> bytes:
    """msgpack of ``value`` (bytes as msgpack bin): the one serializer of the project's binary formats, the messages
    here and the tensor blobs of :mod:`streaming.tensors` (no other module calls msgpack: tests/test_layering.py)."""
    return bytes(msgpack.packb(value, use_bin_type=True))


def unpack(data: bytes, what: str) -> Any:
    """The value :func:`pack` wrote (maps with str keys only); :class:`ProtocolError` ``malformed``, its text
    starting with ``what``, if ``data`` is not msgpack."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise ProtocolError(ErrorCode.MALFORMED, f"{what} ({type(exc).__name__}: {exc})") from exc


def encode(message: Message) -> bytes:
    """Serialize a message (schema version and type included)."""
    body = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}  # type: ignore[arg-type]
    body["v"] = SCHEMA_VERSION
    body["t"] = message.TYPE
    return pack(body)


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
    body = unpack(data, "not a msgpack message")
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.MALFORMED, f"expected a msgpack map, got {type(body).__name__}")
    version = body.pop("v", None)
    if version != SCHEMA_VERSION:
        raise ProtocolError(
            ErrorCode.VERSION, f"schema version {quote(version)} is not supported (this is {SCHEMA_VERSION})"
        )
    kind = body.pop("t", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None or cls not in expected:
        names = ", ".join(c.TYPE for c in expected)
        raise ProtocolError(ErrorCode.INVALID, f"unexpected message type {quote(kind)} (expected {names})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(body) - set(fields)
    if unknown and cls.STRICT:
        names = ", ".join(quote(name) for name in sorted(map(str, unknown))[:3])
        raise ProtocolError(ErrorCode.INVALID, f"{kind}: unknown fields {names} ({len(unknown)} in all)")
    for name in unknown:
        del body[name]
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
    if request.result not in RESULT_KIND_VALUES:
        raise ProtocolError(
            ErrorCode.INVALID, f"result must be one of {RESULT_KIND_VALUES}, got {quote(request.result)}"
        )
    if len(request.stream_id) > MAX_ID_CHARS or len(request.style_id) > MAX_ID_CHARS:
        raise ProtocolError(ErrorCode.INVALID, f"stream_id and style_id are at most {MAX_ID_CHARS} characters")
    if len(request.stamps) > MAX_STAMPS or any(len(name) > MAX_QUOTED_CHARS for name in request.stamps):
        raise ProtocolError(ErrorCode.INVALID, f"at most {MAX_STAMPS} stamps with names of {MAX_QUOTED_CHARS} chars")
    if request.budget_ms <= 0:
        raise ProtocolError(ErrorCode.DEADLINE, f"budget {request.budget_ms} ms already spent")


def check_result_size(key_size: tuple[int, int], out_size: tuple[int, int]) -> None:
    """Raise :class:`ProtocolError` (``too_large``) when a result of ``out_size`` (width, height) for a key frame of
    ``key_size`` exceeds :data:`MAX_RESULT_PIXELS` or :data:`MAX_RESULT_AREA_RATIO` times the key's pixels."""
    (key_w, key_h), (out_w, out_h) = key_size, out_size
    if out_w * out_h > MAX_RESULT_PIXELS:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"result of {out_w}x{out_h} exceeds {MAX_RESULT_PIXELS} pixels")
    if out_w * out_h > MAX_RESULT_AREA_RATIO * key_w * key_h:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"result of {out_w}x{out_h} exceeds {MAX_RESULT_AREA_RATIO}x the pixels of the {key_w}x{key_h} key frame",
        )


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


@dataclass
class Offer:
    """Phone -> gateway, ``POST /offer`` (JSON): the phone's SDP offer and what it wants stylized.

    JSON body: ``{"type": "offer", "sdp": "v=0...", "style": <base64 image>, "result"?: "frame" |
    "coefficients", "out_width"?, "out_height"?}``; unknown keys are ignored.
    """

    sdp: str
    style: bytes
    """The style image (JPEG or PNG), at most :data:`MAX_STYLE_BYTES`."""
    result: str = ResultKind.FRAME
    out_size: tuple[int, int] | None = None
    """(width, height) of the results; None: the key frames' own size."""


@dataclass
class Answer:
    """Gateway -> phone, the ``POST /offer`` reply (JSON ``{"type": "answer", "sdp", "stream_id", "style_id"}``)."""

    sdp: str
    stream_id: str
    style_id: str


def encode_offer(offer: Offer) -> bytes:
    """The JSON body of ``POST /offer``."""
    body: dict[str, Any] = {
        "type": "offer",
        "sdp": offer.sdp,
        "style": base64.b64encode(offer.style).decode("ascii"),
        "result": str(offer.result),
    }
    if offer.out_size is not None:
        body["out_width"], body["out_height"] = offer.out_size
    return json.dumps(body).encode()


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.MALFORMED, "body must be a JSON object")
    return data


def decode_offer(body: bytes) -> Offer:
    """Parse a ``POST /offer`` body; :class:`ProtocolError` with a clear message if it is not one.

    Checks the JSON shape, the base64 and size of the style and the result options; what the SDP and
    the style image contain is checked by the gateway, which owns the WebRTC stack and the image codecs. No single
    call takes more than a few milliseconds of an 11 MB body (:func:`_split_style`, :func:`_style_bytes`), so a
    thread running this holds the interpreter only briefly at a time.
    """
    data, style_b64 = _split_style(body)
    if data.get("type") != "offer" or not isinstance(data.get("sdp"), str) or not data["sdp"].startswith("v="):
        raise ProtocolError(ErrorCode.INVALID, 'expected {"type": "offer", "sdp": "v=0...", "style": ...}')
    if not isinstance(style_b64, (str, bytes)):
        raise ProtocolError(ErrorCode.INVALID, "missing 'style': a base64-encoded style image")
    if len(style_b64) > 4 * (MAX_STYLE_BYTES // 3 + 1):
        raise ProtocolError(ErrorCode.TOO_LARGE, f"style image exceeds {MAX_STYLE_BYTES} B")
    try:
        style = _style_bytes(style_b64)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(ErrorCode.INVALID, f"'style' is not base64: {exc}") from exc
    if len(style) > MAX_STYLE_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"style image of {len(style)} B exceeds {MAX_STYLE_BYTES} B")
    out_size = None
    if "out_width" in data or "out_height" in data:
        w, h = data.get("out_width"), data.get("out_height")
        valid = all(type(v) is int and 0 < v <= MAX_FRAME_SIDE for v in (w, h))
        if not valid:
            raise ProtocolError(ErrorCode.INVALID, f"out_width/out_height must be integers in 1..{MAX_FRAME_SIDE}")
        out_size = (typing.cast(int, w), typing.cast(int, h))
        if out_size[0] * out_size[1] > MAX_RESULT_PIXELS:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"out_width x out_height exceeds {MAX_RESULT_PIXELS} pixels")
    result = data.get("result", ResultKind.FRAME.value)
    if result not in RESULT_KIND_VALUES:
        raise ProtocolError(
            ErrorCode.INVALID, f"'result' must be one of {list(RESULT_KIND_VALUES)}, got {quote(result)}"
        )
    return Offer(sdp=data["sdp"], style=style, result=ResultKind(result), out_size=out_size)


_STYLE_VALUE = re.compile(rb'"style"[ \t\r\n]{0,16}:[ \t\r\n]{0,16}"')


def _split_style(body: bytes) -> tuple[dict[str, Any], object]:
    """An offer body's JSON object and its ``style`` value (base64, or whatever else it is).

    A body of at most :data:`MAX_OFFER_FIELDS_BYTES` is parsed whole. In a bigger one the style's base64 is cut out
    (found with ``bytes.find``, memchr-fast) and the rest parsed with a random placeholder in its place: the parse
    giving the placeholder back as ``style`` proves the cut was exactly that string's contents, which the strict
    base64 decoding then proves held no escape, so the result is the whole body's parse. Anything else that big
    (a second large field, an escaped or duplicated style) is refused."""
    if len(body) <= MAX_OFFER_FIELDS_BYTES:
        data = _json_object(body)
        return data, data.get("style")
    too_large = ProtocolError(
        ErrorCode.TOO_LARGE, f"offer of {len(body)} B: only its style may make it exceed {MAX_OFFER_FIELDS_BYTES} B"
    )
    start = end = -1
    at = body.find(b'"style"')
    while at >= 0:  # the first "style": "... whose string is all but MAX_OFFER_FIELDS_BYTES of the body
        match = _STYLE_VALUE.match(body, at)
        if match is not None:
            start, end = match.end(), body.find(b'"', match.end())
            if end >= 0 and len(body) - (end - start) <= MAX_OFFER_FIELDS_BYTES:
                break
        at = body.find(b'"style"', at + 1)
    else:
        raise too_large
    placeholder = secrets.token_hex(16)
    data = _json_object(body[:start] + placeholder.encode() + body[end:])
    if data.get("style") != placeholder:
        raise ProtocolError(ErrorCode.INVALID, "'style' must be one plain base64 string")
    return data, body[start:end]


def _style_bytes(text: str | bytes) -> bytes:
    """Strict base64 (the alphabet, padding only at the end) decoded :data:`BASE64_CHUNK_CHARS` at a time."""
    data = text.encode("ascii") if isinstance(text, str) else text
    pieces = []
    for at in range(0, len(data), BASE64_CHUNK_CHARS):
        chunk = data[at : at + BASE64_CHUNK_CHARS]
        if at + BASE64_CHUNK_CHARS < len(data) and b"=" in chunk:
            raise binascii.Error("padding before the end")
        pieces.append(binascii.a2b_base64(chunk, strict_mode=True))
    return b"".join(pieces)


def encode_answer(answer: Answer) -> bytes:
    """The JSON body of a ``POST /offer`` reply."""
    return json.dumps(
        {"type": "answer", "sdp": answer.sdp, "stream_id": answer.stream_id, "style_id": answer.style_id}
    ).encode()


def decode_answer(body: bytes) -> Answer:
    """Parse the gateway's answer; :class:`ProtocolError` if it is not one."""
    data = _json_object(body)
    fields = ("sdp", "stream_id", "style_id")
    if data.get("type") != "answer" or not all(isinstance(data.get(name), str) for name in fields):
        raise ProtocolError(ErrorCode.INVALID, 'expected {"type": "answer", "sdp", "stream_id", "style_id"}')
    return Answer(sdp=data["sdp"], stream_id=data["stream_id"], style_id=data["style_id"])
