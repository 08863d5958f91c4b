"""``python -m mobile_sim`` / ``mvs phone``: run the simulated phone against a gateway."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mobile_sim.client import PhoneConfig, load_style, run_phone
from mobile_sim.recorder import VIDEO_FILES
from mobile_sim.report import REPORT_FILE, human_summary
from mobile_sim.sources import SPEC_DEVICE, SourceError, open_source
from streaming.cli import ServiceOptions
from streaming.config import add_config_arguments, config_from_args, flag
from streaming.images import ImageDecodeError
from streaming.runtime import run_main
from streaming.telemetry import setup_logging

INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as a shell reports it)."""
PHONE_LOG_LEVEL = "warning"
"""The phone (and ``mvs demo``) logs warnings and errors only: its summary is what a person reads."""

PHONE_ONLY = ("gateway_urls", "ice_hosts")
"""PhoneConfig flags of ``mvs phone`` only (``mvs demo`` runs its own gateway on loopback)."""


def add_phone_arguments(p: argparse.ArgumentParser, out_default: Path | None) -> None:
    """Flags shared by ``mvs phone`` and ``mvs demo``: PhoneConfig's flags, ``--strict`` and ``--log-level``."""
    add_config_arguments(p, PhoneConfig, exclude=PHONE_ONLY)
    add_config_arguments(p, RunOptions)
    add_config_arguments(p, ServiceOptions)
    p.set_defaults(out=out_default, log_level=PHONE_LOG_LEVEL)


def phone_config_from_args(args: argparse.Namespace, **overrides: object) -> PhoneConfig:
    """PhoneConfig from parsed flags (``overrides``, by field name, win)."""
    return config_from_args(PhoneConfig, args, **overrides)


def build_parser() -> argparse.ArgumentParser:
    """CLI of the phone."""
    p = argparse.ArgumentParser(prog="mvs phone", description="Simulated phone: stream a source, rebuild it stylized.")
    add_config_arguments(p, PhoneConfig, exclude=[f.name for f in fields(PhoneConfig) if f.name not in PHONE_ONLY])
    add_phone_arguments(p, out_default=Path("out/phone"))
    return p


@dataclass
class RunOptions:
    """How ``mvs phone`` and ``mvs demo`` end."""

    strict: bool = field(
        default=False, metadata=flag("exit non-zero also when the run missed the live rate (outcome degraded)")
    )


def preflight(config: PhoneConfig) -> None:
    """What a run would fail on only after it started, checked first: the source opens (a camera is not opened
    twice), the style decodes, the output directory can be written. ``ValueError``: one line for a person."""
    if not config.source.startswith(f"{SPEC_DEVICE}:"):
        try:
            open_source(config.source, config.size, config.fps, config.frames).close()
        except SourceError as exc:
            raise ValueError(f"--source: {exc}") from None
    try:
        load_style(config.style)
    except (OSError, ImageDecodeError) as exc:
        raise ValueError(f"--style: {exc}") from None
    if config.out_dir is not None:
        try:
            config.out_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=config.out_dir):
                pass
        except OSError as exc:
            raise ValueError(f"--out {config.out_dir}: cannot write there ({exc.strerror or exc})") from None


def report_files(out: Path | None) -> list[Path]:
    """What a run wrote into ``out``."""
    return [] if out is None else [out / name for name in (*VIDEO_FILES, REPORT_FILE) if (out / name).is_file()]


def finish(prog: str, report: dict[str, Any], out: Path | None, strict: bool) -> None:
    """Print the run's summary; exit non-zero (one line, the cause) when it never streamed, or missed the live
    rate under ``strict``."""
    print(human_summary(report, report_files(out)), flush=True)
    status, reason = report["outcome"]["status"], report["outcome"]["reason"]
    if report["key_frames"]["ok"] == 0 and status != "complete":
        raise SystemExit(f"{prog}: never streamed: {reason}")
    if strict and status == "degraded":
        raise SystemExit(f"{prog}: {reason} (--strict)")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    config = phone_config_from_args(args)
    try:
        preflight(config)
    except ValueError as exc:
        raise SystemExit(f"mvs phone: {exc}") from None
    try:
        result = run_main(run_phone(config))
    except asyncio.CancelledError:
        print(f"mvs phone: interrupted; report in {config.out_dir}", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    except SourceError as exc:  # a source that stops yielding: say so, not a traceback
        raise SystemExit(f"mvs phone: --source: {exc}") from exc
    finish("mvs phone", result.report, config.out_dir, args.strict)


if __name__ == "__main__":
    main()
