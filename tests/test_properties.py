"""Properties over generated inputs (hypothesis): the wire codec, frame ids under loss and reordering, and the
aggregation rules against their defining formulas."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.strategies import CoordinateMedian, FedAvg, ServerLearningRate, TrimmedMean, Update
from mobile_sim.link import SenderPts
from streaming.gateway.frame_ids import FrameIdMapper
from streaming.protocol import (
    MESSAGE_TYPES,
    RTP_TIMESTAMP_MODULUS,
    ChunkAssembler,
    ErrorCode,
    KeyResult,
    Message,
    ProtocolError,
    chunk_payload,
    decode,
    decode_any,
    encode,
)

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Enough examples to find the edge cases these properties have, few enough to keep the suite fast."""

# --- the wire codec ----------------------------------------------------------------------------------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FINITE = st.floats(allow_nan=False)  # NaN != NaN: equality would fail for a correct codec
TEXT = st.text(max_size=20)


def _strategy(annotation: Any) -> st.SearchStrategy[Any]:
    """Values of a message field's type, as the codec must carry them."""
    origin = typing.get_origin(annotation)
    if origin is list:
        return st.lists(_strategy(typing.get_args(annotation)[0]), max_size=4)
    if origin is dict:
        key, value = typing.get_args(annotation)
        return st.dictionaries(_strategy(key), _strategy(value), max_size=4)
    leaves: dict[Any, st.SearchStrategy[Any]] = {
        int: INT64,
        float: FINITE,
        str: TEXT,
        bytes: st.binary(max_size=64),
        bool: st.booleans(),
    }
    return leaves[annotation]


def _messages(cls: type[Message]) -> st.SearchStrategy[Message]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: _strategy(hints[f.name]) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return st.builds(cls, **fields)


ANY_MESSAGE = st.sampled_from(sorted(MESSAGE_TYPES.values(), key=lambda c: c.TYPE)).flatmap(_messages)


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(ANY_MESSAGE)
def test_every_message_survives_the_wire(message: Message) -> None:
    data = encode(message)
    assert decode(data, type(message)) == message
    assert decode_any(data, tuple(MESSAGE_TYPES.values())) == message  # the type on the wire picks the class


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(ANY_MESSAGE, st.text(min_size=1, max_size=8).filter(lambda k: k not in ("v", "t")), INT64)
def test_unknown_fields_are_ignored_unless_the_message_is_strict(message: Message, name: str, value: int) -> None:
    body = msgpack.unpackb(encode(message))
    if name in body:
        return
    body[name] = value
    data = msgpack.packb(body, use_bin_type=True)
    if type(message).STRICT:
        with pytest.raises(ProtocolError) as error:
            decode(data, type(message))
        assert error.value.code == ErrorCode.INVALID
    else:
        assert decode(data, type(message)) == message


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(ANY_MESSAGE, st.data())
def test_a_truncated_message_is_a_protocol_error(message: Message, data: st.DataObject) -> None:
    wire = encode(message)
    cut = data.draw(st.integers(min_value=0, max_value=len(wire) - 1))
    with pytest.raises(ProtocolError):
        decode(wire[:cut], type(message))


@PROPERTY_SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_fail_with_a_code(data: bytes) -> None:
    try:
        decode_any(data, tuple(MESSAGE_TYPES.values()))
    except ProtocolError as exc:
        assert exc.code in set(ErrorCode)


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=700), st.randoms(use_true_random=False))
def test_chunks_in_any_order_reassemble_the_payload(payload: bytes, chunk_bytes: int, rng: Any) -> None:
    chunks = chunk_payload(3, payload, chunk_bytes)
    assert all(0 < len(c.data) <= chunk_bytes for c in chunks) or payload == b""
    assembler = ChunkAssembler()
    assembler.start(KeyResult(frame_id=3, ok=True, chunks=len(chunks), size=len(payload)))
    rng.shuffle(chunks)
    results = [assembler.add(c) for c in chunks]
    if not chunks:
        return
    assert results[:-1] == [None] * (len(chunks) - 1)
    assert results[-1] is not None and results[-1][1] == payload


# --- frame ids ---------------------------------------------------------------------------------------------------

FPS = 30.0
FRAMES = 120


