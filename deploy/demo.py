"""The whole pipeline on one machine: ``mvs demo``.

Starts a nats-server (JetStream, data in a temp dir), N stylizer worker processes, one gateway and
one simulated phone, streams the source live over WebRTC on loopback, writes
``stylized.mp4``, ``side_by_side.mp4`` and ``report.json``, and shuts everything down.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from deploy.nats_auth import worker_id as nth_worker_id
from deploy.nats_servers import NatsServer, free_port
from edge_worker.model.registry import DEFAULT_STYLIZER
from edge_worker.service import WorkerConfig, preflight
from mobile_sim.__main__ import INTERRUPTED, add_phone_arguments, finish, phone_config_from_args
from mobile_sim.__main__ import preflight as phone_preflight
from mobile_sim.client import Phone, PhoneConfig, PhoneResult
from streaming.cli import DefaultsHelpFormatter
from streaming.config import NATS_CA_ENV, NATS_URL_ENV, add_config_arguments, config_flags, config_from_args
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.gateway.stylize_client import discover_workers
from streaming.ice import LOOPBACK
from streaming.nats_connect import connect_nats
from streaming.runtime import dying_with_parent, run_main
from streaming.telemetry import DEFAULT_METRICS_HOST, setup_logging

log = logging.getLogger(__name__)

WORKER_READY_TIMEOUT_S = 180.0
"""How long workers may take to load, quantize (int8) and warm up: ~30 s on 2 idle cores, 60-90 s under load."""
WORKER_PROBE_S = 0.2
WORKER_STOP_TIMEOUT_S = 10.0
METRICS_HOST = DEFAULT_METRICS_HOST


class StartupError(RuntimeError):
    """A worker exited or did not answer during start-up (the message says which and how long was waited)."""


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

    def worker_flags(self, worker_id: str, metrics_port: int | None = None) -> list[str]:
        """``mvs worker`` flags of the worker ``worker_id`` of this site (no secret: the NATS URL goes in the
        environment); with ``metrics_port``, its metrics on that loopback port."""
        flags = ["--region", self.region, "--model", self.model, "--worker-id", worker_id]
        flags += ["--threads", str(self.worker_threads), "--log-level", self.log_level]
        if self.js_domain is not None:
            flags += ["--js-domain", self.js_domain]
        if self.federated_dir is not None:
            flags += ["--federated-dir", str(self.federated_dir / worker_id)]
        if metrics_port is not None:
            flags += ["--metrics-port", str(metrics_port), "--metrics-host", METRICS_HOST]
        return flags + list(self.worker_args)

    def next_worker_id(self) -> str:
        """The id the site's next worker gets."""
        return nth_worker_id(self.region, len(self.workers))

    def start_worker(self, worker_id: str, nats_url: str | None = None) -> subprocess.Popen[bytes]:
        """Start one ``python -m edge_worker`` child; its NATS URL (default :attr:`nats_url`; the worker's own
        credentials, when each worker has a user), which may hold a password, in its environment."""
        port = free_port(METRICS_HOST) if self.metrics else None
        cmd = [sys.executable, "-m", "edge_worker", *self.worker_flags(worker_id, port)]
        if port is not None:
            self.metrics_urls[worker_id] = f"http://{METRICS_HOST}:{port}/metrics"
        env = {**os.environ, NATS_URL_ENV: nats_url or self.nats_url}
        if self.nats_ca is not None:
            env[NATS_CA_ENV] = str(self.nats_ca)
        # Own session: Ctrl-C reaches the parent only, which stops the workers while NATS is still up.
        proc = subprocess.Popen(dying_with_parent(cmd), env=env, start_new_session=True)
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
                    raise StartupError(f"stylizer worker(s) {exited} exited during start-up (see their log above)")
                found = {info.worker_id for info in await discover_workers(nc, self.region, WORKER_PROBE_S)}
                if set(self.workers) <= found:
                    return
            raise StartupError(f"stylizer workers {sorted(self.workers)} did not all answer within {timeout_s:g} s")
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
    progress: Callable[[str], None] | None = None,
) -> PhoneResult:
    """Start NATS, workers and a gateway; run the phone against them; stop everything. ``progress`` hears what is
    being started (a line each)."""
    say = progress or (lambda line: None)
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
            for _ in range(workers):
                topology.start_worker(topology.next_worker_id())
            say(f"NATS at {server.url}; {workers} {model} worker(s) loading and warming up...")
            started = time.monotonic()
            await topology.wait_for_workers()
            say(f"worker(s) ready in {time.monotonic() - started:.1f} s; streaming {phone_config.frames} frames")
            await gateway.start()
            phone_config.gateway_urls = (gateway.url,)
            phone_config.ice_hosts = LOOPBACK
            return await Phone(phone_config).run()
        finally:
            await gateway.stop()
            topology.stop()


WORKER_MODEL_FIELDS = ("model", "device", "work_size", "precision")
"""The worker's flags ``mvs demo`` and ``mvs local`` take (derived from WorkerConfig) and hand to their workers."""


def add_worker_model_arguments(p: argparse.ArgumentParser) -> None:
    """The worker's model flags (:data:`WORKER_MODEL_FIELDS`), derived from :class:`WorkerConfig`."""
    group = p.add_argument_group("the workers' model (mvs worker's flags)")
    add_config_arguments(
        group, WorkerConfig, exclude=[f.name for f in fields(WorkerConfig) if f.name not in WORKER_MODEL_FIELDS]
    )


def worker_model_config(args: argparse.Namespace, prog: str, trainable: bool = False) -> WorkerConfig:
    """The workers' model settings from the flags, checked before anything starts (one line and exit 2 if they
    cannot run here); the DNN's or lite model's resolved settings are printed."""
    config = config_from_args(WorkerConfig, args)
    try:
        settings = preflight(config, trainable=trainable)
    except ValueError as exc:
        raise SystemExit(f"{prog}: {exc}") from None
    if settings is not None:
        print(f"{prog}: model {config.model} on {settings.describe()}", flush=True)
    return config


def build_parser() -> argparse.ArgumentParser:
    """CLI of the demo."""
    p = argparse.ArgumentParser(
        prog="mvs demo",
        description="Run the whole pipeline locally on a bundled sample: nats-server, stylizer worker(s), "
        "gateway and a simulated phone streaming over WebRTC on loopback.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_phone_arguments(p, out_default=Path("out/demo"))
    p.add_argument("--workers", type=int, default=1, help="stylizer worker processes")
    p.add_argument("--worker-threads", type=int, default=1, help="torch threads per worker")
    add_worker_model_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, json_lines=False)
    phone = phone_config_from_args(args)
    try:
        phone_preflight(phone)
    except ValueError as exc:
        raise SystemExit(f"mvs demo: {exc}") from None
    worker = worker_model_config(args, "mvs demo")
    try:
        result = run_main(
            run_demo(
                phone,
                workers=args.workers,
                model=worker.model,
                log_level=args.log_level,
                worker_threads=args.worker_threads,
                worker_args=config_flags(worker, set(WORKER_MODEL_FIELDS) - {"model"}),
                progress=lambda line: print(f"mvs demo: {line}", flush=True),
            )
        )
    except StartupError as exc:
        raise SystemExit(f"mvs demo: {exc}") from None
    except asyncio.CancelledError:
        print(f"mvs demo: interrupted; what the phone had is in {phone.out_dir}", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    finish("mvs demo", result.report, phone.out_dir, args.strict)


if __name__ == "__main__":
    main()
