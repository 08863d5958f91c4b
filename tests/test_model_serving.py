"""``--work-size`` / ``--precision auto``: the settings that hold the live rate on the device at hand (issue 23)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from edge_worker.model.serving import (
    AUTO,
    CPU_LIVE_PRECISION,
    CPU_LIVE_WORK_SIZE,
    ServingSettings,
    parse_work_size,
    resolve_serving,
)

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)  # a device object needs no GPU; nothing runs on it here
MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def test_auto_on_the_cpu_is_what_make_demo_runs() -> None:
    flags = re.search(r"^DEMO_FLAGS \?= (.*)$", MAKEFILE.read_text(), re.M)
    assert flags is not None
    argv = flags.group(1).split()
    chosen = resolve_serving(CPU, AUTO, AUTO, trainable=False)
    assert chosen == ServingSettings(CPU, CPU_LIVE_WORK_SIZE, CPU_LIVE_PRECISION, auto=True)
    assert (int(argv[argv.index("--work-size") + 1]), argv[argv.index("--precision") + 1]) == (192, "int8")
    assert (chosen.work_size, chosen.precision) == (192, "int8")
    assert (
        chosen.describe()
        == "device cpu, work size 192, int8 (auto: the settings that hold the live rate on this device)"
    )


def test_auto_on_cuda_is_fp16_at_the_models_own_size() -> None:
    chosen = resolve_serving(GPU, AUTO, AUTO, trainable=False)
    assert (chosen.work_size, chosen.precision) == (0, "fp32")
    assert chosen.describe().startswith("device cuda:0, the model's own work size, fp16 autocast (auto")


def test_auto_when_retraining_keeps_the_fp32_network_at_its_own_size() -> None:
    assert resolve_serving(CPU, AUTO, AUTO, trainable=True) == ServingSettings(CPU, 0, "fp32", auto=True)


def test_given_values_win() -> None:
    assert resolve_serving(CPU, 256, "fp32", trainable=False) == ServingSettings(CPU, 256, "fp32", auto=False)
    assert resolve_serving(CPU, 0, AUTO, trainable=False) == ServingSettings(CPU, 0, "int8", auto=True)


@pytest.mark.parametrize(
    ("device", "trainable", "message"),
    [(GPU, False, r"^--precision int8 runs on the CPU only, not on cuda:0"), (CPU, True, "federated learning")],
)
def test_int8_where_it_cannot_run_is_one_line(device: torch.device, trainable: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_serving(device, AUTO, "int8", trainable=trainable)


@pytest.mark.parametrize("text", ["50000", "8", "-1", "big"])
def test_work_sizes_out_of_range_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"^work size must be auto, 0 or "):
        parse_work_size(text)
    assert parse_work_size("auto") == AUTO and parse_work_size("0") == 0 and parse_work_size("4096") == 4096


def test_auto_for_the_lite_models_is_fp32_at_their_own_size() -> None:
    """The lite models have no int8 network: ``auto`` on the CPU keeps fp32 and their own size; a worker's
    preflight resolves them so (the flags ``mvs local --model lite`` hands on start a worker that loads)."""
    from edge_worker.model.registry import LITE_LOOK_NAME, LITE_NAME
    from edge_worker.service import WorkerConfig, preflight

    assert resolve_serving(CPU, AUTO, AUTO, trainable=False, int8=False) == ServingSettings(CPU, 0, "fp32", auto=True)
    with pytest.raises(ValueError, match=r"^--precision int8 is the paper DNN's"):
        resolve_serving(CPU, AUTO, "int8", trainable=False, int8=False)
    for name in (LITE_NAME, LITE_LOOK_NAME):
        settings = preflight(WorkerConfig(model=name, device="cpu"), trainable=False)
        assert settings == ServingSettings(CPU, 0, "fp32", auto=True)
        with pytest.raises(ValueError, match="paper DNN"):
            preflight(WorkerConfig(model=name, device="cpu", precision="int8"), trainable=False)
