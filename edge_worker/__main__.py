"""``python -m edge_worker`` / ``mvs worker``: run a stylizer worker."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from edge_worker.federated import DEFAULT_IDLE_S, DEFAULT_PUBLISH_EVERY, FederatedConfig
from edge_worker.key_buffer import DEFAULT_CAPACITY
from edge_worker.model.registry import DEFAULT_STYLIZER
from edge_worker.service import DEFAULT_QUEUE_SIZE, DEFAULT_STYLE_CACHE, WorkerConfig, default_worker_id, run
from streaming.cli import add_service_arguments, service_main
from streaming.telemetry import DEFAULT_METRICS_HOST


def build_parser() -> argparse.ArgumentParser:
    """CLI of the worker."""
    p = argparse.ArgumentParser(prog="mvs worker", description="Stylizer worker: serves mvs.<region>.stylize.")
    add_service_arguments(p)
    p.add_argument(
        "--model", default=DEFAULT_STYLIZER, help="color-transfer, dnn (the bundled paper model) or a model file (.pt)"
    )
    p.add_argument("--worker-id", default=None, help="id in replies and logs (default host-pid)")
    p.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE, help="requests queued (newest win)")
    p.add_argument("--style-cache", type=int, default=DEFAULT_STYLE_CACHE, help="prepared styles kept")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus port (0: off); up once the worker serves")
    p.add_argument("--metrics-host", default=DEFAULT_METRICS_HOST, help="address the metrics listen on")
    p.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stylize a synthetic frame before serving (default) so no request pays the model's one-time set-up",
    )
    fl = p.add_argument_group("federated learning (needs a trainable model)")
    fl.add_argument("--federated-dir", type=Path, default=None, help="key-frame buffer directory; enables retraining")
    fl.add_argument("--buffer-size", type=int, default=DEFAULT_CAPACITY, help="key frames kept for retraining")
    fl.add_argument("--idle-s", type=float, default=DEFAULT_IDLE_S, help="train after this long without requests")
    fl.add_argument("--publish-every", type=int, default=DEFAULT_PUBLISH_EVERY, help="trained samples per delta")
    return p


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    """WorkerConfig from parsed flags."""
    return WorkerConfig(
        nats_url=args.nats,
        region=args.region,
        model=args.model,
        worker_id=args.worker_id or default_worker_id(),
        queue_size=args.queue_size,
        style_cache=args.style_cache,
        threads=args.threads,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        js_domain=args.js_domain,
        warmup=args.warmup,
        federated=None
        if args.federated_dir is None
        else FederatedConfig(
            buffer_dir=args.federated_dir,
            buffer_size=args.buffer_size,
            idle_s=args.idle_s,
            publish_every=args.publish_every,
        ),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    service_main(argv, build_parser(), lambda args: run(config_from_args(args)))


if __name__ == "__main__":
    main()
