"""The emulated link: real aiortc peers talk only through the relay, which adds its delay."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from mobile_sim.link_shim import LinkProfile, LinkShim, host_candidates, rewrite_candidates
from mobile_sim.network import EmulatedLink
from streaming.ice import LOOPBACK, gathering_on, rtc_configuration
from tests.support import wait_until

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
    near, far = RTCPeerConnection(rtc_configuration()), RTCPeerConnection(rtc_configuration())
    link = EmulatedLink(profile) if profile else None
    channel = near.createDataChannel("echo")
    opened, echoes = asyncio.Event(), asyncio.Queue[float]()
    channel.on("open", opened.set)
    channel.on("message", lambda _: echoes.put_nowait(time.perf_counter()))
    far.on("datachannel", lambda ch: ch.on("message", lambda m: ch.send(m)))
    try:
        with gathering_on(LOOPBACK):
            await near.setLocalDescription(await near.createOffer())
        offer = await link.offer(near.localDescription.sdp) if link else near.localDescription.sdp
        await far.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        with gathering_on(LOOPBACK):
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


@pytest.mark.slow
async def test_peers_connect_through_the_relay_and_pay_its_delay() -> None:
    direct, _ = await _echo_rtt_ms(None)
    shimmed, link = await _echo_rtt_ms(LinkProfile(delay_ms=60))
    assert link is not None and link.shim.forwarded["near"] > ECHOES and link.shim.forwarded["far"] > ECHOES
    assert shimmed >= 2 * 60  # one way out, one way back
    # The delay is the shim's, not the peers': it adds (most of) its round trip to the direct one. Relative, not a
    # wall-clock bound on the direct echo, which a loaded machine may exceed.
    assert shimmed - direct >= 0.75 * 2 * 60, (shimmed, direct)


class _Peer(asyncio.DatagramProtocol):
    """A UDP endpoint that records when each datagram arrived."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.got = asyncio.Event()
        self.expected = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.arrivals.append((asyncio.get_running_loop().time(), data))
        if len(self.arrivals) >= self.expected:
            self.got.set()


SEND_BATCH = 32
"""Datagrams sent before waiting for the shim to take them (a burst of hundreds overflows a socket buffer)."""


async def _through_shim(profile: LinkProfile, datagrams: list[bytes], expected: int) -> tuple[LinkShim, _Peer, float]:
    """Send ``datagrams`` from a near peer through a shim to a far peer; wait for ``expected`` of them (or for the
    shim to have dealt with all: forwarded ones delivered). Returns the shim, the far peer, the send time."""
    loop = asyncio.get_running_loop()
    shim = LinkShim(profile)
    await shim.start()
    near_transport, _ = await loop.create_datagram_endpoint(_Peer, local_addr=(LOOPBACK[0], 0))
    far_transport, far = await loop.create_datagram_endpoint(_Peer, local_addr=(LOOPBACK[0], 0))
    far.expected = expected
    try:
        shim.connect(near_transport.get_extra_info("sockname")[:2], far_transport.get_extra_info("sockname")[:2])
        sent_at = loop.time()
        for start in range(0, len(datagrams), SEND_BATCH):
            for data in datagrams[start : start + SEND_BATCH]:
                near_transport.sendto(data, (LOOPBACK[0], shim.port("near")))
            handled = min(len(datagrams), start + SEND_BATCH)
            await wait_until(
                lambda n=handled: shim.forwarded["near"] + shim.dropped["near"] >= n, 30, "a batch taken", poll_s=0.001
            )
        await asyncio.wait_for(far.got.wait(), 30)
    finally:
        near_transport.close()
        far_transport.close()
        shim.close()
    return shim, far, sent_at


async def test_the_link_drops_its_share_of_datagrams() -> None:
    count, loss = 400, 0.25
    datagrams = [i.to_bytes(4, "big") for i in range(count)]
    draws = random.Random(7)  # the shim's own draws: the same seed
    expected = sum(draws.random() >= loss for _ in range(count))
    shim, far, _ = await _through_shim(LinkProfile(loss=loss, seed=7), datagrams, expected)
    received = [int.from_bytes(data, "big") for _, data in far.arrivals]
    assert len(received) == expected == shim.forwarded["near"] and shim.dropped["near"] == count - expected
    assert 0.2 * count < shim.dropped["near"] < 0.3 * count
    assert received == sorted(received)  # no reordering without jitter


async def test_a_bandwidth_cap_spaces_datagrams_by_their_serialisation_time() -> None:
    kbps, size, count = 800.0, 1000, 40  # 10 ms per datagram
    shim, far, sent_at = await _through_shim(LinkProfile(kbps=kbps), [bytes(size)] * count, count)
    per_datagram_s = size * 8 / (kbps * 1000)
    times = [t for t, _ in far.arrivals]
    assert len(times) == count and shim.dropped["near"] == 0
    # Lower bounds only (a loaded machine delivers later, never earlier): the k-th datagram leaves the queue after
    # k serialisation times.
    assert all(t - sent_at >= (k + 1) * per_datagram_s - 1e-3 for k, t in enumerate(times))
    assert times[-1] - times[0] >= (count - 1) * per_datagram_s - 1e-3
