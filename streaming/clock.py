"""Clock offsets between processes, so hop timestamps from several hosts share one time line.

NTP's on-wire calculation (RFC 5905, sec. 8): for a request sent at t0 (local clock), received at
t1 and answered at t2 (remote clock), and the answer received at t3 (local), the remote clock is
ahead by ``((t1 - t0) + (t2 - t3)) / 2`` with an error of at most half the round-trip delay
``(t3 - t0) - (t2 - t1)``. Like NTP's clock filter, keep the sample of least delay among recent
ones. Pure computation.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

DEFAULT_WINDOW = 64
"""Recent samples considered (the least-delay one wins)."""


@dataclass(frozen=True)
class OffsetSample:
    """One exchange: remote clock minus local clock, and the round-trip delay bounding its error (ns)."""

    offset_ns: float
    delay_ns: int


def offset_sample(t0: int, t1: int, t2: int, t3: int) -> OffsetSample:
    """The offset of the remote clock from an exchange t0 (local send) .. t3 (local receive)."""
    return OffsetSample(offset_ns=((t1 - t0) + (t2 - t3)) / 2, delay_ns=max(0, (t3 - t0) - (t2 - t1)))


class ClockOffset:
    """Running estimate of one remote clock's offset from the local clock."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self._samples: deque[OffsetSample] = deque(maxlen=window)

    def add(self, t0: int, t1: int, t2: int, t3: int) -> None:
        """Record an exchange."""
        self._samples.append(offset_sample(t0, t1, t2, t3))

    @property
    def best(self) -> OffsetSample | None:
        """The least-delay recent sample, or None before any exchange."""
        return min(self._samples, key=lambda s: s.delay_ns) if self._samples else None

    def to_local(self, remote_ns: int) -> int:
        """A remote timestamp on the local clock (unchanged before any exchange)."""
        best = self.best
        return remote_ns if best is None else round(remote_ns - best.offset_ns)
