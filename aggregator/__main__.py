"""``python -m aggregator`` / ``mvs aggregator``: the cloud aggregator.

It never loads torch or the stylizer's code: ``--init`` takes a tensor blob (:mod:`streaming.tensors`), which
``mvs export-weights MODEL OUT`` writes from a stylizer model file on the edge side.
"""

from __future__ import annotations

import argparse
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from aggregator.service import Aggregator, AggregatorConfig
from streaming import config
from streaming.cli import service_main, service_parser
from streaming.protocol import ProtocolError
from streaming.telemetry import start_health_server
from streaming.tensors import NamedArrays, decode_tensors


def build_parser() -> argparse.ArgumentParser:
    """CLI of the aggregator: the flags of :class:`AggregatorConfig`."""
    return service_parser("mvs aggregator", "Cloud aggregator: FedAvg rounds over edge deltas.", AggregatorConfig)


async def run(config: AggregatorConfig, initial: NamedArrays | None) -> None:
    """Run the aggregator until cancelled, with its health endpoint on ``--metrics-port``: ``/metrics``
    (Prometheus), ``/healthz`` (200 once started and while NATS is connected and JetStream answers: readiness) and
    ``/livez`` (200 unless its NATS connection is closed for good: liveness; during an outage it reconnects by
    itself). The endpoint is up from the start, so a slow start (NATS not there yet) reads unready, not dead."""
    aggregator = Aggregator(config)
    health = await start_health_server(
        config.metrics_port,
        config.metrics_host,
        ready=aggregator.ready,
        live=aggregator.live,
        details=lambda: {"jetstream": aggregator.jetstream_available},
    )
    try:
        await aggregator.start(initial)
        await aggregator.run()
    finally:
        await aggregator.stop()
        if health is not None:
            await health.cleanup()


def initial_weights(path: Path) -> NamedArrays:
    """The weights in a tensor blob as written by :mod:`streaming.tensors` (``mvs export-weights``).

    ``ValueError`` for anything else, a stylizer model file included, naming the command that converts it.
    """
    try:
        return decode_tensors(path.read_bytes())
    except ProtocolError as exc:
        raise ValueError(
            f"{path}: {exc}. A stylizer model file must be converted first: "
            f"mvs export-weights {path} OUT, then --init OUT"
        ) from exc


def config_from_args(args: argparse.Namespace) -> AggregatorConfig:
    """AggregatorConfig from parsed flags."""
    return config.config_from_args(AggregatorConfig, args)


def _service(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    settings = config_from_args(args)
    try:
        initial = initial_weights(settings.init) if settings.init is not None else None
    except (OSError, ValueError) as exc:  # a wrong --init: say so, not a traceback
        raise SystemExit(f"mvs aggregator: --init: {exc}") from exc
    return run(settings, initial)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    service_main(argv, build_parser(), _service)


if __name__ == "__main__":
    main()
