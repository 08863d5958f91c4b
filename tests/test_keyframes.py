import numpy as np
import pytest

from mobile_sim.keyframes import (
    DEFAULT_MIN_INTERVAL,
    REASON_FIRST,
    REASON_INTERVAL,
    FixedIntervalPolicy,
    KeyDecision,
    KeyFramePolicy,
    make_policy,
)

FRAME = np.zeros((4, 4, 3), np.uint8)


def keys_of(policy: KeyFramePolicy, frame_ids: range) -> list[int]:
    return [i for i in frame_ids if policy.decide(i, FRAME).is_key]


def test_key_every_interval_frames_with_reasons() -> None:
    policy = FixedIntervalPolicy(3)
    decisions = [policy.decide(i, FRAME) for i in range(10)]
    assert [i for i, d in enumerate(decisions) if d.is_key] == [0, 3, 6, 9]
    assert decisions[0] == KeyDecision(True, REASON_FIRST)
    assert decisions[3] == KeyDecision(True, REASON_INTERVAL)
    assert not decisions[4].is_key


def test_interval_one_makes_every_frame_a_key() -> None:
    assert keys_of(FixedIntervalPolicy(1), range(5)) == [0, 1, 2, 3, 4]


def test_forced_key_restarts_the_count() -> None:
    policy = FixedIntervalPolicy(4)
    assert keys_of(policy, range(3)) == [0]
    policy.request_key("dropped")
    policy.request_key("second request, ignored")
    assert policy.decide(3, FRAME) == KeyDecision(True, "dropped")
    # Without the forced key, frame 4 would have been due; now the next one is 3 + 4.
    assert keys_of(policy, range(4, 12)) == [7, 11]


def test_first_decided_frame_is_key_and_counting_uses_frame_ids() -> None:
    policy = FixedIntervalPolicy(3)
    assert policy.decide(5, FRAME) == KeyDecision(True, REASON_FIRST)
    assert not policy.decide(7, FRAME).is_key
    assert policy.decide(9, FRAME).is_key  # frames 6 and 8 were never decided (skipped ids)


@pytest.mark.parametrize("interval", [0, -2, 2.5, True])
def test_interval_validation(interval: object) -> None:
    with pytest.raises(ValueError, match="interval must be an integer >= 1"):
        FixedIntervalPolicy(interval)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["codec", "scene-cut", "adaptive"])
def test_every_policy_by_name_keeps_the_intervals_it_is_given(name: str) -> None:
    """make_policy passes both bounds on (a policy silently on the default minimum would key too often)."""
    policy = make_policy(name, interval=5, min_interval=DEFAULT_MIN_INTERVAL + 2, max_interval=11)
    assert (policy.min_interval, policy.max_interval) == (DEFAULT_MIN_INTERVAL + 2, 11)
    with pytest.raises(ValueError, match="min interval"):
        make_policy(name, interval=5, min_interval=0)
    with pytest.raises(ValueError, match="max interval"):
        make_policy(name, interval=5, max_interval=0)
