"""The stylizer workers of one site on this machine (``mvs demo``, ``mvs local``, bench.regions): child processes
started from one :class:`WorkerConfig` through :class:`deploy.launch.ServiceProcess`, and the workers' flags those
commands take (every ``mvs worker`` flag but the ones a site sets per worker)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from deploy.launch import ServiceProcess, service_args, stop_all, wait_ready, workers_discovered
from deploy.nats_auth import worker_id as nth_worker_id
from deploy.nats_servers import free_port
from edge_worker.federated import FederatedConfig
from edge_worker.service import WorkerConfig, preflight
from streaming.cli import ServiceOptions
from streaming.config import add_config_arguments, config_from_args
from streaming.nats_connect import connect_nats
from streaming.telemetry import DEFAULT_METRICS_HOST

WORKER_READY_TIMEOUT_S = 180.0
"""How long workers may take to load, quantize (int8) and warm up: ~30 s on 2 idle cores, 60-90 s under load."""
METRICS_HOST = DEFAULT_METRICS_HOST
LOCAL_WORKER = WorkerConfig(threads=1)
"""The workers' settings on this machine unless flags say otherwise: one torch thread each (they share the cores)."""
WORKER_LOG_LEVEL = "warning"


@dataclass
class WorkerSite:
    """The stylizer workers of one local site, as child processes, each started from :attr:`worker` (region, model,
    threads, ...) with its own id, NATS URL, buffer directory and metrics port."""

    nats_url: str
    worker: WorkerConfig = field(default_factory=lambda: LOCAL_WORKER)
    """Every worker's settings; its NATS URL is replaced by :attr:`nats_url` (or the one given per worker)."""
    options: ServiceOptions = field(default_factory=lambda: ServiceOptions(log_level=WORKER_LOG_LEVEL))
    discovery_url: str | None = None
    """URL :meth:`wait_for_workers` connects with (a user allowed to discover); None: ``nats_url``."""
    federated_dir: Path | None = None
    """With a directory, workers retrain and join federated learning (a key-frame buffer each, inside it)."""
    metrics: bool = False
    """Each worker serves Prometheus metrics on a free loopback port (:attr:`metrics_urls`)."""
    workers: dict[str, ServiceProcess] = field(default_factory=dict)
    """Worker processes by worker id."""
    metrics_urls: dict[str, str] = field(default_factory=dict)
    """Metrics URL of each worker started with :attr:`metrics`, by worker id."""

    @property
    def region(self) -> str:
        """The site's region."""
        return self.worker.region

    def worker_config(self, worker_id: str, nats_url: str | None = None, metrics_port: int = 0) -> WorkerConfig:
        """The config of the worker ``worker_id`` of this site; with ``metrics_port``, its metrics on that loopback
        port."""
        federated = self.worker.federated
        if self.federated_dir is not None:
            federated = dataclasses.replace(
                federated or FederatedConfig(self.federated_dir), buffer_dir=self.federated_dir / worker_id
            )
        config = dataclasses.replace(
            self.worker, nats_url=nats_url or self.nats_url, worker_id=worker_id, federated=federated
        )
        if metrics_port:
            config = dataclasses.replace(config, metrics_port=metrics_port, metrics_host=METRICS_HOST)
        return config

    def worker_flags(self, worker_id: str) -> list[str]:
        """``mvs worker`` flags of the worker ``worker_id`` of this site (no secret: the NATS URL goes in the
        environment)."""
        return service_args(self.worker_config(worker_id), self.options)

    def next_worker_id(self) -> str:
        """The id the site's next worker gets."""
        return nth_worker_id(self.region, len(self.workers))

    def worker_process(self, worker_id: str, nats_url: str | None = None, metrics_port: int = 0) -> ServiceProcess:
        """The ``python -m edge_worker`` child of the worker ``worker_id`` (not started)."""
        config = self.worker_config(worker_id, nats_url, metrics_port)
        # Own session (the default): Ctrl-C reaches the parent only, which stops the workers while NATS is still up.
        return ServiceProcess(config, options=self.options, name=f"stylizer worker {worker_id}")

    def start_worker(self, worker_id: str, nats_url: str | None = None) -> ServiceProcess:
        """Start one worker; its NATS URL (default :attr:`nats_url`; the worker's own credentials, when each worker
        has a user), which may hold a password, goes in its environment."""
        port = free_port(METRICS_HOST) if self.metrics else 0
        if port:
            self.metrics_urls[worker_id] = f"http://{METRICS_HOST}:{port}/metrics"
        self.workers[worker_id] = self.worker_process(worker_id, nats_url, port).start()
        return self.workers[worker_id]

    async def wait_for_workers(self, timeout_s: float = WORKER_READY_TIMEOUT_S) -> None:
        """Wait until every started worker answers on the region's discovery subject."""
        url = self.discovery_url or self.nats_url
        nc = await connect_nats(url, "mvs-local-discovery", service="local", tls_ca=self.worker.nats_ca)
        try:
            ready = workers_discovered(nc, self.region, lambda: self.workers)
            await wait_ready(self.workers.values(), ready, timeout_s, f"stylizer workers {sorted(self.workers)}")
        finally:
            await nc.close()

    def stop(self) -> None:
        """Terminate the workers (SIGTERM, then SIGKILL)."""
        stop_all(self.workers.values())
        self.workers.clear()
        self.metrics_urls.clear()


SITE_FIELDS = ("nats_url", "nats_ca", "region", "js_domain", "worker_id", "metrics_port", "metrics_host", "federated")
"""The worker's fields a site sets per worker; every other flag of :class:`WorkerConfig` is a flag of ``mvs demo`` and
``mvs local`` that their workers get (so a flag added to WorkerConfig reaches them with no other edit)."""


def add_worker_arguments(p: argparse.ArgumentParser, cls: type[WorkerConfig] = WorkerConfig) -> None:
    """The workers' flags (all of ``cls``'s but :data:`SITE_FIELDS`), defaults from :data:`LOCAL_WORKER`."""
    group = p.add_argument_group("the workers (mvs worker's flags)")
    add_config_arguments(group, cls, exclude=SITE_FIELDS)
    p.set_defaults(threads=LOCAL_WORKER.threads)


def worker_config(
    args: argparse.Namespace, prog: str, trainable: bool = False, cls: type[WorkerConfig] = WorkerConfig
) -> WorkerConfig:
    """The workers' settings from the flags, checked before anything starts (one line and exit 2 if they cannot
    run here); the DNN's or lite model's resolved settings are printed."""
    try:
        config = config_from_args(cls, args)
        settings = preflight(config, trainable=trainable)
    except ValueError as exc:
        raise SystemExit(f"{prog}: {exc}") from None
    if settings is not None:
        print(f"{prog}: model {config.model} on {settings.describe()}", flush=True)
    return config
