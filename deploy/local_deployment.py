"""``mvs local``: a whole multi-region deployment on one machine, until Ctrl-C.

A NATS hub (JetStream in domain ``hub``: styles, models, deltas) and one leaf node per edge region;
per region, its stylizer workers (child processes) and its gateway (in this process); with
``--federated``, the aggregator (in this process) and retraining workers. Regions come from
``--regions FILE`` (``deploy/regions.toml``) or ``--region NAME`` flags. ``--secure`` turns on the
per-role NATS users and permissions of :mod:`deploy.nats_auth`, TLS on every NATS link (a fresh private CA,
:mod:`deploy.certs`), HTTPS and admission tokens at the gateways; it is off by default, like ``mvs nats``. The
gateways' certificates come from a CA kept in a state directory, so a phone trusts it after one install, and the
summary prints the https URL (with a phone token in its fragment) that a person opens on the phone.
Secrets (worker credentials, the token secret, a phone token) go to files of mode 0600 in a private temp dir; the
summary names the files, never their contents, but for the phone token in the fragment of the URL to open.
Phones are run separately: the summary prints each region's ``mvs phone`` command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import math
import os
import shlex
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from aggregator.service import Aggregator, AggregatorConfig
from aggregator.strategies import STRATEGIES
from deploy.certs import CA_FILE, STATE_DIR_ENV, gateway_certificate, host_names, is_address, state_dir
from deploy.nats_auth import AGGREGATOR_USER, gateway_user, worker_id, worker_user
from deploy.nats_servers import HUB_DOMAIN, NatsHubAndLeaves, free_port
from deploy.observability_gen import ALERTS_FILE, alert_rules, local_prometheus_config
from deploy.regions import CLUSTER_HUB_SERVERS, Hub, Region, load_hub, load_regions
from deploy.worker_site import (
    LOCAL_WORKER,
    METRICS_HOST,
    WORKER_LOG_LEVEL,
    WorkerSite,
    add_worker_arguments,
    worker_config,
)
from edge_worker.export_weights import learned_weights
from edge_worker.model.registry import DNN_NAME, LITE_LOOK_NAME, LITE_NAME, MODEL_SUFFIXES
from edge_worker.service import WorkerConfig
from streaming.cli import DefaultsHelpFormatter, ServiceOptions
from streaming.config import NATS_CA_ENV, NATS_URL_ENV, REGION_ENV, add_config_arguments, flag
from streaming.config import config_from_args as service_config
from streaming.gateway.server import DEFAULT_HTTP_PORT, Gateway, GatewayConfig
from streaming.ice import LOOPBACK
from streaming.runtime import run_main
from streaming.telemetry import setup_logging, start_health_server, view_metrics
from streaming.tokens import TOKEN_ENV, TOKEN_SECRET_ENV, issue, new_secret

log = logging.getLogger(__name__)

SPARE_WORKERS = 1
"""Credentials made per region beyond its workers: for the summary's "more worker" command (one per worker)."""


