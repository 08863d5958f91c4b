"""Gateway admission (issue 14, item 5), with real aiortc offers that never finish ICE: the session cap holds
under concurrent offers, sessions that never connect (or fall silent) are closed and their sockets freed, one
address cannot hold many pending offers, and /healthz reports the capacity."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from deploy.nats import NatsServer
from mobile_sim.sources import default_style_photo
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK, restrict_host_candidates, rtc_configuration
from streaming.images import encode_jpeg

STYLE_B64 = base64.b64encode(encode_jpeg(default_style_photo())).decode()
CLOSED_WITHIN_S = 5.0
SOCKET_SLACK = 4
"""Sockets the test's own HTTP client may still hold when the gateway's are all freed."""


class SilentTrack(MediaStreamTrack):
    """A video track that never yields a frame: a phone that connects, then says nothing."""

    kind = "video"

    async def recv(self) -> None:  # type: ignore[override]
        await asyncio.Event().wait()


async def _client(track: MediaStreamTrack | None = None) -> tuple[RTCPeerConnection, str]:
    restrict_host_candidates(LOOPBACK)
    pc = RTCPeerConnection(rtc_configuration())
    pc.createDataChannel("mvs")
    pc.addTrack(track or SilentTrack())
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def _offer_body(sdp: str) -> str:
    return json.dumps({"type": "offer", "sdp": sdp, "style": STYLE_B64})


def _sockets() -> int:
    """Sockets this process holds open (the gateway's ICE transports are UDP sockets here)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


@asynccontextmanager
async def _gateway(nats_server: NatsServer, region: str, **settings: object) -> AsyncIterator[Gateway]:
    config = GatewayConfig(port=0, nats_url=nats_server.url, region=region, ice_hosts=LOOPBACK, **settings)  # type: ignore[arg-type]
    gateway = Gateway(config)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def _wait_for(condition: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_concurrent_offers_never_pass_the_cap_and_unconnected_sessions_are_closed(
    nats_server: NatsServer, region: str
) -> None:
    cap, offers = 8, 20
    pc, sdp = await _client()
    await pc.close()  # the offer is genuine; nobody will ever answer the gateway's ICE checks
    sockets_before = _sockets()
    async with _gateway(
        nats_server, region, max_sessions=cap, max_pending_per_address=offers, connect_timeout_s=1.0
    ) as gateway:
        async with aiohttp.ClientSession() as http:

            async def offer() -> int:
                async with http.post(f"{gateway.url}/offer", data=_offer_body(sdp)) as response:
                    return response.status

            statuses = await asyncio.gather(*(offer() for _ in range(offers)))
            assert statuses.count(200) == cap and statuses.count(503) == offers - cap
            assert len(gateway.sessions) == cap
            async with http.get(f"{gateway.url}/healthz") as response:
                health = await response.json()
            assert response.status == 503 and health["full"] and health["max_sessions"] == cap
            assert health["sessions"] == cap and health["unconnected"] == cap
            sessions = list(gateway.sessions.values())
            assert await _wait_for(lambda: not gateway.sessions, CLOSED_WITHIN_S)
            assert all("not connected" in s.close_reason and s.pc.connectionState == "closed" for s in sessions)
            async with http.get(f"{gateway.url}/healthz") as response:
                health = await response.json()
            assert health["sessions"] == 0 and not health["full"]
        assert await _wait_for(lambda: _sockets() <= sockets_before + SOCKET_SLACK, CLOSED_WITHIN_S)


async def test_one_address_holds_only_a_few_pending_offers(nats_server: NatsServer, region: str) -> None:
    pc, sdp = await _client()
    await pc.close()
    async with _gateway(nats_server, region, max_pending_per_address=3, connect_timeout_s=30.0) as gateway:
        async with aiohttp.ClientSession() as http:
            statuses, retry_after = [], []
            for _ in range(5):
                async with http.post(f"{gateway.url}/offer", data=_offer_body(sdp)) as response:
                    statuses.append(response.status)
                    retry_after.append(response.headers.get("Retry-After"))
    assert statuses == [200, 200, 200, 429, 429] and retry_after[3] is not None


async def test_a_connected_phone_that_falls_silent_is_closed(nats_server: NatsServer, region: str) -> None:
    async with _gateway(nats_server, region, idle_timeout_s=1.0) as gateway:
        pc, sdp = await _client(SilentTrack())
        closed = asyncio.Event()
        pc.on("connectionstatechange", lambda: closed.set() if pc.connectionState == "closed" else None)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{gateway.url}/offer", data=_offer_body(sdp)) as response:
                    answer = await response.json()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            session = gateway.sessions[answer["stream_id"]]
            assert await _wait_for(session.connected.is_set, CLOSED_WITHIN_S)
            assert await _wait_for(lambda: not gateway.sessions, CLOSED_WITHIN_S)
            assert "silent" in session.close_reason
        finally:
            await pc.close()
