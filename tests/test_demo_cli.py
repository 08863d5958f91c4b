"""``mvs demo`` end to end (nats-server, worker process, gateway, phone) and the CLI surface."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import pytest

from deploy.cli import COMMANDS
from deploy.local import build_parser, run_demo
from mobile_sim.__main__ import phone_config_from_args

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
