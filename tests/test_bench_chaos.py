"""bench.chaos writes a table with a row per fault (the campaign itself runs in ~70 s: `python -m bench.chaos`)."""

from __future__ import annotations

import pytest

from bench.chaos import COLUMNS, STEPS, main, markdown, rss_mb


def test_markdown_has_a_row_per_fault_and_every_column() -> None:
    machine = {"commit": "abc1234", "cpus": 2, "load_avg_1m": 1.0}
    rows = [{"fault": "f1", "survived": "yes", "recovery_s": 0.5}, {"fault": "f2", "survived": "no", "keys_ok": 3}]
    text = markdown({"machine": machine, "seconds": 1.0, "rows": rows})
    assert "| " + " | ".join(COLUMNS) + " |" in text and "| f1 |" in text and "| f2 |" in text
    assert "abc1234" in text and rss_mb() > 0


def test_steps_can_be_run_alone_by_name() -> None:
    steps = {"gateway-kill", "crowd", "delta-swap", "phone-attacks", "signaling"}  # issue 14 items 9-10; 22 items 1, 8
    assert steps <= set(STEPS)
    with pytest.raises(SystemExit):
        main(["--only", "no-such-step"])
