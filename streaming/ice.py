"""ICE candidate gathering limited to chosen local addresses.

aioice gathers host candidates on every interface address except 127.0.0.1, so two peers on one
machine with only loopback reachable (tests, ``mvs demo``) never connect. aioice has no option for
this; :func:`restrict_host_candidates` replaces its address lookup for the whole process.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import aioice.ice
from aiortc import RTCConfiguration

LOOPBACK = ("127.0.0.1",)


def restrict_host_candidates(addresses: Sequence[str]) -> None:
    """Gather ICE host candidates on exactly ``addresses`` (process-wide); empty restores the default."""
    if not addresses:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return
    parsed = [ipaddress.ip_address(a) for a in addresses]  # ValueError on a bad address

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [str(a) for a in parsed if (a.version == 4 and use_ipv4) or (a.version == 6 and use_ipv6)]

    aioice.ice.get_host_addresses = get_host_addresses


def rtc_configuration() -> RTCConfiguration:
    """Peer-connection settings: no STUN/TURN servers (aiortc's default would query a public STUN server)."""
    return RTCConfiguration(iceServers=[])


_original_get_host_addresses = aioice.ice.get_host_addresses
