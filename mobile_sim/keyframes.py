"""Key-frame policies: which camera frames the phone sends to the edge for stylization."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import numpy as np

REASON_FIRST = "first"
REASON_INTERVAL = "interval"
REASON_BETWEEN_KEYS = "between keys"


@dataclass(frozen=True)
class KeyDecision:
    """Whether a frame is a key frame, and why."""

    is_key: bool
    reason: str


class KeyFramePolicy(Protocol):
    """Decides, frame by frame in capture order, which frames are key frames."""

    def decide(self, frame_id: int, frame: np.ndarray) -> KeyDecision:
        """Decide for the next captured frame."""
        ...

    def request_key(self, reason: str) -> None:
        """Force the next decided frame to be a key frame (e.g. the last key was dropped)."""
        ...


class BaseKeyFramePolicy(ABC):
    """Rules every policy shares: the first frame and forced requests are keys.

    Subclasses only implement `_key_reason`, their own trigger.
    """

    def __init__(self) -> None:
        self._last_key_id: int | None = None
        self._forced_reason: str | None = None

    def request_key(self, reason: str) -> None:
        """Force the next decided frame to be a key; the first pending reason is kept."""
        if self._forced_reason is None:
            self._forced_reason = reason

    def decide(self, frame_id: int, frame: np.ndarray) -> KeyDecision:
        """Key if first, forced, or the subclass's trigger fires; otherwise interpolated."""
        if self._last_key_id is None:
            reason: str | None = REASON_FIRST
        elif self._forced_reason is not None:
            reason = self._forced_reason
        else:
            reason = self._key_reason(frame_id, frame, self._last_key_id)
        if reason is None:
            return KeyDecision(is_key=False, reason=REASON_BETWEEN_KEYS)
        self._last_key_id = frame_id
        self._forced_reason = None
        return KeyDecision(is_key=True, reason=reason)

    @abstractmethod
    def _key_reason(self, frame_id: int, frame: np.ndarray, last_key_id: int) -> str | None:
        """Reason to make this frame a key, or None to interpolate it from `last_key_id`."""


class FixedIntervalPolicy(BaseKeyFramePolicy):
    """A key frame every `interval` frame ids, counted from the last key (forced keys restart it)."""

    def __init__(self, interval: int) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"key-frame interval must be an integer >= 1, got {interval!r}")
        super().__init__()
        self.interval = interval

    def _key_reason(self, frame_id: int, frame: np.ndarray, last_key_id: int) -> str | None:
        return REASON_INTERVAL if frame_id - last_key_id >= self.interval else None
