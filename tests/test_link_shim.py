"""The emulated link: real aiortc peers talk only through the relay, which adds its delay."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from mobile_sim.link_shim import LinkProfile, host_candidates, rewrite_candidates
from mobile_sim.network import EmulatedLink
from streaming.ice import LOOPBACK, restrict_host_candidates, rtc_configuration

SDP = (
    "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n"
    "a=candidate:2 1 udp 2130706431 127.0.0.1 40001 typ srflx raddr 0.0.0.0 rport 0\r\n"
)
ECHOES = 5


def test_only_host_candidates_are_read_and_rewritten() -> None:
    assert host_candidates(SDP) == [("127.0.0.1", 40000)]
    rewritten = rewrite_candidates(SDP, 5555)
    assert host_candidates(rewritten) == [("127.0.0.1", 5555)] and "40001 typ srflx" in rewritten
    with pytest.raises(ValueError):
        LinkProfile(loss=1.0)


async def _echo_rtt_ms(profile: LinkProfile | None) -> tuple[float, EmulatedLink | None]:
    """Median data-channel echo round trip between two real peers, through an emulated link or directly."""
    restrict_host_candidates(LOOPBACK)
    near, far = RTCPeerConnection(rtc_configuration()), RTCPeerConnection(rtc_configuration())
    link = EmulatedLink(profile) if profile else None
    channel = near.createDataChannel("echo")
    opened, echoes = asyncio.Event(), asyncio.Queue[float]()
    channel.on("open", opened.set)
    channel.on("message", lambda _: echoes.put_nowait(time.perf_counter()))
    far.on("datachannel", lambda ch: ch.on("message", lambda m: ch.send(m)))
    try:
        await near.setLocalDescription(await near.createOffer())
        offer = await link.offer(near.localDescription.sdp) if link else near.localDescription.sdp
        await far.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await far.setLocalDescription(await far.createAnswer())
        answer = link.answer(far.localDescription.sdp) if link else far.localDescription.sdp
        await near.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await asyncio.wait_for(opened.wait(), 20)
        rtts = []
        for _ in range(ECHOES):
            sent = time.perf_counter()
            channel.send(b"ping")
            rtts.append((await asyncio.wait_for(echoes.get(), 10) - sent) * 1000)
        return sorted(rtts)[ECHOES // 2], link
    finally:
        await near.close()
        await far.close()
        if link:
            link.close()


async def test_peers_connect_through_the_relay_and_pay_its_delay() -> None:
    direct, _ = await _echo_rtt_ms(None)
    shimmed, link = await _echo_rtt_ms(LinkProfile(delay_ms=60))
    assert link is not None and link.shim.forwarded["near"] > ECHOES and link.shim.forwarded["far"] > ECHOES
    assert shimmed >= 2 * 60  # one way out, one way back
    assert direct < 60, direct  # the delay is the shim's, not the peers'
