"""The soak's verdict (bench.soak_verdict) on synthetic series: a leak is caught, a bounded wobble, a warm-up that
levels off and a restarted process's reset are not."""

from __future__ import annotations

import math

import pytest

from bench.soak_verdict import LIMITS, MIN_POINTS, WARMUP_S, fitted_slope, judge, judged_window

HOUR = 3600.0


def _series(fn: object, minutes: float = 30.0, every_s: float = 45.0, pid: int = 1) -> list[tuple[float, float, int]]:
    assert callable(fn)
    n = int(minutes * 60 / every_s) + 1
    return [(i * every_s, float(fn(i * every_s)), pid) for i in range(n)]


def test_the_fitted_slope_of_a_line_is_its_slope() -> None:
    times = [0.0, 10.0, 20.0, 30.0]
    assert fitted_slope(times, [5 + 0.5 * t for t in times]) == pytest.approx(0.5)
    assert fitted_slope([1.0, 1.0], [0.0, 9.0]) == 0.0  # no spread in time: no slope
    assert fitted_slope([], []) == 0.0


def test_a_steady_leak_fails_and_a_bounded_wobble_passes() -> None:
    leak = _series(lambda t: 200 + 80 * t / HOUR)  # RSS +80 MB/h: +20 MB over the last 15 minutes
    verdict = judge("rss_mb", leak, leak[-1][0])
    assert verdict["grows"] is True and verdict["rise"] == pytest.approx(20.0, abs=0.5)
    wobble = _series(lambda t: 200 + 10 * math.sin(t / 60))  # +-10 MB, sessions coming and going
    assert judge("rss_mb", wobble, wobble[-1][0])["grows"] is False


def test_a_warm_up_that_levels_off_is_bounded() -> None:
    warm = _series(lambda t: 100 + 150 * min(1.0, t / 600))  # +150 MB in the first 10 minutes, flat after
    assert judge("rss_mb", warm, warm[-1][0])["grows"] is False
    tasks = _series(lambda t: 40 + 3 * (int(t) % 2))  # a session's tasks at some samples, not others
    assert judge("tasks", tasks, tasks[-1][0])["grows"] is False


def test_a_short_run_is_held_to_the_noise_allowance_and_a_long_one_to_the_rate() -> None:
    limit = LIMITS["fds"]
    assert limit.allowed(90.0) == limit.noise  # CI's 3 minutes: 1.5 minutes judged
    assert limit.allowed(10 * HOUR) == pytest.approx(limit.per_hour * 10)
    slow = _series(lambda t: 20 + 12 * t / HOUR, minutes=3 * 60, every_s=60.0)  # 12 fds/h for 3 hours
    assert judge("fds", slow, slow[-1][0])["grows"] is False  # below 16/h
    fast = _series(lambda t: 20 + 24 * t / HOUR, minutes=3 * 60, every_s=60.0)
    assert judge("fds", fast, fast[-1][0])["grows"] is True


def test_a_restarted_process_is_judged_after_its_warm_up_since_its_last_start() -> None:
    before = [(float(t), 30.0 + t / 10, 1) for t in range(0, 1200, 60)]  # grew, then killed at 20 min
    after = [(float(t), 20.0 + min(t - 1200, 120) / 2, 2) for t in range(1200, 1860, 60)]  # restarted: warms, flat
    window = judged_window([*before, *after], 1800.0)
    assert window == [s for s in after if s[0] >= 1200 + WARMUP_S]
    assert judge("rss_mb", [*before, *after], 1800.0)["grows"] is False
    late = [
        *[(float(t), 30.0, 1) for t in range(0, 1680, 60)],
        *[(float(t), 5.0 + t - 1680, 2) for t in (1680, 1740, 1800)],
    ]
    verdict = judge("rss_mb", late, 1800.0)
    assert verdict["grows"] is None and verdict["points"] < MIN_POINTS  # still warming up at the end: no verdict
    short = _series(lambda t: 100 + 60 * t / 60, minutes=3, every_s=5.0)  # CI: +60 MB a minute, judged from 2 min
    assert judged_window(short, short[-1][0])[0][0] == WARMUP_S
    assert judge("rss_mb", short, short[-1][0])["grows"] is True
