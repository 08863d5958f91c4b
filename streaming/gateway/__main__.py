"""``python -m streaming.gateway`` / ``mvs gateway``: run an edge gateway."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from streaming import config
from streaming.cli import service_main, service_parser
from streaming.gateway.server import GatewayConfig, run


def build_parser() -> argparse.ArgumentParser:
    """CLI of the gateway: the flags of :class:`GatewayConfig`."""
    return service_parser("mvs gateway", "Edge gateway: WebRTC signaling and key frames to NATS.", GatewayConfig)


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """GatewayConfig from parsed flags."""
    return config.config_from_args(GatewayConfig, args)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    service_main(argv, build_parser(), lambda args: run(config_from_args(args)))


if __name__ == "__main__":
    main()
