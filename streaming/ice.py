"""ICE: candidate gathering limited to chosen local addresses, and which remote candidates a gateway checks.

aioice gathers host candidates on every interface address except 127.0.0.1, so two peers on one
machine with only loopback reachable (tests, ``mvs demo``) never connect. aioice has no option for
this: :func:`gathering_on` replaces its module-level address lookup once with one that reads the addresses of
the caller's context (a :class:`~contextvars.ContextVar`), so each peer connection gathers on its own instance's
addresses: a gateway and a phone in one process (``mvs demo``) each keep theirs.
:class:`RemoteCandidatePolicy` says which addresses named by an offer's candidates may receive the gateway's
connectivity checks (``streaming/gateway/sdp_limits.py`` applies it before aiortc sees the offer).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import aioice.ice
from aiortc import RTCConfiguration

LOOPBACK = ("127.0.0.1",)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_original_get_host_addresses = aioice.ice.get_host_addresses
_GATHER_ON: ContextVar[tuple[IPAddress, ...] | None] = ContextVar("mvs_ice_host_addresses", default=None)
"""The addresses the current context gathers host candidates on; None: aioice's own choice."""


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice's address lookup, answered from the caller's context when :func:`gathering_on` set one."""
    chosen = _GATHER_ON.get()
    if chosen is None:
        return _original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return [str(a) for a in chosen if (a.version == 4 and use_ipv4) or (a.version == 6 and use_ipv6)]


@contextmanager
def gathering_on(addresses: Sequence[str]) -> Iterator[None]:
    """Peer connections gather ICE host candidates on exactly ``addresses`` inside this block (empty: every
    interface but loopback, aioice's default). Wrap ``setLocalDescription``, where aiortc gathers; the tasks it
    starts inherit the setting, other tasks and instances do not see it. ValueError on a bad address."""
    parsed = tuple(ipaddress.ip_address(a) for a in addresses) or None
    aioice.ice.get_host_addresses = _host_addresses  # idempotent; without a setting it answers like aioice
    token = _GATHER_ON.set(parsed)
    try:
        yield
    finally:
        _GATHER_ON.reset(token)


def rtc_configuration() -> RTCConfiguration:
    """Peer-connection settings: no STUN/TURN servers (aiortc's default would query a public STUN server)."""
    return RTCConfiguration(iceServers=[])


@dataclass(frozen=True)
class RemoteCandidatePolicy:
    """Which remote ICE candidates a gateway may send connectivity checks to.

    An offer names the addresses its candidates claim; without a policy, an offer naming 2,000 candidates made the
    gateway send STUN to 200 ports of an address of the sender's choosing, inside its network too. Allowed: global
    unicast addresses, the ``networks`` configured (``--ice-remote-network``), and, when the gateway itself gathers
    on loopback (tests, ``mvs demo``), this host's own addresses: loopback and its interfaces' (from a loopback
    socket it can reach nothing else; a browser on this host may offer only those, as Firefox does). Refused: other
    loopback, private, link-local, multicast and reserved addresses, and host names (mDNS ``.local`` candidates
    would be resolved to addresses of the gateway's own network). A phone whose candidates are all refused still
    connects when its own checks reach the gateway, which answers the address they came from (a peer-reflexive
    candidate)."""

    networks: tuple[IPNetwork, ...] = ()
    local: frozenset[str] | None = None
    """This host's addresses when they are allowed (a loopback gateway), else None."""

    @classmethod
    def of(cls, ice_hosts: Sequence[str], networks: Sequence[str] = ()) -> RemoteCandidatePolicy:
        """The policy of a gateway gathering on ``ice_hosts`` (empty: every interface but loopback) that also
        allows ``networks`` (CIDR strings; ValueError on a bad one)."""
        loopback = any(ipaddress.ip_address(host).is_loopback for host in ice_hosts)
        local = frozenset(_original_get_host_addresses(use_ipv4=True, use_ipv6=True)) if loopback else None
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in networks), local)

    def allows(self, address: str) -> bool:
        """Whether checks may be sent to ``address`` (an IP literal; a host name is never allowed)."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if any(ip in network for network in self.networks):
            return True
        if self.local is not None and (ip.is_loopback or str(ip) in self.local):
            return True
        return ip.is_global and not ip.is_multicast and not ip.is_loopback
