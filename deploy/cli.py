"""``mvs``: one command for every part (each part is also ``python -m <package>``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version

DISTRIBUTION = "mvstylizer"

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("deploy.demo", "run the whole pipeline locally on a bundled sample"),
    "local": (
        "deploy.local_deployment",
        "a multi-region deployment on this machine: NATS hub + leaf nodes, gateways, workers",
    ),
    "gateway": ("streaming.gateway.__main__", "edge gateway: WebRTC signaling, key frames to NATS"),
    "worker": ("edge_worker.__main__", "stylizer worker on mvs.<region>.stylize"),
    "phone": ("mobile_sim.__main__", "simulated phone streaming to a gateway"),
    "aggregator": ("aggregator.__main__", "cloud aggregator: FedAvg rounds into versioned global models"),
    "export-weights": ("edge_worker.export_weights", "a model's learned weights as a tensor blob (aggregator --init)"),
    "train": ("edge_worker.train", "offline training of the DNN (Eq. 5) or the lite head"),
    "nats": ("deploy.nats_cli", "a local nats-server with JetStream"),
    "setup": ("deploy.nats_setup", "create a deployment's JetStream buckets and streams (the operator's setup)"),
    "token": ("streaming.tokens", "print an offer admission token (secret from $MVS_TOKEN_SECRET)"),
}


def _entry(module: str) -> Callable[[Sequence[str]], None]:
    entry: Callable[[Sequence[str]], None] = importlib.import_module(module).main
    return entry


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch ``mvs <command> ...`` to the command's own parser."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="mvs", description="MVStylizer: live photorealistic video style transfer.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version(DISTRIBUTION)}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return
    _entry(COMMANDS[argv[0]][0])(argv[1:])


if __name__ == "__main__":
    main()
