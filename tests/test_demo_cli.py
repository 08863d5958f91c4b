"""``mvs demo`` end to end (nats-server, worker process, gateway, phone) and the CLI surface."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import av
import pytest
import torch

from deploy.cli import COMMANDS
from deploy.demo import build_parser, run_demo
from mobile_sim.__main__ import phone_config_from_args

pytestmark = pytest.mark.slow  # mvs demo and CLI processes


ROOT = Path(__file__).resolve().parents[1]
DEMO_FLAGS = ("--source", "--style", "--frames", "--size", "--fps", "--key-interval", "--region", "--out")


def _frames_in(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


async def test_demo_writes_videos_and_report(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["--frames", "30", "--size", "320x180", "--region", "demo", "--out", str(tmp_path)]
    )
    result = await run_demo(phone_config_from_args(args))
    assert _frames_in(tmp_path / "stylized.mp4") == 30
    assert _frames_in(tmp_path / "side_by_side.mp4") == 30
    with av.open(str(tmp_path / "side_by_side.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (640, 180)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    assert report["frames"]["output"] == 30 and report["key_frames"]["ok"] >= 1
    assert set(report["latency_ms"]) == {"demo"}
    assert report["latency_ms"]["demo"]["round_trip"]["p50"] > 0
    assert report["throughput"]["output_fps"] > 0


def _help(*argv: str) -> str:
    done = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def test_mvs_lists_every_command() -> None:
    text = _help("-m", "deploy.cli")
    for name in ("demo", "gateway", "worker", "phone", "nats"):
        assert name in text and name in COMMANDS


@pytest.mark.parametrize(
    ("argv", "flags"),
    [
        (("-m", "deploy.cli", "demo"), DEMO_FLAGS),
        (("-m", "mobile_sim"), (*DEMO_FLAGS, "--gateway")),
        (("-m", "streaming.gateway"), ("--nats", "--region", "--port", "--deadline-ms")),
        (("-m", "edge_worker"), ("--nats", "--region", "--model", "--threads", "--no-warmup")),
        (("-m", "deploy.cli", "nats"), ("--port", "--store-dir")),
    ],
)
def test_help_documents_the_flags(argv: tuple[str, ...], flags: tuple[str, ...]) -> None:
    text = _help(*argv)
    for flag in flags:
        assert flag in text


def test_bad_size_is_a_clear_cli_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "demo", "--size", "640by360"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "640x360" in done.stderr


NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize(
    ("argv", "code", "line"),
    [
        (["--source", "missing.mp4"], 1, "mvs demo: --source: video file missing.mp4: no such file"),
        (["--model", "nope.pt"], 1, "mvs demo: model file nope.pt does not exist"),
        (["--out", "README.md/x"], 1, "mvs demo: --out README.md/x: cannot write there (Not a directory)"),
        (["--work-size", "50000"], 2, "mvs demo: error: argument --work-size: work size must be auto, 0 or 32..4096 "),
        pytest.param(
            ["--device", "cuda"],
            1,
            "mvs demo: CUDA requested ('cuda') but torch.cuda.is_available() is False; use --device cpu",
            marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA"),
        ),
    ],
    ids=["missing-source", "missing-model", "unwritable-out", "work-size", "no-cuda"],
)
def test_bad_settings_are_one_line_before_anything_starts(argv: list[str], code: int, line: str) -> None:
    """Checked before NATS, a worker or the gateway start (the run takes no time), one line, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "demo", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    errors = done.stderr.splitlines()
    assert done.returncode == code and errors[-1].startswith(line), done.stderr
    assert code == 2 or len(errors) == 1  # a usage error prints the usage first
    assert "NATS at" not in done.stdout  # nothing was started


@pytest.mark.parametrize("command", ["local", "nats", "train", "demo"])
def test_help_shows_every_default(command: str) -> None:
    parser = importlib.import_module(COMMANDS[command][0]).build_parser()
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "COLUMNS": "10000"},  # one line per option: no value broken at a hyphen
    )
    text = done.stdout
    actions = parser._actions  # noqa: SLF001 (argparse has no public list)
    shown = [a for a in actions if a.option_strings and a.default not in (None, False, argparse.SUPPRESS)]
    assert shown
    for action in shown:
        assert f"default: {action.default}" in text, (command, action.option_strings)


def test_mvs_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == f"mvs {version('mvstylizer')}"
