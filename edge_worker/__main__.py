"""``python -m edge_worker`` / ``mvs worker``: run a stylizer worker."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from edge_worker.federated import NotTrainableError
from edge_worker.service import WorkerConfig, preflight, run
from streaming import config
from streaming.cli import service_main, service_parser


def build_parser() -> argparse.ArgumentParser:
    """CLI of the worker: the flags of :class:`WorkerConfig` (``--federated-dir`` turns federated learning on)."""
    return service_parser("mvs worker", "Stylizer worker: serves mvs.<region>.stylize.", WorkerConfig)


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    """WorkerConfig from parsed flags."""
    return config.config_from_args(WorkerConfig, args)


async def serve(args: argparse.Namespace) -> None:
    """Run the worker; it returns only once its NATS connection is closed for good, and then the process exits
    with status 1 for its orchestrator to restart it."""
    config = config_from_args(args)
    try:
        preflight(config)
    except ValueError as exc:  # a missing device or model file, int8 on CUDA: one line before anything starts
        raise SystemExit(f"mvs worker: {exc}") from None
    await run(config)
    raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    try:
        service_main(argv, build_parser(), serve)
    except NotTrainableError as exc:  # a colour-transfer worker with --federated-dir: say so, not a traceback
        raise SystemExit(f"mvs worker: {exc}") from exc


if __name__ == "__main__":
    main()
