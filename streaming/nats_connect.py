"""One way for a long-running service to connect to NATS: a named reconnect policy, and every connection event
as a log line and a metric.

The policy is nats-py's defaults, written down: a client that loses its server retries every
:data:`RECONNECT_WAIT_S` seconds, :data:`MAX_RECONNECT_ATTEMPTS` times (about two minutes), then closes the
connection for good. Subscriptions and in-flight requests survive a short outage; a longer one ends in
``closed_cb``, and a worker exits there (its supervisor restarts it against whatever NATS is reachable then)
instead of holding on to a dead site.

Replies come back on the connection's inbox prefix: ``_INBOX_<user>`` for a URL with a user (:func:`inbox_prefix`),
so the server can let each user subscribe to its own replies only (``deploy/nats_auth.py``); nats-py's shared
``_INBOX`` would let any user read everyone's replies (stylized frames, model reads).
"""

from __future__ import annotations

import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

RECONNECT_WAIT_S = 2
"""Seconds between reconnect attempts (nats-py's ``reconnect_time_wait``)."""
MAX_RECONNECT_ATTEMPTS = 60
"""Reconnect attempts before the connection is closed for good: with :data:`RECONNECT_WAIT_S`, about 2 minutes."""
CONNECT_TIMEOUT_S = 2
"""Seconds one attempt to open the TCP connection may take."""

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
    reconnect_wait_s: int = RECONNECT_WAIT_S,
    max_reconnect_attempts: int = MAX_RECONNECT_ATTEMPTS,
    connect_timeout_s: int = CONNECT_TIMEOUT_S,
    inbox_prefix: str | None = None,
    tls_ca: Path | None = None,
) -> NATS:
    """Connect to ``url`` as client ``name`` (shown by the server's monitoring) with the reconnect policy above.

    Disconnects, reconnects, errors and the final close are logged (``extra``: service, name, and the url or
    error) and counted in ``mvs_nats_connection_events_total{service, event}``; ``mvs_nats_connected{service}``
    follows the connection. ``service`` (default ``name``) is the metrics label: use the process kind
    (``worker``, ``gateway``, ``aggregator``). ``closed_cb`` runs after the connection is closed for good
    (reconnects exhausted, or :meth:`NATS.close` / ``drain``). ``inbox_prefix`` (default: the URL's user's,
    :func:`inbox_prefix`) is where replies to this connection's requests arrive. ``tls_ca``: the CA file the
    server's certificate is verified against (a ``tls://`` URL; without one, the system's CAs)."""
    label = service or name
    fields = {"service": label, "nats_client": name}

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
        url,
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


def tls_context(ca: Path | None) -> ssl.SSLContext | None:
    """A client TLS context trusting ``ca`` (hostname checked), or None for nats-py's default."""
    return None if ca is None else ssl.create_default_context(cafile=str(ca))


def _user_inbox(url: str) -> str:
    return inbox_prefix(url_user(url))


def _server_url(nc: NATS) -> str:
    """The server the client is connected to, without credentials."""
    server = nc.connected_url
    return f"{server.scheme}://{server.hostname}:{server.port}" if server is not None else ""
