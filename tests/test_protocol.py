"""The wire codec: round trips, and a typed error with a clear message for everything else."""

from __future__ import annotations

import msgpack
import pytest

from streaming.protocol import (
    MAX_FRAME_SIDE,
    SCHEMA_VERSION,
    Chunk,
    ChunkAssembler,
    ClockPing,
    ClockPong,
    ErrorCode,
    FrameMeta,
    KeyResult,
    ModelVersion,
    ProtocolError,
    StylizeReply,
    StylizeRequest,
    chunk_payload,
    decode,
    decode_any,
    encode,
    stylize_subject,
    validate_request,
)


def _request(**overrides: object) -> StylizeRequest:
    values: dict[str, object] = dict(
        stream_id="s1",
        frame_id=7,
        style_id="abc",
        image=b"\xff\xd8jpeg",
        out_width=640,
        out_height=360,
        budget_ms=500.0,
        stamps={"gw_decoded": 123},
    )
    values.update(overrides)
    return StylizeRequest(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "message",
    [
        _request(),
        StylizeReply(stream_id="s1", frame_id=7, worker_id="w", ok=True, image=b"x" * 10, stamps={"a": 1}),
        StylizeReply(stream_id="s1", frame_id=7, worker_id="w", ok=False, error_code="deadline", error="late"),
        FrameMeta(frame_id=3, pts=9000, key=True, capture_ns=5),
        ClockPing(phone_ns=11),
        ClockPong(phone_ns=11, gw_received_ns=5, gw_sent_ns=6),
        KeyResult(frame_id=3, ok=True, chunks=2, size=10, worker_id="w", attempts=1, stamps={"x": 2}),
        Chunk(frame_id=3, index=1, data=b"abc"),
    ],
)
def test_round_trip(message: object) -> None:
    assert decode(encode(message), type(message)) == message  # type: ignore[arg-type]


def _raw(body: dict[str, object]) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def _error(data: bytes, expected: type = StylizeRequest) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(data, expected)
    return info.value


def test_malformed_bytes_are_a_typed_error() -> None:
    err = _error(b"\xc1\x00garbage")
    assert err.code == ErrorCode.MALFORMED and "msgpack" in str(err)
    assert _error(_raw([1, 2, 3])).code == ErrorCode.MALFORMED  # type: ignore[arg-type]


def test_unknown_schema_version_is_rejected() -> None:
    body = msgpack.unpackb(encode(_request()))
    body["v"] = SCHEMA_VERSION + 1
    err = _error(_raw(body))
    assert err.code == ErrorCode.VERSION and str(SCHEMA_VERSION + 1) in str(err)


def test_wrong_type_missing_unknown_and_mistyped_fields() -> None:
    assert _error(encode(FrameMeta(frame_id=1, pts=1, key=False, capture_ns=1))).code == ErrorCode.INVALID
    body = msgpack.unpackb(encode(_request()))
    del body["image"]
    assert "missing field 'image'" in str(_error(_raw(body)))
    body = msgpack.unpackb(encode(_request()))
    body["extra"] = 1
    assert "unknown fields" in str(_error(_raw(body)))
    body = msgpack.unpackb(encode(_request()))
    body["frame_id"] = "seven"
    assert "'frame_id'" in str(_error(_raw(body)))
    body = msgpack.unpackb(encode(_request()))
    body["frame_id"] = True  # bool is not an int on the wire
    assert _error(_raw(body)).code == ErrorCode.INVALID


def test_oversize_message_is_rejected_before_parsing() -> None:
    data = encode(_request(image=b"x" * 2000))
    with pytest.raises(ProtocolError) as info:
        decode(data, StylizeRequest, max_bytes=1000)
    assert info.value.code == ErrorCode.TOO_LARGE


def test_validate_request_bounds() -> None:
    validate_request(_request())
    with pytest.raises(ProtocolError) as info:
        validate_request(_request(out_width=MAX_FRAME_SIDE + 1))
    assert info.value.code == ErrorCode.TOO_LARGE
    with pytest.raises(ProtocolError):
        validate_request(_request(image=b""))
    with pytest.raises(ProtocolError) as info:
        validate_request(_request(budget_ms=0.0))
    assert info.value.code == ErrorCode.DEADLINE


def test_decode_any_picks_the_type() -> None:
    chunk = Chunk(frame_id=1, index=0, data=b"z")
    assert decode_any(encode(chunk), (KeyResult, Chunk)) == chunk


def test_chunking_reassembles_interleaved_frames() -> None:
    a, b = bytes(range(256)) * 40, b"second frame" * 300
    chunks_a, chunks_b = chunk_payload(1, a, chunk_bytes=1000), chunk_payload(2, b, chunk_bytes=1000)
    assembler = ChunkAssembler()
    assembler.start(KeyResult(frame_id=1, ok=True, chunks=len(chunks_a), size=len(a)))
    assembler.start(KeyResult(frame_id=2, ok=True, chunks=len(chunks_b), size=len(b)))
    done = {}
    for pair in zip(chunks_a, chunks_b, strict=False):
        for chunk in pair:
            out = assembler.add(decode(encode(chunk), Chunk))
            if out is not None:
                done[out[0].frame_id] = out[1]
    for chunk in chunks_a[len(chunks_b) :]:
        out = assembler.add(chunk)
        if out is not None:
            done[out[0].frame_id] = out[1]
    assert done == {1: a, 2: b}
    assert assembler.add(Chunk(frame_id=9, index=0, data=b"?")) is None and assembler.discarded == 1


