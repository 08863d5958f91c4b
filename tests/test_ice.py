"""ICE host addresses are chosen per peer connection: two instances in one process gather on their own."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection

from mobile_sim.link_shim import host_candidates
from streaming.ice import gathering_on, rtc_configuration


async def _offer_hosts(addresses: tuple[str, ...]) -> set[str]:
    """The host-candidate addresses of a real offer made inside ``gathering_on(addresses)``."""
    pc = RTCPeerConnection(rtc_configuration())
    pc.createDataChannel("probe")
    try:
        with gathering_on(addresses):
            await pc.setLocalDescription(await pc.createOffer())
        return {host for host, _ in host_candidates(pc.localDescription.sdp)}
    finally:
        await pc.close()


async def test_two_instances_gathering_at_once_each_keep_their_addresses() -> None:
    first, second = await asyncio.gather(_offer_hosts(("127.0.0.1",)), _offer_hosts(("127.0.0.2",)))
    assert first == {"127.0.0.1"} and second == {"127.0.0.2"}


async def test_outside_a_block_aioice_chooses_and_never_loopback() -> None:
    await _offer_hosts(("127.0.0.1",))  # a previous setting does not outlive its block
    assert not any(host.startswith("127.") for host in await _offer_hosts(()))
