"""Key-frame policies: which camera frames the phone sends to the edge for stylization.

Every policy keys the first frame and forced requests (a dropped key), and never lets more than
its max interval pass without a key. Triggers between min and max interval:

- fixed: none (a key every `interval` frames).
- codec: the rule an H.264 encoder (x264: keyint + scenecut) uses for its IDR frames: a cut
  against the previous frame, plus forced keys. The phone cannot read the real encoder's flags:
  aiortc encodes inside its RTCRtpSender and its VP8 encoder only emits key frames on a receiver's
  PLI/FIR (kf_max_dist 3000), so the same rule runs on the phone instead.
- scene-cut: content change against the last key frame (colour histogram distance), which also
  catches slow drift that a frame-to-frame cut detector misses.
- adaptive: the warp would go wrong: the share of pixels failing the forward-backward flow check,
  or the mean flow length, is above its threshold. It reads the motion the phone computes anyway.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from mobile_sim.flow import MotionProbe

REASON_FIRST = "first"
REASON_INTERVAL = "interval"
REASON_MAX_INTERVAL = "max interval"
REASON_BETWEEN_KEYS = "between keys"
REASON_SCENE_CUT = "scene cut"
REASON_CONTENT_CHANGE = "content change"
REASON_OCCLUSION = "occlusion"
REASON_MOTION = "motion"

KEY_POLICIES: tuple[str, ...] = ("fixed", "codec", "scene-cut", "adaptive")
DEFAULT_KEY_POLICY = "fixed"
DEFAULT_MIN_INTERVAL = 2
DEFAULT_MAX_INTERVAL = 30

HISTOGRAM_THUMBNAIL = (64, 36)
"""Frames are shrunk to this (width, height) before their colour histogram is taken."""
HISTOGRAM_BINS = (16, 8)  # hue, saturation
HISTOGRAM_RANGES = (0, 180, 0, 256)
CUT_DISTANCE = 0.3
"""Bhattacharyya distance between consecutive frames' histograms above which the codec policy cuts."""
CONTENT_CHANGE_DISTANCE = 0.3
"""Bhattacharyya distance from the last key frame above which the scene-cut policy keys."""
MAX_OCCLUDED_SHARE = 0.05
"""Adaptive policy: a new key once this share of pixels fails the forward-backward check."""
MAX_MOTION_FRACTION = 0.15
"""Adaptive policy: a new key once the mean flow to the key exceeds this fraction of the frame width."""


