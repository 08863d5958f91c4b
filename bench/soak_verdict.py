"""Does a sampled series grow without bound? The soak's verdict (``bench.soak``), pure and fast to test.

A series passes when the rise a least-squares line fits over the *last half* of the run is within its kind's
:class:`Limit`: the larger of a noise allowance (what a bounded series wobbles by: sessions coming and going, a
garbage collection) and a rate per hour times the half's length. A leak grows at a steady rate, so a long run
catches a small one; a short run (CI's three minutes) only catches a fast one. A process is judged from
:data:`WARMUP_S` after its last start (a hub server restarted) at the earliest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIN_POINTS = 4
"""Fewer samples than this in the judged window: no verdict (too few to fit a line)."""
WARMUP_S = 120.0
"""A process's first two minutes are not judged: caches fill (a hub server restarted catches its replicas up and its
Go heap grows to ~110 MB in about 100 s on a loaded machine), sockets come back."""


@dataclass(frozen=True)
class Limit:
    """How much a series of one kind may rise over the last half of a run."""

    unit: str
    noise: float
    """Rise allowed in any run, however short (a bounded series' wobble)."""
    per_hour: float
    """Rise allowed per hour of the last half (a long run's bound)."""

    def allowed(self, span_s: float) -> float:
        """The rise allowed over a window of ``span_s`` seconds."""
        return max(self.noise, self.per_hour * span_s / 3600.0)


LIMITS: dict[str, Limit] = {
    "rss_mb": Limit("MB", noise=16.0, per_hour=48.0),
    "nats_rss_mb": Limit("MB", noise=32.0, per_hour=64.0),
    "fds": Limit("fds", noise=8.0, per_hour=16.0),
    "tasks": Limit("tasks", noise=32.0, per_hour=64.0),
    "sessions": Limit("sessions", noise=4.0, per_hour=4.0),
    "js_storage_mb": Limit("MB", noise=16.0, per_hour=64.0),
}
"""The soak's thresholds by kind of series (README, "Soak"). A nats-server's RSS (Go) moves in larger steps than a
Python process's: its heap grows by arenas, is given back lazily, and a server takes over stream leaders when a peer
restarts (a survivor was seen +14 MB in a minute of a 3-minute run)."""


def fitted_slope(times: list[float], values: list[float]) -> float:
    """Least-squares slope of ``values`` over ``times`` (units per second); 0 for fewer than two distinct times."""
    n = len(times)
    if n < 2:
        return 0.0
    mean_t, mean_v = sum(times) / n, sum(values) / n
    var = sum((t - mean_t) ** 2 for t in times)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values, strict=True)) / var


def judged_window(samples: list[tuple[float, float, int]], end_s: float) -> list[tuple[float, float, int]]:
    """The samples ``(t, value, pid)`` of the last half of a run ending at ``end_s``, but none of the process's first
    :data:`WARMUP_S` since its last start (its first sample with its last pid)."""
    if not samples:
        return []
    first = len(samples)
    while first > 0 and samples[first - 1][2] == samples[-1][2]:
        first -= 1
    since = max(end_s / 2, samples[first][0] + WARMUP_S)
    return [s for s in samples[first:] if s[0] >= since]


def judge(kind: str, samples: list[tuple[float, float, int]], end_s: float) -> dict[str, Any]:
    """The verdict on one series of ``kind`` (a key of :data:`LIMITS`): the fitted rise over the judged window, the
    rise allowed, and ``grows`` (None when the window has fewer than :data:`MIN_POINTS` samples)."""
    limit = LIMITS[kind]
    window = judged_window(samples, end_s)
    if len(window) < MIN_POINTS:
        return {"points": len(window), "rise": None, "allowed": None, "grows": None}
    times, values = [s[0] for s in window], [s[1] for s in window]
    span = times[-1] - times[0]
    rise = fitted_slope(times, values) * span
    allowed = limit.allowed(span)
    return {"points": len(window), "rise": round(rise, 2), "allowed": round(allowed, 2), "grows": rise > allowed}
