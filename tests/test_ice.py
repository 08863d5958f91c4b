"""ICE host addresses are chosen per peer connection: two instances in one process gather on their own."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

from mobile_sim.link_shim import host_candidates
from mobile_sim.sources import default_style_photo
from streaming.gateway.server import Gateway
from streaming.ice import LOOPBACK, gathering_on, rtc_configuration
from streaming.images import encode_jpeg
from streaming.protocol import DATA_CHANNEL_LABEL

CONNECT_S = 15.0
"""How long the data channel may take to open (ICE and DTLS on loopback, a loaded machine)."""


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


async def test_a_gateway_and_a_phone_in_one_process_each_gather_on_their_own(gateway: Gateway) -> None:
    """mvs demo's case: the phone's setting no longer overrides the gateway's (it was the last writer's)."""
    phone = RTCPeerConnection(rtc_configuration())
    channel = phone.createDataChannel(DATA_CHANNEL_LABEL)
    opened = asyncio.Event()
    channel.on("open", opened.set)
    phone.addTrack(VideoStreamTrack())
    with gathering_on(("127.0.0.2",)):  # gateway.config.ice_hosts is LOOPBACK, 127.0.0.1
        await phone.setLocalDescription(await phone.createOffer())
    style = base64.b64encode(encode_jpeg(default_style_photo()[:64, :64])).decode()
    body = json.dumps({"type": "offer", "sdp": phone.localDescription.sdp, "style": style})
    try:
        async with aiohttp.ClientSession() as http, http.post(f"{gateway.url}/offer", data=body) as response:
            answer = await response.json()
        assert {host for host, _ in host_candidates(phone.localDescription.sdp)} == {"127.0.0.2"}
        assert {host for host, _ in host_candidates(answer["sdp"])} == set(LOOPBACK)
        await phone.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await asyncio.wait_for(opened.wait(), CONNECT_S)
    finally:
        await phone.close()
