"""Frame ids recovered from decoded pts: lost first frames, losses, one-tick truncation, reordering; synthesised
traces, and one recorded from the browser phone in real Chromium (tests/data/chromium_frame_ids.json)."""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from streaming.gateway.frame_ids import RELOCK_AFTER_MISSES, FrameIdMapper
from streaming.protocol import RTP_TIMESTAMP_MODULUS

PERIOD = 3000  # 30 fps in 90 kHz ticks
FRAMES = 300


def _sender_pts(rng: random.Random) -> list[int]:
    return [i * PERIOD + rng.randrange(PERIOD // 2) for i in range(FRAMES)]


def _receive(pts: list[int], lost: set[int], rng: random.Random, truncate: bool) -> list[tuple[int, int]]:
    """(frame id, receiver pts) as aiortc yields them: random RTP origin, re-based on the first frame."""
    origin = rng.randrange(RTP_TIMESTAMP_MODULUS)
    first = None
    out = []
    for i, p in enumerate(pts):
        if i in lost:
            continue
        rtp = (origin + p - (rng.randrange(2) if truncate else 0)) % RTP_TIMESTAMP_MODULUS
        first = rtp if first is None else first
        out.append((i, (rtp - first) % RTP_TIMESTAMP_MODULUS))
    return out


def _run(seed: int, lost: set[int], truncate: bool) -> tuple[int, int]:
    rng = random.Random(seed)
    pts = _sender_pts(rng)
    mapper = FrameIdMapper()
    received = dict(_receive(pts, lost, rng, truncate))
    correct = wrong = 0
    for i, p in enumerate(pts):
        mapper.announce(i, p)
        if i in received:
            mapper.observe(received[i])
            frame_id = mapper.locate(received[i])
            if frame_id is not None:
                correct += frame_id == i
                wrong += frame_id != i
    return correct, wrong


def test_first_frames_lost_and_random_losses_never_mismap() -> None:
    for seed in range(50):
        rng = random.Random(1000 + seed)
        lost = set(rng.sample(range(FRAMES), FRAMES // 10)) | {0, 1, 2}
        correct, wrong = _run(seed, lost, truncate=True)
        assert wrong == 0
        # Everything after the few frames needed to find the offset is mapped.
        assert correct >= FRAMES - len(lost) - 5


def test_without_dither_regular_pts_stay_unlocked_rather_than_guess() -> None:
    mapper = FrameIdMapper()
    for i in range(40):
        mapper.announce(i, i * PERIOD)
    for i in range(3, 40):  # frames 0-2 lost: every offset that is a multiple of PERIOD fits equally
        mapper.observe((i - 3) * PERIOD)
    assert not mapper.locked and mapper.locate(0) is None


def _locked_on_first(frames: int, seed: int) -> tuple[FrameIdMapper, list[int]]:
    """A mapper that has seen the first ``frames`` frames announced and decoded (none lost)."""
    pts = _sender_pts(random.Random(seed))
    mapper = FrameIdMapper()
    for i in range(frames):
        mapper.announce(i, pts[i])
        mapper.observe(pts[i] - pts[0])
    assert mapper.locked
    return mapper, pts


def test_reordered_frame_wrapped_by_aiortc_still_maps() -> None:
    mapper, pts = _locked_on_first(10, seed=7)
    # aiortc treats a late (reordered) frame as an RTP wrap and adds 2**32 to its pts.
    assert mapper.locate(pts[5] - pts[0] + RTP_TIMESTAMP_MODULUS) == 5


def test_frame_decoded_before_its_announcement_maps_afterwards() -> None:
    mapper, pts = _locked_on_first(6, seed=3)
    early = pts[6] - pts[0]
    mapper.observe(early)
    assert mapper.locate(early) is None  # not announced yet: unknown, and not counted as a miss
    mapper.announce(6, pts[6])
    assert mapper.locate(early) == 6


def test_relocks_after_the_stream_is_rebased() -> None:
    mapper, pts = _locked_on_first(10, seed=5)
    assert all(mapper.locate(pts[i] - pts[0]) == i for i in range(10))
    shift = 123_457  # a new origin, e.g. a restarted receiver
    results = []
    for i in range(10, 120):
        mapper.announce(i, pts[i])
        mapper.observe(pts[i] - shift)
        results.append((i, mapper.locate(pts[i] - shift)))
    assert mapper.relocks == 1
    assert all(got in (None, i) for i, got in results)
    assert all(got == i for i, got in results[-50:])


def _chromium_pts(rng: random.Random, frames: int, jitter_ms: float) -> list[int]:
    """RTP timestamps as Chromium stamps a 30 fps camera: capture times in whole ms times 90 (spacing 2970/3060,
    nearly periodic), jittered by ``jitter_ms``, from a random origin."""
    origin_ms = rng.uniform(0, 1e7)
    capture_ms = [int(origin_ms + i * 1000 / 30 + rng.gauss(0, jitter_ms)) for i in range(frames)]
    return [ms * 90 % RTP_TIMESTAMP_MODULUS for ms in capture_ms]


def _replay(pts: list[int], lost_first: int, lag: int) -> tuple[int | None, int]:
    """Announce every frame, decode all but the first ``lost_first``, each ``lag`` frames after its announcement
    (negative: before it), pending ones located again after each step as the gateway does; the first frame
    mapped and how many were mapped wrong."""
    mapper = FrameIdMapper()
    first = None
    locked_at, wrong = None, 0
    pending: list[tuple[int, int]] = []
    for step in range(min(0, lag), len(pts) + max(0, lag)):
        if 0 <= step < len(pts):
            mapper.announce(step, pts[step])
        i = step - lag
        if lost_first <= i < len(pts):
            first = pts[i] if first is None else first
            pending.append((i, (pts[i] - first) % RTP_TIMESTAMP_MODULUS))
            mapper.observe(pending[-1][1])
        still = []
        for i, received in pending:
            frame_id = mapper.locate(received)
            if frame_id is None:
                still.append((i, received))
                continue
            locked_at = i if locked_at is None else locked_at
            wrong += frame_id != i
        pending = still[-32:]  # the gateway holds this many unmapped frames
    return locked_at, wrong


@pytest.mark.slow
def test_chromium_like_timestamps_with_the_first_30_frames_lost_lock_within_two_seconds() -> None:
    for seed in range(30):
        for lag in (-2, 0, 3):  # announcements late by two frames, on time, three frames early
            locked_at, wrong = _replay(_chromium_pts(random.Random(seed), 400, jitter_ms=0.15), 30, lag)
            assert wrong == 0
            assert locked_at is not None and locked_at < 30 + 2 * 30, (seed, lag, locked_at)


@pytest.mark.slow
def test_perfectly_periodic_chromium_timestamps_stay_unlocked_rather_than_guess() -> None:
    pts = [round(i * 1000 / 30) * 90 for i in range(300)]  # 2970, 3060, 2970, ... and no jitter at all
    locked_at, wrong = _replay(pts, 30, 0)
    assert locked_at is None and wrong == 0


def test_two_agreeing_frames_are_not_enough_to_lock() -> None:
    """Three decoded frames must agree on an offset (MIN_VOTES): one or two could agree by chance."""
    pts = _sender_pts(random.Random(11))
    lone = FrameIdMapper()
    lone.announce(0, pts[0])
    lone.observe(0)  # one frame, one announcement: a single, unopposed, unconfirmed offset
    assert not lone.locked
    mapper = FrameIdMapper()
    for i in range(10):
        mapper.announce(i, pts[i])
    mapper.observe(0)
    mapper.observe(pts[1] - pts[0])
    assert not mapper.locked and mapper.locate(0) is None
    mapper.observe(pts[2] - pts[0])
    assert mapper.locked and [mapper.locate(pts[i] - pts[0]) for i in range(3)] == [0, 1, 2]


def test_an_offset_less_than_twice_as_popular_as_another_is_not_trusted() -> None:
    """Regular pts (an undithered phone, or a run of equal gaps) make several offsets fit; one more chance match
    must not decide. Frames 0-4 are 100 ticks apart, frame 5 at 1000 and 6 at 1100; frames 0 and 5 are lost, so
    the decoded pts are the sent ones minus 100, and frame 6 is decoded before its announcement. The true offset
    (100) explains 4 decoded frames, the wrong one (0) 5: less than twice as many, so no lock yet."""
    mapper = FrameIdMapper()
    for i, pts in enumerate([0, 100, 200, 300, 400, 1000]):
        mapper.announce(i, pts)
    for received in (0, 100, 200, 300, 1000):
        mapper.observe(received)
    assert not mapper.locked
    assert mapper.locate(0) is None  # a lock on offset 0 would call frame 1 frame 0
    mapper.announce(6, 1100)
    for i, pts in enumerate([1237, 1391, 1412, 1677, 1750, 1923], start=7):  # dithered frames settle it
        mapper.announce(i, pts)
        mapper.observe(pts - 100)
    assert mapper.locked and mapper.locate(0) == 1 and mapper.locate(1000) == 6


def test_a_lead_of_exactly_twice_the_runner_up_is_trusted() -> None:
    """Offset 0 explains all 4 decoded frames; offset 100 explains 2 (the equal gap of frames 0-2)."""
    mapper = FrameIdMapper()
    for i, pts in enumerate([0, 100, 200, 537, 1291]):
        mapper.announce(i, pts)
    for received in (0, 100, 537, 1291):
        mapper.observe(received)
    assert mapper.locked and [mapper.locate(p) for p in (0, 100, 200, 537, 1291)] == [0, 1, 2, 3, 4]


def test_relocks_after_exactly_the_set_number_of_consecutive_misses() -> None:
    mapper, pts = _locked_on_first(10, seed=9)
    stray = pts[0] - pts[9]  # decoded pts that map before every announced frame: a miss, not "not yet announced"
    for _ in range(2):
        for _ in range(RELOCK_AFTER_MISSES - 1):
            assert mapper.locate(stray) is None
        assert mapper.locate(pts[4] - pts[0]) == 4  # a hit resets the count
    assert mapper.locked and mapper.relocks == 0
    for _ in range(RELOCK_AFTER_MISSES - 1):
        mapper.locate(stray)
    assert mapper.locked
    mapper.locate(stray)
    assert not mapper.locked and mapper.relocks == 1
    for i in range(10):
        mapper.observe(pts[i] - pts[0])
    assert mapper.locked and mapper.locate(pts[3] - pts[0]) == 3
    for _ in range(RELOCK_AFTER_MISSES):  # the count starts again from zero after a relock
        mapper.locate(stray)
    assert not mapper.locked and mapper.relocks == 2


def test_frames_decoded_ahead_of_their_announcement_never_count_as_misses() -> None:
    mapper, pts = _locked_on_first(10, seed=13)
    rng = random.Random(1)
    later = [rng.randrange(PERIOD // 2) + i * PERIOD for i in range(10, 10 + 2 * RELOCK_AFTER_MISSES)]
    for sent in later:  # the video overtakes the data channel for a while
        assert mapper.locate(sent - pts[0]) is None
    assert mapper.locked and mapper.relocks == 0
    for i, sent in enumerate(later, start=10):
        mapper.announce(i, sent)
    assert [mapper.locate(sent - pts[0]) for sent in later] == list(range(10, 10 + len(later)))


def test_only_the_newest_announcements_are_remembered() -> None:
    mapper = FrameIdMapper(window=4)
    pts = _sender_pts(random.Random(17))
    for i in range(6):
        mapper.announce(i, pts[i])
    for i in range(2, 6):
        mapper.observe(pts[i] - pts[2])
    assert mapper.locked
    assert [mapper.locate(pts[i] - pts[2]) for i in range(2, 6)] == [2, 3, 4, 5]
    assert mapper.locate(pts[1] - pts[2]) is None  # forgotten


RECORDED = Path(__file__).resolve().parent / "data" / "chromium_frame_ids.json"
"""A real trace: the mapper's input at a gateway from the browser phone in headless Chromium 156 (12 s, 338
frames announced, 337 decoded; how and with what: the file's ``about``; re-record it with
``python -m tests.record_frame_ids``). Recorded on a busy 2-core box: frame spacing 24-43 ms for 90 % of frames
(33/34 ms for only 40 %), so the plain vote alone also locks fast here; the near-periodic case that needs the
all-recent-frames rule stays covered by the synthesised traces above."""
GATEWAY_PENDING = 32  # streaming.gateway.session.MAX_PENDING_FRAMES: decoded frames held while unmapped
LOCK_WITHIN_AS_RECORDED = 6  # decoded frames until the first is mapped; measured 3
LOCK_WITHIN_FIRST_30_LOST = 15  # measured 6
LOCK_WITHIN_ANY_LOSS = 30  # the first 0..120 decoded frames lost (4 s); measured at most 15 (52 lost)
MOST_LOST_FIRST = 120


def _replay_recorded(events: list[list[Any]], lost_first: int) -> tuple[int | None, int, int, int]:
    """Feed a recorded trace to a fresh mapper in arrival order, the first ``lost_first`` decoded frames lost (the
    rest re-based on the first one left, as aiortc does); pending frames are located again after every event, as the
    gateway does. Returns (decoded frames seen when the first was mapped, frames mapped wrong, mapped, decoded)."""
    mapper = FrameIdMapper()
    pending: list[tuple[int, int]] = []  # (decoded pts, true frame id)
    decoded = 0
    first = locked_at = None
    wrong = mapped = 0
    for event in events:
        if event[0] == "a":
            mapper.announce(event[1], event[2])
        else:
            decoded += 1
            if decoded <= lost_first:
                continue
            first = event[1] if first is None else first
            received = (event[1] - first) % RTP_TIMESTAMP_MODULUS
            mapper.observe(received)
            pending = [*pending, (received, event[2])][-GATEWAY_PENDING:]
        still = []
        for received, truth in pending:
            frame_id = mapper.locate(received)
            if frame_id is None:
                still.append((received, truth))
                continue
            locked_at = decoded - lost_first if locked_at is None else locked_at
            mapped += 1
            wrong += frame_id != truth
        pending = still
    return locked_at, wrong, mapped, decoded - lost_first


def _recorded_events() -> list[list[Any]]:
    trace = json.loads(RECORDED.read_text())
    assert trace["decoded"] == sum(e[0] == "d" for e in trace["events"]) > 300
    return list(trace["events"])


def test_recorded_chromium_trace_maps_every_decoded_frame_to_its_true_id() -> None:
    locked_at, wrong, mapped, decoded = _replay_recorded(_recorded_events(), lost_first=0)
    assert wrong == 0 and mapped == decoded
    assert locked_at is not None and locked_at <= LOCK_WITHIN_AS_RECORDED, locked_at


def test_recorded_chromium_trace_with_the_first_30_frames_lost_locks_fast_and_never_mismaps() -> None:
    """A mapper that locks on the plain vote without the lead over the runner-up (``best >= 2 * runner_up``
    removed, by hand) maps 13 frames of this replay wrong."""
    locked_at, wrong, mapped, decoded = _replay_recorded(_recorded_events(), lost_first=30)
    assert wrong == 0 and mapped == decoded  # frames held while locking are mapped once it locks
    assert locked_at is not None and locked_at <= LOCK_WITHIN_FIRST_30_LOST, locked_at


@pytest.mark.slow
def test_recorded_chromium_trace_with_any_number_of_first_frames_lost_never_mismaps() -> None:
    events = _recorded_events()
    for lost_first in range(MOST_LOST_FIRST + 1):
        locked_at, wrong, mapped, left = _replay_recorded(events, lost_first)
        assert wrong == 0 and mapped == left, (lost_first, wrong, mapped, left)
        assert locked_at is not None and locked_at <= LOCK_WITHIN_ANY_LOSS, (lost_first, locked_at)


RANDOM_ANNOUNCEMENTS = 1024
MAX_MS_PER_DECODED_FRAME = 20.0
"""Median of a decoded frame and an announcement: measured 2.6 ms on a loaded 2-core box; main took ~400 ms. The
median, not the worst: a loaded machine preempts the odd one."""


def test_random_announcements_cost_bounded_work_per_decoded_frame() -> None:
    """Issue 22: a phone announcing 1,024 random pts keeps the mapper unlocked; counting every (decoded, announced)
    pair again for each decoded frame cost 214 ms of pure Python per frame at a gateway and starved its other
    phones. The votes are kept up to date instead, against the newest announcements only."""
    rng = random.Random(22)
    mapper = FrameIdMapper()
    for i in range(RANDOM_ANNOUNCEMENTS):
        mapper.announce(i, rng.randrange(RTP_TIMESTAMP_MODULUS))
    seconds = []
    for i in range(100):
        start = time.perf_counter()
        mapper.observe(rng.randrange(RTP_TIMESTAMP_MODULUS))
        mapper.announce(RANDOM_ANNOUNCEMENTS + i, rng.randrange(RTP_TIMESTAMP_MODULUS))
        seconds.append(time.perf_counter() - start)
    assert not mapper.locked
    assert statistics.median(seconds) * 1e3 < MAX_MS_PER_DECODED_FRAME, sorted(seconds)[50]
