"""``python -m streaming.gateway`` / ``mvs gateway``: run an edge gateway."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from streaming.cli import add_service_arguments, service_main
from streaming.gateway.server import (
    DEFAULT_DEADLINE_MS,
    DEFAULT_FIRST_ATTEMPT_MS,
    DEFAULT_HTTP_PORT,
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_WAITING,
    GatewayConfig,
    run,
)


def build_parser() -> argparse.ArgumentParser:
    """CLI of the gateway."""
    p = argparse.ArgumentParser(
        prog="mvs gateway", description="Edge gateway: WebRTC signaling and key frames to NATS."
    )
    add_service_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="HTTP listen address")
    p.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT, help="HTTP port (0: any free port)")
    p.add_argument(
        "--deadline-ms", type=float, default=DEFAULT_DEADLINE_MS, help="budget per key frame, retry included"
    )
    p.add_argument("--first-attempt-ms", type=float, default=DEFAULT_FIRST_ATTEMPT_MS, help="budget of the first try")
    p.add_argument("--max-inflight", type=int, default=DEFAULT_MAX_INFLIGHT, help="key frames per phone in flight")
    p.add_argument("--max-waiting", type=int, default=DEFAULT_MAX_WAITING, help="key frames per phone queued")
    p.add_argument("--max-sessions", type=int, default=DEFAULT_MAX_SESSIONS, help="phones at once")
    p.add_argument("--ice-host", action="append", default=[], help="gather ICE candidates only here (repeatable)")
    return p


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """GatewayConfig from parsed flags."""
    return GatewayConfig(
        host=args.host,
        port=args.port,
        nats_url=args.nats,
        region=args.region,
        deadline_ms=args.deadline_ms,
        first_attempt_ms=args.first_attempt_ms,
        max_inflight=args.max_inflight,
        max_waiting=args.max_waiting,
        max_sessions=args.max_sessions,
        ice_hosts=tuple(args.ice_host),
        js_domain=args.js_domain,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    service_main(argv, build_parser(), lambda args: run(config_from_args(args)))


if __name__ == "__main__":
    main()
