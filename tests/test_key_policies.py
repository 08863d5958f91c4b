"""Key-frame policies beyond the fixed interval: scene cuts, codec rule, warp confidence, bounds."""

from collections.abc import Callable

import cv2
import numpy as np
import pytest

from mobile_sim.flow import FlowEstimator
from mobile_sim.keyframes import (
    KEY_POLICIES,
    REASON_CONTENT_CHANGE,
    REASON_FIRST,
    REASON_MAX_INTERVAL,
    REASON_OCCLUSION,
    REASON_SCENE_CUT,
    AdaptivePolicy,
    BaseKeyFramePolicy,
    CodecPolicy,
    SceneCutPolicy,
    color_histogram,
    histogram_distance,
    make_policy,
)
from mobile_sim.reconstruct import Reconstructor
from mobile_sim.sources import SyntheticCamera, sample_photo
from mobile_sim.warp import Warper

SIZE = (256, 144)
CUT_AT = 8
PAN = SyntheticCamera(sample_photo("astronaut"), size=SIZE, pan_px_per_frame=2.0)
OTHER = SyntheticCamera(sample_photo("coffee"), size=SIZE, pan_px_per_frame=2.0)
CLIP = [PAN.render(i) for i in range(CUT_AT)] + [OTHER.render(i) for i in range(CUT_AT, 16)]


def decide_all(policy: BaseKeyFramePolicy, frames: list[np.ndarray]) -> dict[int, str]:
    """Key frame ids and reasons, with the motion the phone's Reconstructor computes."""
    rec = Reconstructor(FlowEstimator(), Warper(), occlusion_check=True)
    keys: dict[int, str] = {}
    last_key = 0
    for i, frame in enumerate(frames):
        probe = rec.probe(frame)
        decision = policy.decide(i, frame, probe)
        if decision.is_key:
            keys[i], last_key = decision.reason, i
        rec.add_frame(i, frame, last_key, probe)
    return keys


@pytest.mark.parametrize(
    ("make", "reason"),
    [(AdaptivePolicy, REASON_OCCLUSION), (SceneCutPolicy, REASON_CONTENT_CHANGE), (CodecPolicy, REASON_SCENE_CUT)],
)
def test_policies_insert_a_key_at_a_scene_cut_and_only_there(
    make: Callable[..., BaseKeyFramePolicy], reason: str
) -> None:
    # A fresh policy per run: policies keep state, and a shared instance fails the test when it runs twice in
    # one process (as mutmut's clean run does).
    assert decide_all(make(max_interval=30), CLIP) == {0: REASON_FIRST, CUT_AT: reason}


def test_adaptive_policy_needs_the_occlusion_mask() -> None:
    policy = AdaptivePolicy()
    policy.decide(0, CLIP[0])
    with pytest.raises(ValueError, match="motion"):
        policy.decide(5, CLIP[5])


@pytest.mark.parametrize("name", KEY_POLICIES)
def test_policies_never_exceed_max_interval_and_say_it(name: str) -> None:
    frames = [PAN.render(0)] * 40  # nothing changes: only the interval bound makes keys
    policy = make_policy(name, interval=5, min_interval=2, max_interval=7)
    keys = decide_all(policy, frames)
    assert policy.max_interval == (5 if name == "fixed" else 7)  # what the phone sizes its reconstructor by
    assert sorted(keys) == list(range(0, 40, policy.max_interval))
    assert all(reason in (REASON_FIRST, REASON_MAX_INTERVAL, "interval") for reason in keys.values())


def test_forced_keys_restart_the_max_interval_count() -> None:
    policy = SceneCutPolicy(max_interval=5)
    frames = [PAN.render(0)] * 12
    assert policy.decide(0, frames[0]).is_key
    assert not policy.decide(1, frames[1]).is_key
    policy.request_key("dropped")
    assert policy.decide(2, frames[2]).reason == "dropped"
    assert [i for i in range(3, 12) if policy.decide(i, frames[i]).is_key] == [7]


def test_min_interval_holds_back_triggers() -> None:
    policy = SceneCutPolicy(max_interval=30, min_interval=4)
    flicker = [PAN.render(0), OTHER.render(0)] * 6
    keys = [i for i, frame in enumerate(flicker) if policy.decide(i, frame).is_key]
    # Frames 1 and 3 differ from key 0 but come too soon, 4 is like key 0; 9 is like key 5.
    assert keys == [0, 5, 10]


def test_bad_bounds_are_rejected() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        SceneCutPolicy(max_interval=3, min_interval=5)
    with pytest.raises(ValueError, match="unknown key-frame policy"):
        make_policy("sometimes", 5)


def test_only_pixel_reading_policies_leave_the_event_loop() -> None:
    from mobile_sim.keyframes import KEY_POLICIES, make_policy

    looks = {name: make_policy(name, 5, 1, 30).looks_at_frames for name in KEY_POLICIES}
    assert looks.pop("fixed") is False and all(looks.values()), looks


def test_a_trigger_exactly_min_interval_after_a_key_is_taken() -> None:
    """Every frame a content change (threshold below any distance): keys exactly min_interval apart."""
    policy = SceneCutPolicy(max_interval=30, min_interval=3, change_distance=-1.0)
    frames = [PAN.render(0), OTHER.render(0)] * 5
    assert [i for i, frame in enumerate(frames) if policy.decide(i, frame).is_key] == [0, 3, 6, 9]


def _solid_bgr(hue: int, saturation: int, value: int = 200) -> np.ndarray:
    hsv = np.full((48, 64, 3), (hue, saturation, value), np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def test_the_histogram_sees_hue_and_saturation_but_not_brightness() -> None:
    red, green, pale_red, dark_red = _solid_bgr(0, 220), _solid_bgr(60, 220), _solid_bgr(0, 60), _solid_bgr(0, 220, 90)
    for image in (red, PAN.render(0)):
        histogram = color_histogram(image)
        assert histogram.sum() == pytest.approx(1.0) and histogram.min() >= 0
        assert histogram_distance(histogram, color_histogram(image)) == pytest.approx(0.0, abs=1e-6)
    assert histogram_distance(color_histogram(red), color_histogram(green)) > 0.9  # hue
    assert histogram_distance(color_histogram(red), color_histogram(pale_red)) > 0.9  # saturation
    assert histogram_distance(color_histogram(red), color_histogram(dark_red)) < 0.1  # brightness ignored