def color_histogram(frame: np.ndarray) -> np.ndarray:
    """Normalised hue-saturation histogram of a BGR frame (on a thumbnail)."""
    small = cv2.resize(frame, HISTOGRAM_THUMBNAIL, interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    histogram = cv2.calcHist([hsv], [0, 1], None, list(HISTOGRAM_BINS), list(HISTOGRAM_RANGES))
    return (histogram / max(float(histogram.sum()), 1.0)).ravel()


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya distance of two normalised histograms: 0 identical, 1 disjoint."""
    return float(cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA))


def _check_interval(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class KeyDecision:
    """Whether a frame is a key frame, and why."""

    is_key: bool
    reason: str


class KeyFramePolicy(Protocol):
    """Decides, frame by frame in capture order, which frames are key frames.

    needs_occlusion: its `decide` reads the forward-backward mask of the motion.
    looks_at_frames: its `decide` reads pixels or motion (the phone then runs it off the event loop,
    on the thread that computes flow); a policy that only counts frames is called on the loop.
    """

    needs_occlusion: bool
    looks_at_frames: bool
    max_interval: int
    """The most frame ids from one key to the next unless a key is forced (a fixed policy's interval)."""

    def decide(self, frame_id: int, frame: np.ndarray, motion: MotionProbe | None = None) -> KeyDecision:
        """Decide for the next captured frame; `motion` to the last key, for policies that use it."""
        ...

    def request_key(self, reason: str) -> None:
        """Force the next decided frame to be a key frame (e.g. the last key was dropped)."""
        ...


class BaseKeyFramePolicy(ABC):
    """Rules every policy shares: the first frame and forced requests are keys, and keys come at
    least every `max_interval` and (unless forced) at most every `min_interval` frame ids.

    Subclasses implement `_key_reason`, their own trigger, and may `_observe` every frame.
    """

    max_interval_reason = REASON_MAX_INTERVAL
    needs_occlusion = False
    looks_at_frames = True

    def __init__(self, max_interval: int, min_interval: int = 1) -> None:
        _check_interval("max interval", max_interval)
        _check_interval("min interval", min_interval)
        if min_interval > max_interval:
            raise ValueError(f"min interval {min_interval} exceeds max interval {max_interval}")
        self.max_interval = max_interval
        self.min_interval = min_interval
        self._last_key_id: int | None = None
        self._forced_reason: str | None = None

    def request_key(self, reason: str) -> None:
        """Force the next decided frame to be a key; the first pending reason is kept."""
        if self._forced_reason is None:
            self._forced_reason = reason

    def decide(self, frame_id: int, frame: np.ndarray, motion: MotionProbe | None = None) -> KeyDecision:
        """Key if first, forced, due by max interval, or the subclass's trigger fires; else interpolated."""
        self._observe(frame)
        reason: str | None
        if self._last_key_id is None:
            reason = REASON_FIRST
        elif self._forced_reason is not None:
            reason = self._forced_reason
        elif frame_id - self._last_key_id >= self.max_interval:
            reason = self.max_interval_reason
        elif frame_id - self._last_key_id < self.min_interval:
            reason = None
        else:
            reason = self._key_reason(frame, motion)
        if reason is None:
            return KeyDecision(is_key=False, reason=REASON_BETWEEN_KEYS)
        self._last_key_id = frame_id
        self._forced_reason = None
        self._on_key(frame)
        return KeyDecision(is_key=True, reason=reason)

    def _observe(self, frame: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Called with every decided frame, before the decision."""

    def _on_key(self, frame: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Called when `frame` becomes a key."""

    @abstractmethod
    def _key_reason(self, frame: np.ndarray, motion: MotionProbe | None) -> str | None:
        """Reason to make this frame a key, or None to interpolate it from the last key."""


class FixedIntervalPolicy(BaseKeyFramePolicy):
    """A key frame every `interval` frame ids, counted from the last key (forced keys restart it)."""

    max_interval_reason = REASON_INTERVAL
    looks_at_frames = False

    def __init__(self, interval: int) -> None:
        _check_interval("key-frame interval", interval)
        super().__init__(max_interval=interval)
        self.interval = interval

    def _key_reason(self, frame: np.ndarray, motion: MotionProbe | None) -> str | None:
        return None


class CodecPolicy(BaseKeyFramePolicy):
    """An encoder's IDR rule (x264 keyint/min-keyint/scenecut): a cut against the previous frame."""

    def __init__(
        self,
        max_interval: int = DEFAULT_MAX_INTERVAL,
        min_interval: int = DEFAULT_MIN_INTERVAL,
        cut_distance: float = CUT_DISTANCE,
    ) -> None:
        super().__init__(max_interval, min_interval)
        self.cut_distance = cut_distance
        self._previous: np.ndarray | None = None
        self._distance = 0.0

    def _observe(self, frame: np.ndarray) -> None:
        histogram = color_histogram(frame)
        self._distance = histogram_distance(histogram, self._previous) if self._previous is not None else 0.0
        self._previous = histogram

    def _key_reason(self, frame: np.ndarray, motion: MotionProbe | None) -> str | None:
        return REASON_SCENE_CUT if self._distance > self.cut_distance else None


class SceneCutPolicy(BaseKeyFramePolicy):
    """Content change: the frame's colour histogram has moved away from the last key frame's."""

    def __init__(
        self,
        max_interval: int = DEFAULT_MAX_INTERVAL,
        min_interval: int = DEFAULT_MIN_INTERVAL,
        change_distance: float = CONTENT_CHANGE_DISTANCE,
    ) -> None:
        super().__init__(max_interval, min_interval)
        self.change_distance = change_distance
        self._key_histogram: np.ndarray | None = None

    def _on_key(self, frame: np.ndarray) -> None:
        self._key_histogram = color_histogram(frame)

    def _key_reason(self, frame: np.ndarray, motion: MotionProbe | None) -> str | None:
        assert self._key_histogram is not None, "a key was decided before"
        distance = histogram_distance(color_histogram(frame), self._key_histogram)
        return REASON_CONTENT_CHANGE if distance > self.change_distance else None


class AdaptivePolicy(BaseKeyFramePolicy):
    """Warp confidence: a new key when the motion to the last key says the warp would go wrong.

    Needs `motion` with the forward-backward mask (Reconstructor with occlusion_check).
    """

    needs_occlusion = True

    def __init__(
        self,
        max_interval: int = DEFAULT_MAX_INTERVAL,
        min_interval: int = DEFAULT_MIN_INTERVAL,
        max_occluded_share: float = MAX_OCCLUDED_SHARE,
        max_motion_fraction: float = MAX_MOTION_FRACTION,
    ) -> None:
        super().__init__(max_interval, min_interval)
        self.max_occluded_share = max_occluded_share
        self.max_motion_fraction = max_motion_fraction

    def _key_reason(self, frame: np.ndarray, motion: MotionProbe | None) -> str | None:
        if motion is None:
            raise ValueError("the adaptive policy needs the motion to the last key")
        estimate = motion()
        if estimate.occluded is None:
            raise ValueError("the adaptive policy needs the forward-backward occlusion mask")
        if estimate.occluded_share > self.max_occluded_share:
            return REASON_OCCLUSION
        if estimate.mean_magnitude > self.max_motion_fraction * frame.shape[1]:
            return REASON_MOTION
        return None


def make_policy(
    name: str,
    interval: int,
    min_interval: int = DEFAULT_MIN_INTERVAL,
    max_interval: int = DEFAULT_MAX_INTERVAL,
) -> BaseKeyFramePolicy:
    """Policy `name` (KEY_POLICIES): fixed uses `interval`; the others min/max interval."""
    if name == "fixed":
        return FixedIntervalPolicy(interval)
    if name == "codec":
        return CodecPolicy(max_interval, min_interval)
    if name == "scene-cut":
        return SceneCutPolicy(max_interval, min_interval)
    if name == "adaptive":
        return AdaptivePolicy(max_interval, min_interval)
    raise ValueError(f"unknown key-frame policy {name!r}; choose one of {', '.join(KEY_POLICIES)}")