@dataclass
class LocalConfig:
    """What ``mvs local`` starts (its flags are derived from the fields with ``flag`` metadata and the workers')."""

    regions: list[Region]
    worker: WorkerConfig = field(default_factory=lambda: LOCAL_WORKER)
    """Every worker's settings (model, threads, work size, ...); each site sets region, id, NATS and buffers."""
    secure: bool = field(
        default=False,
        metadata=flag(
            "per-role NATS users and subject permissions, TLS on every NATS link, HTTPS and admission tokens at the "
            "gateways (off: anyone may do anything)"
        ),
    )
    federated: bool = field(
        default=False, metadata=flag("run the aggregator; workers retrain (needs a trainable model)")
    )
    strategy: str = field(
        default="fedavg",
        metadata=flag(
            "the aggregator's rule: median or trimmed-mean resist a few poisoned deltas", choices=sorted(STRATEGIES)
        ),
    )
    log_level: str = field(default=WORKER_LOG_LEVEL, metadata=flag("debug, info, warning or error"))
    backhaul_delay_ms: float = 0.0
    """Emulated one-way delay between each leaf node and the hub (edge to cloud); 0: none."""
    hub_servers: int | None = field(
        default=None,
        metadata=flag(
            f"nats-server processes of the hub, one JetStream cluster (default: the regions file's [hub] servers, "
            f"else {CLUSTER_HUB_SERVERS}; 1: a lone server)"
        ),
    )
    gateway_host: str = field(
        default="127.0.0.1", metadata=flag("the gateways' listen address: 0.0.0.0 for phones on the LAN", name="host")
    )
    public_names: tuple[str, ...] = field(
        default=(),
        metadata=flag(
            "a host name phones use for the gateways (repeatable); with --secure their certificate covers it, "
            "besides this host's name and addresses",
            name="public-name",
        ),
    )
    state_dir: Path | None = field(
        default=None,
        metadata=flag(
            f"where the gateways' CA is kept across runs (default: ${STATE_DIR_ENV}, else ~/.local/state/mvstylizer)"
        ),
    )

    @property
    def hub(self) -> Hub:
        """The hub's servers (:data:`CLUSTER_HUB_SERVERS` unless set)."""
        return Hub(CLUSTER_HUB_SERVERS if self.hub_servers is None else self.hub_servers)

    def __post_init__(self) -> None:
        self.hub_servers = self.hub.servers  # resolved, and a ValueError on a count out of range
        if self.federated:
            federated_init(self.worker.model)  # ValueError now rather than after NATS started


