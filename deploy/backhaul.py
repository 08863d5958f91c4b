"""An emulated backhaul: a TCP relay that holds every byte for a one-way delay (no netem needed).

A leaf node's connection to the hub goes through one when :class:`deploy.nats_servers.NatsHubAndLeaves` is given
``backhaul_delay_ms``, so that an edge site's keys served by the cloud's workers (overflow) pay the
edge-to-cloud distance, on one machine. Threads, not asyncio: the relay must run while
:meth:`NatsHubAndLeaves.start` blocks its caller waiting for the leaves to connect.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time

CHUNK_BYTES = 64 * 1024
LISTEN_BACKLOG = 8


class DelayedTcpRelay:
    """Accepts on ``host:port`` (a free port) and relays each connection to ``target``, ``delay_ms`` each way."""

    def __init__(self, target: tuple[str, int], delay_ms: float, host: str = "127.0.0.1") -> None:
        if delay_ms < 0:
            raise ValueError(f"delay must be >= 0, got {delay_ms}")
        self.target = target
        self.delay_s = delay_ms / 1000.0
        self._listener = socket.create_server((host, 0), backlog=LISTEN_BACKLOG)
        self.host = host
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()

    def start(self) -> DelayedTcpRelay:
        """Accept connections in a background thread."""
        threading.Thread(target=self._accept, name="backhaul-accept", daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                near, _ = self._listener.accept()
                far = socket.create_connection(self.target)
            except OSError:
                return
            for sock in (near, far):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [near, far]
            self._pipe(near, far)
            self._pipe(far, near)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        """Bytes read from ``source`` are written to ``sink`` ``delay_s`` after they arrived, in order."""
        held: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def read() -> None:
            while True:
                try:
                    data = source.recv(CHUNK_BYTES)
                except OSError:
                    data = b""
                held.put((time.monotonic() + self.delay_s, data))
                if not data:
                    return

        def write() -> None:
            while True:
                due, data = held.get()
                time.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)
                    return
                try:
                    sink.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, name="backhaul-read", daemon=True).start()
        threading.Thread(target=write, name="backhaul-write", daemon=True).start()

    def close(self) -> None:
        """Stop accepting and cut every relayed connection."""
        self._closed.set()
        for sock in (self._listener, *self._sockets):
            with contextlib.suppress(OSError):
                sock.close()
