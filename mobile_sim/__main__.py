"""``python -m mobile_sim`` / ``mvs phone``: run the simulated phone against a gateway."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from mobile_sim.client import DEFAULT_SIZE, PhoneConfig, run_phone
from mobile_sim.link_shim import LinkProfile
from mobile_sim.reconstruct import INTERMEDIATE_RENDERS, RECONSTRUCTION_MODES
from streaming.config import add_config_arguments, config_from_args
from streaming.runtime import run_main
from streaming.telemetry import setup_logging


def parse_size(text: str) -> tuple[int, int]:
    """'640x360' -> (640, 360); even, positive sides (the video encoder needs even sizes)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like 640x360, got {text!r}") from exc
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"size sides must be positive and even, got {text!r}")
    return width, height


def parse_smoothing_weight(text: str) -> float:
    """A temporal smoothing weight in [0, 1); 0 turns it off."""
    try:
        weight = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"smoothing weight must be a number, got {text!r}") from exc
    if not 0.0 <= weight < 1.0:
        raise argparse.ArgumentTypeError(f"smoothing weight must be in [0, 1), got {text!r}")
    return weight


PHONE_ONLY = ("gateway_urls", "ice_hosts")
"""PhoneConfig flags of ``mvs phone`` only (``mvs demo`` runs its own gateway on loopback)."""


def add_phone_arguments(p: argparse.ArgumentParser, out_default: Path | None) -> None:
    """Flags shared by ``mvs phone`` and ``mvs demo``: PhoneConfig's flags, and those it cannot derive."""
    add_config_arguments(p, PhoneConfig, exclude=PHONE_ONLY)
    p.set_defaults(out=out_default)
    p.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="capture size WxH (even)")
    p.add_argument(
        "--mode",
        choices=RECONSTRUCTION_MODES,
        default="live",
        help="live: warp each frame from the previous key; buffered: wait for the next key and blend both",
    )
    p.add_argument(
        "--render",
        choices=INTERMEDIATE_RENDERS,
        default="warp",
        help="warp: warp the stylized key to each frame; affine: ask the edge for the stylizer's colour maps "
        "instead and apply them to every frame (affine-flow: moved along the flow first; buffered: both keys' "
        "maps blended by time distance)",
    )
    p.add_argument(
        "--temporal-smoothing",
        type=parse_smoothing_weight,
        default=0.0,
        metavar="W",
        help="blend each output frame with the previous one warped along the flow, weight W in (0, 1) "
        "(less flicker at key changes, one more flow pair per frame; 0: off)",
    )
    link = p.add_argument_group("emulated network link to the edge (regions on one machine)")
    link.add_argument("--link-delay-ms", type=float, default=0.0, help="one-way delay")
    link.add_argument("--link-kbps", type=float, default=0.0, help="bandwidth each way (0: unlimited)")
    link.add_argument("--link-loss", type=float, default=0.0, help="share of datagrams dropped")
    p.add_argument("--log-level", default="warning")


def phone_config_from_args(args: argparse.Namespace, **overrides: object) -> PhoneConfig:
    """PhoneConfig from parsed flags (``overrides``, by field name, win)."""
    link = (
        LinkProfile(delay_ms=args.link_delay_ms, kbps=args.link_kbps, loss=args.link_loss)
        if (args.link_delay_ms or args.link_kbps or args.link_loss)
        else None
    )
    values: dict[str, object] = dict(
        size=args.size, mode=args.mode, render=args.render, temporal_smoothing=args.temporal_smoothing, link=link
    )
    values.update(overrides)
    return config_from_args(PhoneConfig, args, **values)


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
        result = run_main(run_phone(config))
        print(summary(result.report))


if __name__ == "__main__":
    main()
