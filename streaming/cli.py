"""Flags every service shares, declared once (env fallbacks: MVS_NATS_URL, MVS_REGION)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from streaming.protocol import DEFAULT_NATS_URL, DEFAULT_REGION
from streaming.runtime import run_main
from streaming.telemetry import setup_logging


def add_service_arguments(p: argparse.ArgumentParser, region: bool = True) -> None:
    """--nats, --region (optional) and --log-level."""
    p.add_argument(
        "--nats", default=os.environ.get("MVS_NATS_URL", DEFAULT_NATS_URL), help="NATS URL (env MVS_NATS_URL)"
    )
    if region:
        p.add_argument("--region", default=os.environ.get("MVS_REGION", DEFAULT_REGION), help="region (env MVS_REGION)")
    p.add_argument(
        "--js-domain",
        default=os.environ.get("MVS_JS_DOMAIN") or None,
        help="JetStream domain of the stores (set when connected to a leaf node; env MVS_JS_DOMAIN)",
    )
    p.add_argument("--log-level", default="info", help="debug, info, warning or error")


def service_main(
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    service: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
) -> None:
    """Parse flags, set up logging, run the service until SIGINT/SIGTERM."""
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    with contextlib.suppress(asyncio.CancelledError):
        run_main(service(args))
