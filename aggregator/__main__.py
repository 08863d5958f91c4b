"""``python -m aggregator`` / ``mvs aggregator``: the cloud aggregator.

It never loads torch or the stylizer's code: ``--init`` takes a tensor blob (:mod:`streaming.tensors`), which
``mvs export-weights MODEL OUT`` writes from a stylizer model file on the edge side.
"""

from __future__ import annotations

import argparse
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from aggregator.service import (
    CRASH_POINTS,
    DEFAULT_MIN_UPDATES,
    DEFAULT_ROUND_TIMEOUT_S,
    Aggregator,
    AggregatorConfig,
)
from aggregator.strategies import DEFAULT_SERVER_LR, STRATEGIES
from aggregator.validation import DEFAULT_MAX_NORM, DEFAULT_MAX_STALENESS
from streaming.cli import add_service_arguments, service_main
from streaming.model_store import DEFAULT_KEEP_VERSIONS
from streaming.protocol import ProtocolError
from streaming.telemetry import DEFAULT_METRICS_HOST, start_metrics_server
from streaming.tensors import NamedArrays, decode_tensors


def build_parser() -> argparse.ArgumentParser:
    """CLI of the aggregator."""
    p = argparse.ArgumentParser(prog="mvs aggregator", description="Cloud aggregator: FedAvg rounds over edge deltas.")
    add_service_arguments(p, region=False)
    p.add_argument("--strategy", choices=sorted(STRATEGIES), default="fedavg")
    p.add_argument(
        "--server-lr",
        type=float,
        default=DEFAULT_SERVER_LR,
        help="multiply the aggregated delta by this (server SGD, Reddi et al. 2021; 1: plain average)",
    )
    p.add_argument("--min-updates", type=int, default=DEFAULT_MIN_UPDATES, help="close a round at this many deltas")
    p.add_argument("--round-timeout", type=float, default=DEFAULT_ROUND_TIMEOUT_S, help="or when this old (s)")
    p.add_argument("--keep-versions", type=int, default=DEFAULT_KEEP_VERSIONS, help="global versions kept")
    p.add_argument("--max-staleness", type=int, default=DEFAULT_MAX_STALENESS, help="versions a delta's base may lag")
    p.add_argument("--max-norm", type=float, default=DEFAULT_MAX_NORM, help="largest L2 norm of a delta")
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="initial weights if the store is empty: a tensor blob (convert a model file with mvs export-weights)",
    )
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus port (0: off)")
    p.add_argument("--metrics-host", default=DEFAULT_METRICS_HOST, help="address the metrics listen on")
    p.add_argument("--crash-after", choices=CRASH_POINTS, default="", help=argparse.SUPPRESS)
    return p


async def run(config: AggregatorConfig, initial: NamedArrays | None) -> None:
    """Run the aggregator until cancelled."""
    start_metrics_server(config.metrics_port, config.metrics_host)
    aggregator = Aggregator(config)
    await aggregator.start(initial)
    try:
        await aggregator.run()
    finally:
        await aggregator.stop()


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
    return AggregatorConfig(
        nats_url=args.nats,
        strategy=args.strategy,
        server_lr=args.server_lr,
        min_updates=args.min_updates,
        round_timeout_s=args.round_timeout,
        keep_versions=args.keep_versions,
        max_staleness=args.max_staleness,
        max_norm=args.max_norm,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        crash_after=args.crash_after,
        js_domain=args.js_domain,
    )


def _service(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    try:
        initial = initial_weights(args.init) if args.init is not None else None
    except (OSError, ValueError) as exc:  # a wrong --init: say so, not a traceback
        raise SystemExit(f"mvs aggregator: --init: {exc}") from exc
    return run(config_from_args(args), initial)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    service_main(argv, build_parser(), _service)


if __name__ == "__main__":
    main()
