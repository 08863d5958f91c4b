"""The whole pipeline on one machine: ``mvs demo``.

Starts a nats-server (JetStream, data in a temp dir), N stylizer worker processes, one gateway and
one simulated phone, streams the source live over WebRTC on loopback, writes
``stylized.mp4``, ``side_by_side.mp4`` and ``report.json``, and shuts everything down.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.nats import NatsServer, free_port
from edge_worker.model.int8 import PRECISIONS
from edge_worker.model.registry import DEFAULT_STYLIZER
from mobile_sim.__main__ import add_phone_arguments, phone_config_from_args, summary
from mobile_sim.client import Phone, PhoneConfig, PhoneResult
from streaming.config import NATS_CA_ENV, NATS_URL_ENV
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.gateway.stylize_client import discover_workers
from streaming.ice import LOOPBACK
from streaming.nats_connect import connect_nats
from streaming.runtime import die_with_parent, run_main
from streaming.telemetry import DEFAULT_METRICS_HOST, setup_logging

log = logging.getLogger(__name__)

WORKER_READY_TIMEOUT_S = 60.0
WORKER_PROBE_S = 0.2
WORKER_STOP_TIMEOUT_S = 10.0
METRICS_HOST = DEFAULT_METRICS_HOST


@dataclass
class LocalTopology:
    """Processes of a local edge site: workers as child processes (the gateway runs in-process)."""

    nats_url: str
    region: str
    model: str = DEFAULT_STYLIZER
    worker_threads: int = 1
    log_level: str = "warning"
    js_domain: str | None = None
    """JetStream domain of the stores (workers on a leaf node of the hub)."""
    discovery_url: str | None = None
    """URL :meth:`wait_for_workers` connects with (a user allowed to discover); None: ``nats_url``."""
    federated_dir: Path | None = None
    """With a directory, workers retrain and join federated learning (a key-frame buffer each, inside it)."""
    worker_args: tuple[str, ...] = ()
    """More ``mvs worker`` flags for every worker (e.g. ``--work-size 192``)."""
    metrics: bool = False
    """Each worker serves Prometheus metrics on a free loopback port (:attr:`metrics_urls`)."""
    nats_ca: Path | None = None
    """CA of the NATS servers' TLS certificates (with ``tls://`` URLs)."""
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    """Worker processes by worker id."""
    metrics_urls: dict[str, str] = field(default_factory=dict)
    """Metrics URL of each worker started with :attr:`metrics`, by worker id."""

    def start_worker(self, worker_id: str, nats_url: str | None = None) -> subprocess.Popen[bytes]:
        """Start one ``python -m edge_worker`` child; its NATS URL (default :attr:`nats_url`; the worker's own
        credentials, when each worker has a user) in its environment."""
        cmd = [
            sys.executable,
            "-m",
            "edge_worker",
            "--region",
            self.region,
            "--model",
            self.model,
            "--worker-id",
            worker_id,
            "--threads",
            str(self.worker_threads),
            "--log-level",
            self.log_level,
        ]
        if self.js_domain is not None:
            cmd += ["--js-domain", self.js_domain]
        if self.federated_dir is not None:
            cmd += ["--federated-dir", str(self.federated_dir / worker_id)]
        if self.metrics:
            port = free_port(METRICS_HOST)
            cmd += ["--metrics-port", str(port), "--metrics-host", METRICS_HOST]
            self.metrics_urls[worker_id] = f"http://{METRICS_HOST}:{port}/metrics"
        cmd += self.worker_args
        env = {**os.environ, NATS_URL_ENV: nats_url or self.nats_url}
        if self.nats_ca is not None:
            env[NATS_CA_ENV] = str(self.nats_ca)
        # Own session: Ctrl-C reaches the parent only, which stops the workers while NATS is still up.
        proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent, start_new_session=True)
        self.workers[worker_id] = proc
        return proc

    async def wait_for_workers(self, timeout_s: float = WORKER_READY_TIMEOUT_S) -> None:
        """Wait until every started worker answers on the region's discovery subject."""
        url = self.discovery_url or self.nats_url
        nc = await connect_nats(url, "mvs-local-discovery", service="local", tls_ca=self.nats_ca)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                exited = [worker_id for worker_id, p in self.workers.items() if p.poll() is not None]
                if exited:
                    raise RuntimeError(f"stylizer worker(s) {exited} exited during start-up")
                found = {info.worker_id for info in await discover_workers(nc, self.region, WORKER_PROBE_S)}
                if set(self.workers) <= found:
                    return
            raise TimeoutError(f"stylizer workers {sorted(self.workers)} did not all answer within {timeout_s} s")
        finally:
            await nc.close()

    def stop(self) -> None:
        """Terminate the workers (SIGTERM, then SIGKILL)."""
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers.values():
            try:
                proc.wait(timeout=WORKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.workers.clear()
        self.metrics_urls.clear()


async def run_demo(
    phone_config: PhoneConfig,
    workers: int = 1,
    model: str = DEFAULT_STYLIZER,
    log_level: str = "warning",
    worker_threads: int = 1,
    worker_args: Sequence[str] = (),
) -> PhoneResult:
    """Start NATS, workers and a gateway; run the phone against them; stop everything."""
    with NatsServer(regions=[phone_config.region]) as server:  # the setup creates the region's buckets
        topology = LocalTopology(
            server.url,
            phone_config.region,
            model=model,
            log_level=log_level,
            worker_threads=worker_threads,
            worker_args=tuple(worker_args),
        )
        gateway = Gateway(GatewayConfig(port=0, nats_url=server.url, region=phone_config.region, ice_hosts=LOOPBACK))
        try:
            for i in range(workers):
                topology.start_worker(f"{phone_config.region}-worker-{i}")
            await topology.wait_for_workers()
            await gateway.start()
            phone_config.gateway_urls = (gateway.url,)
            phone_config.ice_hosts = LOOPBACK
            return await Phone(phone_config).run()
        finally:
            await gateway.stop()
            topology.stop()


def build_parser() -> argparse.ArgumentParser:
    """CLI of the demo."""
    p = argparse.ArgumentParser(
        prog="mvs demo",
        description="Run the whole pipeline locally on a bundled sample: nats-server, stylizer worker(s), "
        "gateway and a simulated phone streaming over WebRTC on loopback.",
    )
    add_phone_arguments(p, out_default=Path("out/demo"))
    p.add_argument("--workers", type=int, default=1, help="stylizer worker processes")
    p.add_argument(
        "--model",
        default=DEFAULT_STYLIZER,
        help="color-transfer, dnn (the bundled paper model), lite (the ImageNet-encoder model) or a model file (.pt) "
        "(default: %(default)s)",
    )
    p.add_argument("--worker-threads", type=int, default=1, help="torch threads per worker (default: %(default)s)")
    p.add_argument(
        "--work-size",
        type=int,
        default=0,
        help="the DNN's working size, short side in pixels (0: the model file's own) (default: %(default)s)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=PRECISIONS[0],
        help="the DNN's network on the CPU: fp32, or int8 (quantized at worker start) (default: %(default)s)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, json_lines=False)
    result = run_main(
        run_demo(
            phone_config_from_args(args),
            workers=args.workers,
            model=args.model,
            log_level=args.log_level,
            worker_threads=args.worker_threads,
            worker_args=("--work-size", str(args.work_size), "--precision", args.precision),
        )
    )
    print(summary(result.report))
    print(f"wrote {args.out}/stylized.mp4, {args.out}/side_by_side.mp4, {args.out}/report.json")


if __name__ == "__main__":
    main()
