"""bench.cpu_path: the working-size rows are measured with the real model, and the choice follows the rule."""

from __future__ import annotations

import pytest

from bench.cpu_path import MAX_SSIM_LOSS, MAX_W2_GAIN, chosen, markdown, measure


@pytest.mark.slow
def test_rows_time_the_real_model_at_each_working_size() -> None:
    rows = measure([128, 64], repeats=1, quality=False)
    assert [row["work_size"] for row in rows] == [128, 64]
    assert rows[1]["network_input"][1] < rows[0]["network_input"][1]
    assert all(row["key_ms_1t"] > 0 and row["key_ms_2t"] > 0 for row in rows)
    assert rows[0]["time_ratio_1t"] == rows[0]["time_ratio_2t"] == 1.0


def _row(work_size: int, ssim_delta: float, w2_delta: float, ms: float) -> dict[str, object]:
    acceptable = ssim_delta >= -MAX_SSIM_LOSS and w2_delta <= MAX_W2_GAIN
    return {
        "work_size": work_size,
        "network_input": [work_size * 16 // 9, work_size],
        "ssim": 0.6 + ssim_delta,
        "ssim_delta": ssim_delta,
        "gaussian_w2": 4.5 + w2_delta,
        "w2_delta": w2_delta,
        "acceptable": acceptable,
        "key_ms_1t": 2 * ms,
        "key_ms_2t": ms,
        "time_ratio_1t": 1.0,
        "time_ratio_2t": 1.0,
    }


def test_the_fastest_acceptable_size_is_chosen() -> None:
    rows = [_row(256, 0, 0, 200), _row(192, -0.001, 0.05, 120), _row(160, -0.002, 0.11, 90), _row(128, -0.01, 0, 50)]
    assert chosen(rows) == 192  # 160 adds too much W2, 128 loses too much SSIM
    data = {"machine": {"when": "now", "commit": "abc", "cpus": 2, "load_avg_1m": 0.1}, "repeats": 1, "rows": rows}
    assert "| 192 | 341x192 |" in markdown({**data, "chosen": 192})
