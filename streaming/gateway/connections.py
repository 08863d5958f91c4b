"""The gateway's HTTP connections, bounded per client address.

aiohttp keeps a connection as long as its peer likes unless told otherwise: 601 idle and partial-header
connections from four addresses were all still open after 100 s. The gateway's runner sets aiohttp's keep-alive
timeout, which aiohttp arms when a connection opens and again after each response and which fires while no complete
request head has arrived (an idle connection, or headers trickling in); this module caps the connections one
address holds at once (:class:`ConnectionGuard`): one over the cap is answered 429 at once and closed, before aiohttp
reads anything from it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from streaming.gateway.admission import REFUSED

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


def _over_cap_response(retry_after_s: int) -> bytes:
    body = b'{"error": "too many connections from this address"}'
    head = (
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
        f"Retry-After: {retry_after_s}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGuard:
    """Counts open connections per client address and refuses those over ``max_per_address``."""

    def __init__(self, max_per_address: int, retry_after_s: int) -> None:
        self.max_per_address = max_per_address
        self.open: Counter[str] = Counter()
        """Open connections by client address."""
        self._refusal = _over_cap_response(retry_after_s)

    def wrap(self, factory: ProtocolFactory) -> ProtocolFactory:
        """A protocol factory whose connections pass through this guard before ``factory``'s protocol sees them."""
        return lambda: _GuardedConnection(factory(), self)

    def admit(self, transport: asyncio.BaseTransport) -> str | None:
        """The client address of a new connection if it is under the cap (counted), else None (answered 429)."""
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else "unknown"
        if self.open[address] >= self.max_per_address:
            REFUSED.labels("connections").inc()
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(self._refusal)
            transport.close()
            return None
        self.open[address] += 1
        return address

    def release(self, address: str) -> None:
        """A connection of ``address`` closed."""
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]


class _GuardedConnection(asyncio.Protocol):
    """Passes every event to aiohttp's protocol once :class:`ConnectionGuard` admitted the connection."""

    def __init__(self, inner: asyncio.BaseProtocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._address = self._guard.admit(transport)
        if self._address is not None:
            self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._address is not None:
            assert isinstance(self._inner, asyncio.Protocol)
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._address is None:
            return None
        assert isinstance(self._inner, asyncio.Protocol)
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is not None:
            self._guard.release(self._address)
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._address is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._address is not None:
            self._inner.resume_writing()


class GuardedAppRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose sites accept connections through a :class:`ConnectionGuard` (sites
    take their protocol factory from ``runner.server``; the runner's own shutdown uses the unwrapped server)."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._guard = guard

    @property
    def server(self) -> Any:  # a protocol factory, as the sites use it (aiohttp types it as its Server)
        inner = super().server
        return None if inner is None else self._guard.wrap(inner)
