"""``python -m mobile_sim`` / ``mvs phone``: run the simulated phone against a gateway."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from mobile_sim.client import PhoneConfig, run_phone
from mobile_sim.sources import SourceError
from streaming.cli import ServiceOptions
from streaming.config import add_config_arguments, config_from_args
from streaming.runtime import run_main
from streaming.telemetry import setup_logging

PHONE_LOG_LEVEL = "warning"
"""The phone (and ``mvs demo``) logs warnings and errors only: its summary is what a person reads."""

PHONE_ONLY = ("gateway_urls", "ice_hosts")
"""PhoneConfig flags of ``mvs phone`` only (``mvs demo`` runs its own gateway on loopback)."""


def add_phone_arguments(p: argparse.ArgumentParser, out_default: Path | None) -> None:
    """Flags shared by ``mvs phone`` and ``mvs demo``: PhoneConfig's flags and ``--log-level``."""
    add_config_arguments(p, PhoneConfig, exclude=PHONE_ONLY)
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


def summary(report: dict[str, object]) -> str:
    """A few lines a person reads after a run."""
    frames = report["frames"]
    keys = report["key_frames"]
    latency = report["latency_ms"]
    return json.dumps(
        {"frames": frames, "key_frames": keys, "latency_ms": latency, "throughput": report["throughput"]}, indent=2
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    config = phone_config_from_args(args)
    with contextlib.suppress(asyncio.CancelledError):
        try:
            result = run_main(run_phone(config))
        except SourceError as exc:  # a source that cannot be opened: say so, not a traceback
            raise SystemExit(f"mvs phone: --source: {exc}") from exc
        print(summary(result.report))


if __name__ == "__main__":
    main()