@st.composite
def _streams(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """(sender pts of every frame, the decode order of the frames that arrive): the phone's own dithered pts on a
    random origin, random losses (the first frames among them), and neighbours swapped on the way."""
    origin = draw(st.integers(min_value=0, max_value=RTP_TIMESTAMP_MODULUS - 1))
    sender = SenderPts(FPS, FRAMES, seed=draw(st.integers(min_value=0, max_value=2**32)))
    pts = [(origin + sender(i)) % RTP_TIMESTAMP_MODULUS for i in range(FRAMES)]
    lost = draw(st.sets(st.integers(0, FRAMES - 1), max_size=FRAMES // 3))
    order = [i for i in range(FRAMES) if i not in lost]
    for position in draw(st.lists(st.integers(0, max(0, len(order) - 2)), max_size=10)):
        if len(order) > 1:
            order[position], order[position + 1] = order[position + 1], order[position]
    return pts, order


def _received_pts(pts: list[int], order: list[int]) -> list[int]:
    """What aiortc's receiver yields: pts re-based on the first frame decoded, 2**32 added to a late frame."""
    first, newest, out = pts[order[0]], -1, []
    for frame_id in order:
        late = frame_id < newest
        newest = max(newest, frame_id)
        out.append((pts[frame_id] - first) % RTP_TIMESTAMP_MODULUS + (RTP_TIMESTAMP_MODULUS if late else 0))
    return out


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(_streams())
def test_frame_ids_are_never_wrong_under_loss_and_reordering(stream: tuple[list[int], list[int]]) -> None:
    pts, order = stream
    if not order:
        return
    mapper = FrameIdMapper()
    received = dict(zip(order, _received_pts(pts, order), strict=True))
    announced = 0
    for position, frame_id in enumerate(order):
        while announced <= max(order[: position + 1]):  # the data channel keeps ahead of the video
            mapper.announce(announced, pts[announced])
            announced += 1
        mapper.observe(received[frame_id])
        located = mapper.locate(received[frame_id])
        assert located in (None, frame_id)


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(st.integers(min_value=0, max_value=2**32))
def test_sender_pts_never_repeat_a_gap_twice_in_a_row(seed: int) -> None:
    pts = [SenderPts(FPS, FRAMES, seed)(i) for i in range(FRAMES)]
    gaps = [b - a for a, b in zip(pts, pts[1:], strict=False)]
    assert all(g != h for g, h in zip(gaps, gaps[1:], strict=False)), gaps


def test_the_third_frame_locks_for_a_seed_whose_dither_once_repeated_a_gap() -> None:
    """Seed 135 drew gaps 2934, 2934 before the redraw: the mapper could not tell frame 2 from a shifted frame 1."""
    pts = [SenderPts(FPS, FRAMES, 135)(i) for i in range(3)]
    mapper = FrameIdMapper()
    for i, sent in enumerate(pts):
        mapper.announce(i, sent)
        mapper.observe(sent - pts[0])
    assert mapper.locate(pts[2] - pts[0]) == 2


@PROPERTY_SETTINGS
@given(_streams())
def test_without_loss_or_reordering_every_frame_after_the_third_is_mapped(stream: tuple[list[int], list[int]]) -> None:
    pts, _ = stream
    mapper = FrameIdMapper()
    located = []
    for i, sent in enumerate(pts):
        mapper.announce(i, sent)
        mapper.observe((sent - pts[0]) % RTP_TIMESTAMP_MODULUS)
        located.append(mapper.locate((sent - pts[0]) % RTP_TIMESTAMP_MODULUS))
    assert located[2:] == list(range(2, FRAMES))


# --- aggregation rules -------------------------------------------------------------------------------------------

SHAPE = (3, 2)
VALUES = st.floats(min_value=-100, max_value=100, allow_nan=False)


@st.composite
def _rounds(draw: st.DrawFn) -> list[Update]:
    count = draw(st.integers(min_value=1, max_value=7))
    updates = []
    for i in range(count):
        weight = np.array(draw(st.lists(VALUES, min_size=6, max_size=6)), np.float64).reshape(SHAPE)
        bias = np.array(draw(st.lists(VALUES, min_size=2, max_size=2)), np.float64)
        samples = draw(st.integers(min_value=1, max_value=10_000))
        updates.append(Update(f"w{i}", 0, samples, {"w": weight, "b": bias}))
    return updates


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(_rounds(), st.randoms(use_true_random=False))
def test_fedavg_is_the_sample_weighted_mean_in_any_order(updates: list[Update], rng: Any) -> None:
    total = sum(u.samples for u in updates)
    for name in ("w", "b"):
        by_hand = sum(u.samples * u.delta[name] for u in updates) / total
        np.testing.assert_allclose(FedAvg().aggregate(updates)[name], by_hand, rtol=1e-9, atol=1e-9)
    shuffled = list(updates)
    rng.shuffle(shuffled)
    scaled = [dataclasses.replace(u, samples=3 * u.samples) for u in updates]
    for other in (shuffled, scaled):  # order and units of the sample counts do not matter
        for name, value in FedAvg().aggregate(other).items():
            np.testing.assert_allclose(value, FedAvg().aggregate(updates)[name], rtol=1e-9, atol=1e-9)


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(_rounds())
def test_robust_rules_stay_within_the_updates_and_agree_on_identical_ones(updates: list[Update]) -> None:
    for rule in (CoordinateMedian(), TrimmedMean(), TrimmedMean(0.4)):
        out = rule.aggregate(updates)
        for name in ("w", "b"):
            stacked = np.stack([u.delta[name] for u in updates])
            assert (out[name] >= stacked.min(0) - 1e-9).all() and (out[name] <= stacked.max(0) + 1e-9).all()
        same = [dataclasses.replace(u, delta=updates[0].delta) for u in updates]
        for name, value in rule.aggregate(same).items():
            np.testing.assert_allclose(value, updates[0].delta[name], rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(_rounds(), st.integers(min_value=0, max_value=3))
def test_trimmed_mean_is_the_mean_of_the_middle_values(updates: list[Update], tenths: int) -> None:
    fraction = tenths / 10
    cut = int(fraction * len(updates))
    out = TrimmedMean(fraction).aggregate(updates)
    for name in ("w", "b"):
        stacked = np.stack([u.delta[name] for u in updates])
        by_hand = np.apply_along_axis(lambda v: np.mean(sorted(v)[cut : len(v) - cut]), 0, stacked)
        np.testing.assert_allclose(out[name], by_hand, rtol=1e-9, atol=1e-9)


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(_rounds(), st.floats(min_value=0.01, max_value=10))
def test_a_server_learning_rate_scales_the_inner_rule(updates: list[Update], lr: float) -> None:
    for inner in (FedAvg(), CoordinateMedian()):
        scaled = ServerLearningRate(inner, lr).aggregate(updates)
        for name, value in inner.aggregate(updates).items():
            np.testing.assert_allclose(scaled[name], lr * value, rtol=1e-9, atol=1e-9)