@dataclass
class LocalSecrets:
    """The credentials of a secure local run, in files of mode 0600 in a private temp dir (never printed)."""

    directory: Path
    token_secret: str
    _tmp: tempfile.TemporaryDirectory[str]

    @property
    def token_secret_file(self) -> Path:
        """The gateways' token signing secret (for ``mvs token``)."""
        return self.directory / "token-secret"

    @property
    def phone_token_file(self) -> Path:
        """An admission token for phones (any region, a day)."""
        return self.directory / "phone.token"

    def worker_env_file(self, worker: str) -> Path:
        """``MVS_NATS_URL`` (with the worker's own password), ``MVS_NATS_CA``, ``MVS_REGION`` of the worker with id
        ``worker``: a credential per worker, which may act as that worker only."""
        return self.directory / f"worker-{worker}.env"

    @classmethod
    def write(cls, deployment: LocalDeployment, regions: Sequence[Region]) -> LocalSecrets:
        """Write the secrets of ``deployment`` (NATS started) into a new private dir."""
        tmp = tempfile.TemporaryDirectory(prefix="mvs-local-secrets-")  # mode 0700
        secrets = cls(Path(tmp.name), new_secret(), tmp)
        _private(secrets.token_secret_file, secrets.token_secret + "\n")
        _private(secrets.phone_token_file, issue(secrets.token_secret, "mvs-local-phone") + "\n")
        for region in regions:  # the spare credential of each region (the running workers' are in their env)
            spare = spare_worker(region)
            env = {
                NATS_URL_ENV: deployment.url(region.name, worker_user(spare)),
                NATS_CA_ENV: str(deployment.nats_ca),
                REGION_ENV: region.name,
            }
            _private(secrets.worker_env_file(spare), "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
        return secrets

    def cleanup(self) -> None:
        """Remove the files."""
        self._tmp.cleanup()


def spare_worker(region: Region) -> str:
    """The id of a region's spare worker credential (a worker started later, by hand)."""
    return worker_id(region.name, region.workers)


def _private(path: Path, text: str) -> None:
    """Write ``text`` to a new file only its owner can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _aggregator_series(name: str, labels: dict[str, str]) -> bool:
    """The aggregator's own series in this process (the gateways export theirs)."""
    return name.startswith("mvs_aggregator_") or labels.get("service") == "aggregator"


def federated_init(model: str) -> Path:
    """The initial global weights of federated learning: the model the workers serve."""
    if model == DNN_NAME:
        from edge_worker.model.stylizer import DEFAULT_MODEL_PATH

        return DEFAULT_MODEL_PATH
    if model in (LITE_NAME, LITE_LOOK_NAME):
        from edge_worker.model.lite import DEFAULT_LITE_PATH, LITE_LOOK_PATH

        return DEFAULT_LITE_PATH if model == LITE_NAME else LITE_LOOK_PATH
    if model.endswith(MODEL_SUFFIXES):
        return Path(model)
    raise ValueError(
        f"federated learning needs a trainable model ({DNN_NAME!r}, {LITE_NAME!r} or a model file), not {model!r}"
    )


@dataclass
class LocalDeployment:
    """The running parts of ``mvs local``; :meth:`start` then :meth:`stop`."""

    config: LocalConfig
    nats: NatsHubAndLeaves | None = None
    sites: dict[str, WorkerSite] = field(default_factory=dict)
    """Workers by region."""
    gateways: dict[str, Gateway] = field(default_factory=dict)
    aggregator: Aggregator | None = None
    _rounds: asyncio.Task[None] | None = None
    _aggregator_health: web.AppRunner | None = None
    _prometheus: tempfile.TemporaryDirectory[str] | None = None
    aggregator_metrics_url: str = ""
    say: Callable[[str], None] = field(default=lambda line: log.info(line))
    """Where the progress of rounds goes (``mvs local``: printed)."""
    _buffers: tempfile.TemporaryDirectory[str] | None = None
    secrets: LocalSecrets | None = None
    """With --secure: where the credentials were written."""

    async def start(self) -> None:
        """Start NATS, the aggregator (federated), every region's workers, then its gateway."""
        regions = self.config.regions
        init = federated_init(self.config.worker.model) if self.config.federated else None
        self.nats = NatsHubAndLeaves(
            [r.name for r in regions if r.nats == "leaf"],
            secure=self.config.secure,
            cloud_regions=[r.name for r in regions if r.nats == "hub"],
            backhaul_delay_ms=self.config.backhaul_delay_ms,
            tls=self.config.secure,
            workers={r.name: r.workers + SPARE_WORKERS for r in regions},
            hub_servers=self.config.hub.servers,
        ).start()
        try:
            if self.config.secure:
                self.secrets = LocalSecrets.write(self, regions)
            if init is not None:
                await self._start_aggregator(init)
            for region in regions:
                self.sites[region.name] = self._start_workers(region)
            await asyncio.gather(*(site.wait_for_workers() for site in self.sites.values()))
            cert, key = self._gateway_certificate() if self.config.secure else (None, None)
            for region in regions:
                gateway = Gateway(
                    GatewayConfig(
                        port=region.gateway_port,
                        nats_url=self.url(region.name, gateway_user(region.name)),
                        nats_ca=self.nats_ca,
                        region=region.name,
                        js_domain=HUB_DOMAIN,
                        host=self.config.gateway_host,
                        ice_hosts=ice_hosts_for(self.config.gateway_host),
                        tls_cert=cert,
                        tls_key=key,
                        public_names=tuple(host_names(self.config.public_names)),  # the Host names it answers
                        require_token=self.secrets is not None,
                        token_secret=self.secrets.token_secret if self.secrets else None,
                    )
                )
                await gateway.start()
                self.gateways[region.name] = gateway
        except BaseException:
            await self.stop()
            raise
        self._write_prometheus()
        log.info("local deployment up", extra={"regions": [r.name for r in regions], "secure": self.config.secure})

    @property
    def prometheus_config(self) -> Path:
        """A Prometheus configuration scraping this deployment's processes (static targets), with the alert rules."""
        assert self._prometheus is not None
        return Path(self._prometheus.name) / "prometheus.yml"

    def _write_prometheus(self) -> None:
        self._prometheus = tempfile.TemporaryDirectory(prefix="mvs-local-prometheus-")
        rules = Path(self._prometheus.name) / ALERTS_FILE
        rules.write_text(json.dumps(alert_rules(), indent=2) + "\n")
        targets = {
            "gateway": [f"{self.local_url(region)}/metrics" for region in self.gateways],
            "worker": [url for site in self.sites.values() for url in site.metrics_urls.values()],
            "aggregator": [self.aggregator_metrics_url] if self.aggregator_metrics_url else [],
        }
        ca = str(self.gateway_ca) if self.config.secure else None
        config = local_prometheus_config(targets, rules=str(rules), ca=ca)
        self.prometheus_config.write_text(json.dumps(config, indent=2) + "\n")

    @property
    def gateway_ca(self) -> Path:
        """The kept CA of the gateways' HTTPS certificates (install it on a phone once)."""
        return (self.config.state_dir or state_dir()) / CA_FILE

    def _gateway_certificate(self) -> tuple[Path, Path]:
        host = self.config.gateway_host
        names = host_names([*([] if _wildcard(host) else [host]), *self.config.public_names])
        return gateway_certificate(self.gateway_ca.parent, names)

    def local_url(self, region: str) -> str:
        """A region's gateway as a client on this host reaches it (its certificate names 127.0.0.1, not 0.0.0.0)."""
        host = self.config.gateway_host
        return _base_url(self.gateways[region], LOOPBACK[0] if _wildcard(host) else host)

    def phone_url(self, region: str) -> str:
        """The page a person opens on a phone: the gateway at an address the phone can reach (with a wildcard
        listen address, this host's first LAN address) and, when secure, a phone token in the fragment, which
        the browser never sends to the server."""
        host = self.config.gateway_host
        if _wildcard(host):
            lan = [n for n in host_names() if is_address(n) and not ipaddress.ip_address(n).is_loopback]
            host = lan[0] if lan else LOOPBACK[0]
        fragment = f"#token={self.secrets.phone_token_file.read_text().strip()}" if self.secrets else ""
        return f"{_base_url(self.gateways[region], host)}/{fragment}"

    @property
    def nats_ca(self) -> Path | None:
        """The CA of the NATS servers' certificates (None without TLS)."""
        return Path(self.nats.tls.ca) if self.nats is not None and self.nats.tls is not None else None

    def url(self, region: str | None, user: str) -> str:
        """NATS URL for ``user`` at ``region``'s server (the hub for None: every hub server's, comma-separated)."""
        assert self.nats is not None
        server = self.nats.hub if region is None else self.nats.server(region)
        return self.nats.client_url(server, user)

    async def _start_aggregator(self, init: Path) -> None:
        self.aggregator = Aggregator(
            AggregatorConfig(
                nats_url=self.url(None, AGGREGATOR_USER), nats_ca=self.nats_ca, strategy=self.config.strategy
            )
        )
        # The aggregator runs in this process: the model file's weights go to it directly, no blob needed.
        await self.aggregator.start(learned_weights(str(init)))  # v0 is in the store before any worker asks for it
        self._rounds = asyncio.create_task(self._run_rounds(self.aggregator), name="aggregator")
        port = free_port(METRICS_HOST)
        self._aggregator_health = await start_health_server(
            port,
            METRICS_HOST,
            ready=self.aggregator.ready,
            live=self.aggregator.live,
            exposition=lambda: view_metrics(_aggregator_series),
            details=lambda: {"jetstream": self.aggregator is not None and self.aggregator.jetstream_available},
        )
        self.aggregator_metrics_url = f"http://{METRICS_HOST}:{port}/metrics"
        self._buffers = tempfile.TemporaryDirectory(prefix="mvs-fl-")

    async def _run_rounds(self, aggregator: Aggregator) -> None:
        """The aggregator's rounds (its ``run``), each step's progress said in a line: deltas in, versions out. A step
        JetStream fails (a hub server restarting, no quorum) is waited out and tried again, as ``run`` does."""
        pending = len(aggregator.state.accepted)
        while True:
            published = await aggregator.attempt()
            if published is not None:
                loss = f", loss {published.loss:.4f}" if math.isfinite(published.loss) else ""
                self.say(
                    f"aggregator: published v{published.version} from {len(published.contributors)} delta(s) "
                    f"({published.samples} samples{loss})"
                )
            elif len(aggregator.state.accepted) != pending:
                need = aggregator.config.min_updates
                self.say(f"aggregator: {len(aggregator.state.accepted)} of {need} delta(s) in for the next version")
            pending = len(aggregator.state.accepted)

    def site(self, region: Region) -> WorkerSite:
        """The workers of ``region`` (none started yet): :attr:`LocalConfig.worker` in the region, on its leaf."""
        return WorkerSite(
            self.url(region.name, worker_user(spare_worker(region))),
            dataclasses.replace(self.config.worker, region=region.name, js_domain=HUB_DOMAIN, nats_ca=self.nats_ca),
            options=ServiceOptions(log_level=self.config.log_level),
            discovery_url=self.url(region.name, gateway_user(region.name)),
            federated_dir=Path(self._buffers.name) if self._buffers is not None else None,
            metrics=True,
        )

    def _start_workers(self, region: Region) -> WorkerSite:
        site = self.site(region)
        for _ in range(region.workers):
            worker = site.next_worker_id()
            site.start_worker(worker, self.url(region.name, worker_user(worker)))
        return site

    def metrics_urls(self, region: str) -> list[str]:
        """Prometheus endpoints of a region: its gateway's, then each worker's."""
        return [f"{self.local_url(region)}/metrics", *self.sites[region].metrics_urls.values()]

    def summary(self) -> str:
        """What runs where, and how to stream a phone to each region."""
        assert self.nats is not None
        hubs = " ".join(hub.url for hub in self.nats.hubs)
        lines = [f"NATS hub {hubs} (JetStream domain {HUB_DOMAIN}, {self.nats.replicas} replica(s) of every store; "]
        lines[0] += f"secure: {self.config.secure})"
        if self.aggregator is not None:
            lines.append(f"aggregator: federated learning on ({self.config.strategy}), v0 published")
            lines.append(f"  metrics:     {self.aggregator_metrics_url}")
        if self.secrets is not None:
            lines.append(f"secrets (mode 0600) in {self.secrets.directory}; NATS CA {self.nats_ca}")
            lines.append(f"  a phone token: {TOKEN_SECRET_ENV}=$(cat {self.secrets.token_secret_file}) mvs token")
            lines.append(f"gateways' CA (kept across runs: install it on a phone once): {self.gateway_ca}")
        lines.append(f"prometheus --config.file={self.prometheus_config}   # scrapes all of it, with alert rules")
        for region in self.config.regions:
            gateway, site = self.gateways[region.name], self.sites[region.name]
            server = self.nats.server(region.name)
            where = "hub" if server in self.nats.hubs else f"leaf {server.url}"
            lines.append(f"region {region.name}: gateway {gateway.url}, {len(site.workers)} worker(s) on NATS {where}")
            lines.append(f"  open on a phone: {self.phone_url(region.name)}")
            phone = ["mvs", "phone", "--gateway", self.local_url(region.name), "--region", region.name]
            phone += ["--ice-host", LOOPBACK[0]]
            spare = spare_worker(region)  # its own NATS user and credentials, made with the workers'
            worker = ["mvs", "worker", *site.worker_flags(spare)]
            if self.secrets is None:
                lines.append("  phone:       " + shlex.join(phone + region.phone_link_flags()))
                env = f"{NATS_URL_ENV}={shlex.quote(self.url(region.name, worker_user(spare)))}"
                lines.append(f"  more worker: {env} {shlex.join(worker)}")
            else:
                token = f"{TOKEN_ENV}=$(cat {shlex.quote(str(self.secrets.phone_token_file))})"
                phone += [*region.phone_link_flags(), "--gateway-ca", str(self.gateway_ca)]
                lines.append(f"  phone:       {token} " + shlex.join(phone))
                env_file = shlex.quote(str(self.secrets.worker_env_file(spare)))
                lines.append(f"  more worker: (set -a; . {env_file}; {shlex.join(worker)})")
            lines.append(f"  metrics:     {' '.join(self.metrics_urls(region.name))}")
        return "\n".join(lines)

    async def stop(self) -> None:
        """Stop gateways, workers, the aggregator and NATS."""
        for gateway in self.gateways.values():
            await gateway.stop()
        for site in self.sites.values():
            await asyncio.to_thread(site.stop)  # waits for the workers' exits: off the event loop
        if self._rounds is not None:
            self._rounds.cancel()
            await asyncio.gather(self._rounds, return_exceptions=True)
        if self._aggregator_health is not None:
            await self._aggregator_health.cleanup()
        if self._prometheus is not None:
            self._prometheus.cleanup()
        if self.aggregator is not None:
            await self.aggregator.stop()
        if self._buffers is not None:
            self._buffers.cleanup()
        if self.secrets is not None:
            self.secrets.cleanup()
        if self.nats is not None:
            self.nats.stop()


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def _base_url(gateway: Gateway, host: str) -> str:
    scheme = "https" if gateway.config.tls_cert is not None else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{gateway.port}"


def ice_hosts_for(host: str) -> tuple[str, ...]:
    """ICE host candidates for a gateway listening on ``host``: loopback alone for a loopback address, every
    interface for a wildcard, else that address."""
    if _wildcard(host):
        return ()
    if host == "localhost" or (is_address(host) and ipaddress.ip_address(host).is_loopback):
        return LOOPBACK
    return (host,)


async def run_local(config: LocalConfig) -> None:
    """Start the deployment, print its summary, serve until cancelled (Ctrl-C), stop."""
    deployment = LocalDeployment(config, say=lambda line: print(line, flush=True))
    await deployment.start()
    try:
        print(deployment.summary(), flush=True)
        await asyncio.Event().wait()
    finally:
        await deployment.stop()


def build_parser(worker_cls: type[WorkerConfig] = WorkerConfig) -> argparse.ArgumentParser:
    """CLI of ``mvs local``: where the regions come from, then :class:`LocalConfig`'s flags and the workers' (those
    of ``worker_cls``)."""
    p = argparse.ArgumentParser(
        prog="mvs local",
        formatter_class=DefaultsHelpFormatter,
        description="Run a multi-region deployment on this machine until Ctrl-C: NATS hub + a leaf node per region, "
        "each region's stylizer workers and gateway, optionally the aggregator. Phones run separately (mvs phone).",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--regions", type=Path, default=None, help="regions file (TOML, e.g. deploy/regions.toml)")
    where.add_argument(
        "--region", action="append", default=None, help="an edge region with its own leaf node (repeatable)"
    )
    p.add_argument("--workers", type=int, default=1, help="workers per --region region (a regions file sets its own)")
    p.add_argument(
        "--gateway-port",
        type=int,
        default=DEFAULT_HTTP_PORT,
        help="gateway port of the first --region region, the next get the following ports (0: any free port)",
    )
    add_config_arguments(p, LocalConfig)
    add_worker_arguments(p, worker_cls)
    return p


def config_from_args(args: argparse.Namespace, worker: WorkerConfig | None = None) -> LocalConfig:
    """LocalConfig from parsed flags (regions from the file, or one leaf region per --region); ``worker``: the
    workers' settings (default: from the flags, unchecked)."""
    hub: Hub | None = None
    if args.regions is not None:
        regions, hub = load_regions(args.regions), load_hub(args.regions)
    else:
        names = args.region or ["local"]
        port = args.gateway_port
        regions = [
            Region(name, gateway_port=port + i if port else 0, workers=args.workers) for i, name in enumerate(names)
        ]
    servers = args.hub_servers if args.hub_servers is not None else (hub or Hub()).servers
    return service_config(
        LocalConfig, args, regions=regions, worker=worker or service_config(WorkerConfig, args), hub_servers=servers
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, json_lines=False)
    worker = worker_config(args, "mvs local", trainable=args.federated)
    try:
        config = config_from_args(args, worker)
    except ValueError as exc:  # RegionsError included: the file and the problem, not a traceback
        raise SystemExit(f"mvs local: {exc}") from exc
    with contextlib.suppress(asyncio.CancelledError):
        run_main(run_local(config))


if __name__ == "__main__":
    main()
