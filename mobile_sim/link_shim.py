"""Emulated network link for WebRTC on one machine: delay, bandwidth and loss (no netem needed).

A :class:`LinkShim` is a UDP relay with one socket facing each peer. The peers' SDP host candidates
are rewritten (:func:`rewrite_candidates`) so that each one knows the other only by the relay's
socket: every ICE check, DTLS record, RTP packet and SCTP chunk crosses the relay, which holds each
datagram for the link's one-way delay (plus serialisation time at its bandwidth) and may drop it.
Used to emulate regions: a far edge site is a longer, thinner link.
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass, field
from functools import partial

from streaming.config import flag

RELAY_ADDRESS = "127.0.0.1"
BITS_PER_BYTE = 8
CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ udp \d+ )(\S+) (\d+)( typ host.*)$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class LinkProfile:
    """One direction's impairments (the same both ways); its flags are the phone's ``--link-*``."""

    delay_ms: float = field(default=0.0, metadata=flag("one-way delay", name="link-delay-ms"))
    """One-way propagation delay."""
    kbps: float = field(default=0.0, metadata=flag("bandwidth each way (0: unlimited)", name="link-kbps"))
    """Bandwidth in kbit/s; 0: unlimited."""
    loss: float = field(default=0.0, metadata=flag("share of datagrams dropped", name="link-loss"))
    """Probability of dropping a datagram."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.kbps < 0 or not 0 <= self.loss < 1:
            raise ValueError(f"invalid link profile {self}")


def host_candidates(sdp: str) -> list[tuple[str, int]]:
    """(address, port) of every UDP host candidate in an SDP."""
    return [(m.group(2), int(m.group(3))) for m in CANDIDATE.finditer(sdp)]


def rewrite_candidates(sdp: str, port: int, address: str = RELAY_ADDRESS) -> str:
    """The SDP with every UDP host candidate pointing at ``address:port``."""
    return CANDIDATE.sub(lambda m: f"{m.group(1)}{address} {port}{m.group(4)}", sdp)


class _Direction(asyncio.DatagramProtocol):
    """Receives on one socket; forwards through the other side's socket after the link's delay."""

    def __init__(self, shim: LinkShim, side: str) -> None:
        self._shim = shim
        self._side = side
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._shim.forward(self._side, data, addr)


class LinkShim:
    """A relay between a "near" peer (the phone) and a "far" peer (the gateway)."""

    def __init__(self, profile: LinkProfile) -> None:
        self.profile = profile
        self._rng = random.Random(profile.seed)
        self._sides: dict[str, _Direction] = {}
        self._peer: dict[str, tuple[str, int] | None] = {"near": None, "far": None}
        self._busy_until = {"near": 0.0, "far": 0.0}  # serialisation queue per direction (bandwidth)
        self.forwarded = {"near": 0, "far": 0}
        self.dropped = {"near": 0, "far": 0}

    async def start(self) -> None:
        """Open both sockets on loopback."""
        loop = asyncio.get_running_loop()
        for side in ("near", "far"):
            transport, protocol = await loop.create_datagram_endpoint(
                partial(_Direction, self, side), local_addr=(RELAY_ADDRESS, 0)
            )
            protocol.transport = transport
            self._sides[side] = protocol

    def port(self, side: str) -> int:
        """Port of the socket that faces ``side``'s peer ("near" faces the phone)."""
        transport = self._sides[side].transport
        assert transport is not None
        return int(transport.get_extra_info("sockname")[1])

    def connect(self, near: tuple[str, int], far: tuple[str, int]) -> None:
        """The peers' real host candidates (from their SDP, before rewriting)."""
        self._peer["near"], self._peer["far"] = near, far

    def forward(self, side: str, data: bytes, addr: tuple[str, int]) -> None:
        """Schedule a datagram that arrived on ``side``'s socket for the other side."""
        other = "far" if side == "near" else "near"
        destination = self._peer[other]
        if destination is None or (self.profile.loss and self._rng.random() < self.profile.loss):
            self.dropped[side] += 1
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._busy_until[side])
        if self.profile.kbps:
            start += len(data) * BITS_PER_BYTE / (self.profile.kbps * 1000.0)
            self._busy_until[side] = start
        loop.call_at(start + self.profile.delay_ms / 1000.0, self._send, other, data, destination)
        self.forwarded[side] += 1

    def _send(self, side: str, data: bytes, destination: tuple[str, int]) -> None:
        transport = self._sides[side].transport
        if transport is not None and not transport.is_closing():
            transport.sendto(data, destination)

    def close(self) -> None:
        """Close both sockets."""
        for protocol in self._sides.values():
            if protocol.transport is not None:
                protocol.transport.close()
