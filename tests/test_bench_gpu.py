"""``python -m bench.gpu --device cpu --quick``: runs with only torch, numpy and OpenCV, writes the tables; the
streams-per-GPU rule and the emulated profile fit against hand computations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.gpu import QUICK, fit_profile, streams_within_budget

ROOT = Path(__file__).resolve().parent.parent
ABSENT_ON_GPU_MACHINE = ("skimage", "scipy", "sklearn", "matplotlib", "nats", "aiortc", "av", "skvideo", "pandas")
"""The GPU machine has torch, numpy, OpenCV, msgpack and aiohttp; the bench must not import anything else."""
RUN_WITHOUT = """
import sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {absent!r}:
            raise ImportError(f"{{name}} is not installed on the GPU machine")
sys.meta_path.insert(0, Absent())
from bench.gpu import main
raise SystemExit(main(sys.argv[1:]))
"""
CPU_AGREEMENT_DB = 60.0


@pytest.mark.slow
def test_quick_cpu_run_writes_every_table(tmp_path: Path) -> None:
    script = RUN_WITHOUT.format(absent=ABSENT_ON_GPU_MACHINE)
    args = ["--device", "cpu", "--quick", "--threads", "1", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["device"]["spec"] == "cpu" and data["device"]["name"] and data["quick"]
    fp32 = data["agreement"]["fp32"]
    assert fp32["identical"] or fp32["psnr_db_min"] > CPU_AGREEMENT_DB
    assert data["agreement"]["fp16"]["applies"] is False  # autocast is the CUDA path
    assert [r["size"] for r in data["key_time"]] == [list(s) for s in QUICK.key_sizes]
    assert all(r["coefficients"]["median_ms"] > 0 and r["stylize"]["p95_ms"] > 0 for r in data["key_time"])
    assert [r["batch"] for r in data["batched"]] == list(QUICK.batches)
    assert all(r["keys_per_s"] > 0 and r["p95_ms"] >= r["median_ms"] for r in data["batched"])
    assert set(data["streams"]) >= {"budget_ms", "batch", "streams"}
    assert set(data["emulated_profile"]) >= {"fixed_ms", "per_item_ms"}
    assert {"channels_last", "nchw"} <= set(data["layout"])
    assert (tmp_path / "gpu.md").read_text().startswith("# The DNN on ")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_missing_cuda_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--device", "cuda", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "use --device cpu" in done.stderr


def test_streams_take_the_largest_batch_within_budget() -> None:
    rows: list[dict[str, Any]] = [
        {"batch": 1, "p95_ms": 10.0, "keys_per_s": 200.0},  # fill 5 ms: 15 ms
        {"batch": 8, "p95_ms": 40.0, "keys_per_s": 400.0},  # fill 20 ms: 60 ms
        {"batch": 16, "p95_ms": 80.0, "keys_per_s": 500.0},  # fill 32 ms: 112 ms, over
        {"batch": 32, "error": "out of memory"},
    ]
    result = streams_within_budget(rows, budget_ms=100.0)
    assert result["batch"] == 8 and result["fill_ms"] == 20.0 and result["streams"] == 66  # floor(400 / 6)
    assert streams_within_budget(rows[2:], budget_ms=100.0)["streams"] == 0


def test_profile_fit_recovers_a_line() -> None:
    rows: list[dict[str, Any]] = [{"batch": b, "mean_ms": 4.0 + 1.5 * b} for b in (1, 2, 4, 8)] + [
        {"batch": 16, "skipped": "time limit"}
    ]
    assert fit_profile(rows) == {"fixed_ms": 4.0, "per_item_ms": 1.5, "points": 4}
    assert fit_profile(rows[:1]) is None