def test_region_names_are_checked() -> None:
    assert stylize_subject("eu-west_1") == "mvs.eu-west_1.stylize"
    for bad in ("", "a.b", "a*", "a b"):
        with pytest.raises(ValueError):
            stylize_subject(bad)


def test_every_message_type_is_registered_once() -> None:
    from streaming.protocol import MESSAGE_TYPES, Message

    assert set(MESSAGE_TYPES.values()) == set(Message.__subclasses__())
    assert len({cls.TYPE for cls in Message.__subclasses__()}) == len(MESSAGE_TYPES)


def _code(data: bytes, cls: type = StylizeReply) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(data, cls)
    return info.value.code


def _reply_body(**fields: object) -> bytes:
    body = {"v": SCHEMA_VERSION, "t": StylizeReply.TYPE, "stream_id": "s", "frame_id": 1, "worker_id": "w", "ok": False}
    body.update(fields)
    return msgpack.packb(body, use_bin_type=True)


def test_containers_are_checked_element_by_element() -> None:
    assert _code(_reply_body(stamps={"w_sent": "late"})) == ErrorCode.INVALID  # a value of the wrong type
    assert _code(_reply_body(stamps=[1, 2])) == ErrorCode.INVALID  # not a map at all
    version = {"v": SCHEMA_VERSION, "t": ModelVersion.TYPE, "version": 1, "object_name": "o"}
    assert _code(msgpack.packb({**version, "contributors": "abc"}), ModelVersion) == ErrorCode.INVALID  # str, not list
    assert _code(msgpack.packb({**version, "contributors": ["a", 2]}), ModelVersion) == ErrorCode.INVALID
    assert decode(msgpack.packb({**version, "contributors": ["a", "b"]}), ModelVersion).contributors == ["a", "b"]


def test_a_bool_is_not_a_number_and_map_keys_must_be_strings() -> None:
    body = msgpack.unpackb(encode(_request()))
    body["budget_ms"] = True
    assert _code(msgpack.packb(body), StylizeRequest) == ErrorCode.INVALID
    assert _code(msgpack.packb({"v": SCHEMA_VERSION, "t": "stylize_reply", 7: "x"})) == ErrorCode.MALFORMED


def test_missing_fields_with_defaults_are_filled_and_required_ones_named() -> None:
    reply = decode(_reply_body(), StylizeReply)  # image, kind, error, stamps (a default factory) all absent
    assert reply.stamps == {} and reply.image == b"" and not reply.ok
    body = msgpack.unpackb(encode(_request()))
    del body["frame_id"]
    with pytest.raises(ProtocolError, match="missing field 'frame_id'") as info:
        decode(msgpack.packb(body), StylizeRequest)
    assert info.value.code == ErrorCode.INVALID
    # every field is checked, also after an absent optional one
    assert _code(_reply_body(image=b"x", kind=3)) == ErrorCode.INVALID


def test_a_message_of_exactly_the_size_limit_is_accepted() -> None:
    data = encode(_request(image=b"x" * 2000))
    assert decode(data, StylizeRequest, max_bytes=len(data)) == _request(image=b"x" * 2000)


def test_request_bounds_are_inclusive_and_each_error_has_its_code() -> None:
    for width, height in [(1, 1), (MAX_FRAME_SIDE, MAX_FRAME_SIDE), (1, MAX_FRAME_SIDE)]:
        validate_request(_request(out_width=width, out_height=height))
    validate_request(_request(budget_ms=0.5))  # half a millisecond left is still a budget
    for bad in [dict(out_width=0), dict(out_height=0), dict(out_height=MAX_FRAME_SIDE + 1)]:
        with pytest.raises(ProtocolError) as info:
            validate_request(_request(**bad))
        assert info.value.code == ErrorCode.TOO_LARGE
    for bad, text in [(dict(image=b""), "empty"), (dict(result="pixels"), "result")]:
        with pytest.raises(ProtocolError, match=text) as info:
            validate_request(_request(**bad))
        assert info.value.code == ErrorCode.INVALID


def test_the_assembler_counts_what_it_throws_away() -> None:
    assembler = ChunkAssembler(max_frames=2)
    for frame_id in (1, 2):
        assembler.start(KeyResult(frame_id=frame_id, ok=True, chunks=2, size=2))
    assert assembler.add(Chunk(frame_id=1, index=2, data=b"x")) is None  # index past the announced chunks
    assert assembler.discarded == 1
    assembler.start(KeyResult(frame_id=3, ok=True, chunks=1, size=1))  # a third frame: the oldest (1) goes
    assert assembler.discarded == 2
    assert assembler.add(Chunk(frame_id=1, index=0, data=b"x")) is None and assembler.discarded == 3
    assert assembler.add(Chunk(frame_id=3, index=0, data=b"z")) == (
        KeyResult(frame_id=3, ok=True, chunks=1, size=1),
        b"z",
    )
    assembler.add(Chunk(frame_id=2, index=0, data=b"a"))
    with pytest.raises(ProtocolError, match="announced 2 B") as info:
        assembler.add(Chunk(frame_id=2, index=1, data=b"bc"))
    assert info.value.code == ErrorCode.INVALID
