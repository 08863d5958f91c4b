"""``python -m mobile_sim`` / ``mvs phone``: run the simulated phone against a gateway."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

from mobile_sim.client import (
    DEFAULT_FPS,
    DEFAULT_FRAMES,
    DEFAULT_GATEWAY_URL,
    DEFAULT_KEY_INTERVAL,
    DEFAULT_RESULT_TIMEOUT_MS,
    DEFAULT_SIZE,
    PhoneConfig,
    run_phone,
)
from mobile_sim.flow import DEFAULT_METHOD, FLOW_METHODS
from mobile_sim.keyframes import DEFAULT_KEY_POLICY, DEFAULT_MAX_INTERVAL, DEFAULT_MIN_INTERVAL, KEY_POLICIES
from mobile_sim.link_shim import LinkProfile
from mobile_sim.reconstruct import INTERMEDIATE_RENDERS, RECONSTRUCTION_MODES
from streaming.protocol import DEFAULT_REGION
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


def add_phone_arguments(p: argparse.ArgumentParser, out_default: Path | None) -> None:
    """Flags shared by ``mvs phone`` and ``mvs demo``."""
    p.add_argument(
        "--source",
        default="synthetic",
        help="'synthetic' (camera panning over a bundled photo), 'synthetic:<photo>', "
        "a video file path, or 'device:<index>'",
    )
    p.add_argument("--style", default=None, help="style image path (default: a bundled photo)")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="frames to stream")
    p.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="capture size WxH (even)")
    p.add_argument("--fps", type=float, default=DEFAULT_FPS, help="capture rate")
    p.add_argument(
        "--key-policy",
        choices=KEY_POLICIES,
        default=DEFAULT_KEY_POLICY,
        help="fixed: every --key-interval frames; codec: an encoder's IDR rule (cut vs previous frame); "
        "scene-cut: content change vs the last key; adaptive: when the warp would fail (occlusion, motion)",
    )
    p.add_argument("--key-interval", type=int, default=DEFAULT_KEY_INTERVAL, help="fixed policy: a key every K frames")
    p.add_argument(
        "--min-key-interval", type=int, default=DEFAULT_MIN_INTERVAL, help="other policies: fewest frames between keys"
    )
    p.add_argument(
        "--max-key-interval", type=int, default=DEFAULT_MAX_INTERVAL, help="other policies: most frames between keys"
    )
    p.add_argument("--flow", choices=FLOW_METHODS, default=DEFAULT_METHOD, help="optical flow method on the phone")
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
    p.add_argument(
        "--no-occlusion-fill",
        dest="fill_occlusions",
        action="store_false",
        help="plain warping: do not fill pixels failing the forward-backward check",
    )
    p.add_argument("--region", default=DEFAULT_REGION, help="region of the edge site")
    p.add_argument("--out", type=Path, default=out_default, help="output directory (videos + report.json)")
    p.add_argument(
        "--result-timeout-ms",
        type=float,
        default=DEFAULT_RESULT_TIMEOUT_MS,
        help="a key frame with no result after this counts as failed",
    )
    link = p.add_argument_group("emulated network link to the edge (regions on one machine)")
    link.add_argument("--link-delay-ms", type=float, default=0.0, help="one-way delay")
    link.add_argument("--link-kbps", type=float, default=0.0, help="bandwidth each way (0: unlimited)")
    link.add_argument("--link-loss", type=float, default=0.0, help="share of datagrams dropped")
    p.add_argument("--log-level", default="warning")


def phone_config_from_args(args: argparse.Namespace, **overrides: object) -> PhoneConfig:
    """PhoneConfig from parsed flags."""
    values: dict[str, object] = dict(
        source=args.source,
        style=args.style,
        frames=args.frames,
        size=args.size,
        fps=args.fps,
        key_interval=args.key_interval,
        key_policy=args.key_policy,
        min_key_interval=args.min_key_interval,
        max_key_interval=args.max_key_interval,
        flow=args.flow,
        mode=args.mode,
        fill_occlusions=args.fill_occlusions,
        render=args.render,
        temporal_smoothing=args.temporal_smoothing,
        region=args.region,
        out_dir=args.out,
        result_timeout_ms=args.result_timeout_ms,
        link=LinkProfile(delay_ms=args.link_delay_ms, kbps=args.link_kbps, loss=args.link_loss)
        if (args.link_delay_ms or args.link_kbps or args.link_loss)
        else None,
    )
    values.update(overrides)
    return PhoneConfig(**values)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    """CLI of the phone."""
    p = argparse.ArgumentParser(prog="mvs phone", description="Simulated phone: stream a source, rebuild it stylized.")
    p.add_argument("--gateway", default=DEFAULT_GATEWAY_URL, help="gateway signaling URL")
    p.add_argument("--ice-host", action="append", default=[], help="gather ICE candidates only here (repeatable)")
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
    config = phone_config_from_args(args, gateway_url=args.gateway.rstrip("/"), ice_hosts=tuple(args.ice_host))
    with contextlib.suppress(asyncio.CancelledError):
        result = run_main(run_phone(config))
        print(summary(result.report))


if __name__ == "__main__":
    main()
