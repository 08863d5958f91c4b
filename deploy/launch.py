"""One way to launch a service: a child process whose command line and environment are derived from its config.

``ServiceProcess(WorkerConfig(...))`` runs ``python -m edge_worker`` with :func:`streaming.config.argv_from_config`'s
flags and the secret fields (the NATS URL, which may hold a password) in the environment, never in argv; it dies
with its parent (``setpriv --pdeathsig``), logs to a file or to the parent's output, is awaited ready (``/healthz``
or any readiness callable, failing early when the process exits) and stopped with SIGTERM, then SIGKILL after a
grace. ``mvs demo``, ``mvs local``, the benches and the tests start every service this way, and the Kubernetes
manifests take their container args from :func:`service_args`, so a field added to a config reaches them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client as NATS

from aggregator.service import AggregatorConfig
from edge_worker.service import WorkerConfig
from mobile_sim.client import PhoneConfig
from streaming.cli import ServiceOptions
from streaming.config import argv_from_config, env_from_config
from streaming.gateway.server import GatewayConfig
from streaming.gateway.stylize_client import discover_workers
from streaming.runtime import dying_with_parent

SERVICE_MODULES: tuple[tuple[type, str], ...] = (
    (WorkerConfig, "edge_worker"),
    (GatewayConfig, "streaming.gateway"),
    (AggregatorConfig, "aggregator"),
    (PhoneConfig, "mobile_sim"),
)
"""The package ``python -m`` runs for each service config (a subclass runs its base's)."""
STOP_GRACE_S = 10.0
"""How long a service may take to stop after SIGTERM before it gets SIGKILL."""
READY_POLL_S = 0.1
"""Pause between two readiness checks."""
DISCOVERY_PROBE_S = 0.2
"""How long one discovery request collects worker answers."""
HEALTH_TIMEOUT_S = 2.0
"""Timeout of one ``/healthz`` request."""

Ready = Callable[[], Awaitable[bool]]
"""A readiness check: True once the service is ready."""


class StartupError(RuntimeError):
    """A service exited or was not ready in time during start-up (the message says which and how long was waited)."""


def service_module(config: Any) -> str:
    """The package that runs ``config``'s service."""
    for cls, module in SERVICE_MODULES:
        if isinstance(config, cls):
            return module
    raise TypeError(f"no service runs a {type(config).__name__}")


def service_args(config: Any, options: ServiceOptions | None = None) -> list[str]:
    """The service's flags: its config's, then the options' (``--log-level``); no secret among them."""
    return [*argv_from_config(config), *argv_from_config(options or ServiceOptions())]


class ServiceProcess:
    """``python -m <module>`` for a service config, as a child process (see the module docstring).

    ``module`` overrides the package (``bench.worker_host`` runs several workers of one config); ``extra_args``
    come after the config's flags; ``log_path`` gets stdout and stderr (appended, across restarts), else they go to
    the parent's; ``env`` is the base environment (default: this process's); ``own_session`` puts the child in its
    own session, so Ctrl-C reaches the parent only, which stops its children in order."""

    def __init__(
        self,
        config: Any,
        *,
        options: ServiceOptions | None = None,
        module: str | None = None,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        own_session: bool = True,
        stop_grace_s: float = STOP_GRACE_S,
        name: str | None = None,
    ) -> None:
        self.config, self.options = config, options or ServiceOptions()
        self.module = module or service_module(config)
        self.extra_args, self.log_path, self.own_session = list(extra_args), log_path, own_session
        self.stop_grace_s = stop_grace_s
        self.name = name or self.module
        self._base_env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        """The command line (no secret in it)."""
        return [sys.executable, "-m", self.module, *service_args(self.config, self.options), *self.extra_args]

    @property
    def env(self) -> dict[str, str]:
        """The child's environment: the base without the variables the config's flags read, plus its secrets."""
        return env_from_config(self.config, os.environ if self._base_env is None else self._base_env)

    @property
    def pid(self) -> int:
        """The process id (started)."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it has exited (negative: killed by that signal); None while it runs."""
        return None if self.proc is None else self.proc.poll()

    def start(self) -> ServiceProcess:
        """Start it (returns at once; see :meth:`wait_ready`)."""
        log = self.log_path.open("ab") if self.log_path is not None else None
        try:
            self.proc = subprocess.Popen(
                dying_with_parent(self.command),
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=self.own_session,
            )
        finally:
            if log is not None:
                log.close()
        return self

    async def wait_ready(self, ready: Ready, timeout_s: float) -> float:
        """Until ``ready()`` says so; the monotonic time then. :class:`StartupError` when it exits or time is up."""
        return await wait_ready([self], ready, timeout_s, self.name)

    def wait(self, timeout_s: float) -> int:
        """Until it exits (``subprocess.TimeoutExpired`` after ``timeout_s``); its exit status."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.proc.wait(timeout=timeout_s)

    async def wait_exit(self) -> int:
        """Until it exits (polled: the event loop's child watcher is not ours to replace); its exit status."""
        while (code := self.returncode) is None:
            await asyncio.sleep(READY_POLL_S)
        return code

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` while it runs (SIGSTOP: a hung process that still holds its connections)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (which lets it say nothing to anyone), and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self) -> None:
        """SIGTERM, without waiting (:meth:`stop` waits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self) -> int | None:
        """SIGTERM, SIGKILL after :attr:`stop_grace_s`; reaped. Its exit status (None: never started)."""
        stop_all([self])
        return self.returncode

    async def stop_async(self) -> int | None:
        """:meth:`stop` off the event loop."""
        return await asyncio.to_thread(self.stop)


def stop_all(processes: Iterable[ServiceProcess]) -> None:
    """SIGTERM to all at once, then wait for each (SIGKILL after its grace): they stop in parallel."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    for process in processes:
        if process.proc is None:
            continue
        try:
            process.proc.wait(timeout=process.stop_grace_s)
        except subprocess.TimeoutExpired:
            process.kill()


async def wait_ready(processes: Collection[ServiceProcess], ready: Ready, timeout_s: float, what: str) -> float:
    """Until ``ready()`` is true; the monotonic time then. :class:`StartupError` as soon as one of ``processes``
    exits, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        exited = [f"{p.name} (status {p.returncode})" for p in processes if p.returncode is not None]
        if exited:
            raise StartupError(f"{', '.join(exited)} exited during start-up (see its log)")
        if await ready():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise StartupError(f"{what} not ready within {timeout_s:g} s")
        await asyncio.sleep(READY_POLL_S)


def http_answers(url: str, statuses: Collection[int] | None = (200,)) -> Ready:
    """A check that ``url`` answers with one of ``statuses`` (None: any status, i.e. the HTTP server is up)."""

    async def ready() -> bool:
        timeout = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as response:
                await response.read()
                return statuses is None or response.status in statuses
        return False

    return ready


def workers_discovered(nc: NATS, region: str, worker_ids: Callable[[], Collection[str]]) -> Ready:
    """A check that every worker of ``worker_ids()`` answers on ``region``'s discovery subject."""

    async def ready() -> bool:
        found = {info.worker_id for info in await discover_workers(nc, region, DISCOVERY_PROBE_S)}
        return set(worker_ids()) <= found

    return ready
