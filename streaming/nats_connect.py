"""One way for a long-running service to connect to NATS: a named reconnect policy, and every connection event
as a log line and a metric.

**The rule, for every service (gateway, worker, aggregator):** once connected, a service never gives up on NATS.
A client that loses its server retries every :data:`RECONNECT_WAIT_S` seconds for as long as it takes
(:data:`MAX_RECONNECT_ATTEMPTS` is -1: forever); subscriptions are restored by nats-py and the service serves
again by itself. While it is out, its readiness check fails (the gateway's and the worker's ``/healthz``), so
traffic goes elsewhere; its liveness check (``/livez``) holds, so the orchestrator does not restart a process
that would only wait for the same NATS. A service that cannot connect at start exits non-zero and its orchestrator
restarts it; a connection closed for good anyway (the server refused its credentials) ends a worker with status 1
and turns the gateway's ``/livez`` to 503.

Replies come back on the connection's inbox prefix: ``_INBOX_<user>`` for a URL with a user (:func:`inbox_prefix`),
so the server can let each user subscribe to its own replies only (``deploy/nats_auth.py``); nats-py's shared
``_INBOX`` would let any user read everyone's replies (stylized frames, model reads).
"""

from __future__ import annotations

import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from prometheus_client import Counter, Gauge

from streaming.config import JS_DOMAIN_FLAG, NATS_CA_FLAG, NATS_FLAG, NATS_RECONNECT_FLAG
from streaming.protocol import DEFAULT_NATS_URL

log = logging.getLogger(__name__)

RECONNECT_WAIT_S = 2.0
"""Seconds between reconnect attempts (nats-py's ``reconnect_time_wait``); services take it as a flag."""
MAX_RECONNECT_ATTEMPTS = -1
"""Reconnect attempts before the connection is closed for good: -1, never (see the rule above)."""
CONNECT_TIMEOUT_S = 2
"""Seconds one attempt to open the TCP connection may take."""


@dataclass
class NatsClientConfig:
    """How a service reaches NATS: the fields (and flags) that every service config starts with."""

    nats_url: str = field(default=DEFAULT_NATS_URL, metadata=NATS_FLAG)
    nats_ca: Path | None = field(default=None, metadata=NATS_CA_FLAG)
    nats_reconnect_wait_s: float = field(default=RECONNECT_WAIT_S, metadata=NATS_RECONNECT_FLAG)
    js_domain: str | None = field(default=None, metadata=JS_DOMAIN_FLAG)
    """JetStream domain of the stores (set when the service's NATS is a leaf node of the hub)."""


INBOX_PREFIX = "_INBOX"
"""nats-py's default prefix of reply subjects, used by a connection without a user."""


def inbox_prefix(user: str | None) -> str:
    """The prefix of a user's reply subjects: ``_INBOX_worker-eu`` (``_INBOX`` without a user)."""
    return f"{INBOX_PREFIX}_{user}" if user else INBOX_PREFIX


def url_user(url: str) -> str | None:
    """The user named in a NATS URL (``nats://worker-eu:pw@host:4222`` -> ``worker-eu``), None if none."""
    user = urllib.parse.urlsplit(url.split(",")[0].strip()).username
    return urllib.parse.unquote(user) if user else None


CONNECTION_EVENTS = Counter(
    "mvs_nats_connection_events_total",
    "NATS connection events (connected, disconnected, reconnected, error, closed)",
    ["service", "event"],
)
CONNECTED = Gauge("mvs_nats_connected", "1 while the NATS connection is up, else 0", ["service"])


async def connect_nats(
    url: str,
    name: str,
    *,
    service: str | None = None,
    closed_cb: Callable[[], Awaitable[None]] | None = None,
    reconnect_wait_s: float = RECONNECT_WAIT_S,
    max_reconnect_attempts: int = MAX_RECONNECT_ATTEMPTS,
    connect_timeout_s: int = CONNECT_TIMEOUT_S,
    inbox_prefix: str | None = None,
    tls_ca: Path | None = None,
) -> NATS:
    """Connect to ``url`` (a server's, or several comma-separated: a hub cluster's) as client ``name`` (shown by the
    server's monitoring) with the reconnect policy above.

    Disconnects, reconnects, errors and the final close are logged (``extra``: service, name, and the url or
    error) and counted in ``mvs_nats_connection_events_total{service, event}``; ``mvs_nats_connected{service}``
    follows the connection. ``service`` (default ``name``) is the metrics label: use the process kind
    (``worker``, ``gateway``, ``aggregator``). ``closed_cb`` runs after the connection is closed for good
    (reconnects exhausted, or :meth:`NATS.close` / ``drain``). ``inbox_prefix`` (default: the URL's user's,
    :func:`inbox_prefix`) is where replies to this connection's requests arrive. ``tls_ca``: the CA file the
    server's certificate is verified against (a ``tls://`` URL; without one, the system's CAs)."""
    label = service or name
    fields = {"service": label, "nats_client": name, "nats_url": redact_url(url)}

    def event(kind: str, connected: bool | None = None) -> None:
        CONNECTION_EVENTS.labels(label, kind).inc()
        if connected is not None:
            CONNECTED.labels(label).set(1 if connected else 0)

    async def on_error(exc: Exception) -> None:
        event("error")
        log.warning("nats error", extra={**fields, "error": f"{type(exc).__name__}: {exc}"})

    async def on_disconnected() -> None:
        event("disconnected", connected=False)
        closing = nc.is_closed or nc.is_draining  # our own close or drain: expected, not worth a warning
        log.log(logging.INFO if closing else logging.WARNING, "nats disconnected", extra=fields)

    async def on_reconnected() -> None:
        event("reconnected", connected=True)
        log.info("nats reconnected", extra={**fields, "url": _server_url(nc)})

    async def on_closed() -> None:
        event("closed", connected=False)
        log.info("nats connection closed", extra=fields)
        if closed_cb is not None:
            await closed_cb()

    nc = await nats.connect(
        server_urls(url),
        name=name,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        closed_cb=on_closed,
        reconnect_time_wait=reconnect_wait_s,
        max_reconnect_attempts=max_reconnect_attempts,
        connect_timeout=connect_timeout_s,
        inbox_prefix=inbox_prefix if inbox_prefix is not None else _user_inbox(url),
        tls=tls_context(tls_ca),
    )
    event("connected", connected=True)
    log.info("nats connected", extra={**fields, "url": _server_url(nc)})
    return nc


def server_urls(url: str) -> list[str]:
    """The servers of ``url``: one URL, or several comma-separated (a hub cluster's; the client fails over)."""
    return [part.strip() for part in url.split(",") if part.strip()]


def tls_context(ca: Path | None) -> ssl.SSLContext | None:
    """A client TLS context trusting ``ca`` (hostname checked), or None for nats-py's default."""
    return None if ca is None else ssl.create_default_context(cafile=str(ca))


def redact_url(url: str) -> str:
    """``url`` (one or several, comma-separated) without user names and passwords: what logs may show."""
    servers = []
    for server in url.split(","):
        parts = urllib.parse.urlsplit(server.strip())
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        servers.append(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")).geturl())
    return ",".join(servers)


def _user_inbox(url: str) -> str:
    return inbox_prefix(url_user(url))


def _server_url(nc: NATS) -> str:
    """The server the client is connected to, without credentials."""
    server = nc.connected_url
    return f"{server.scheme}://{server.hostname}:{server.port}" if server is not None else ""
