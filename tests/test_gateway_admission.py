"""Gateway admission (issue 14, item 5), with real aiortc offers that never finish ICE: the session cap holds
under concurrent offers, sessions that never connect (or fall silent) are closed and their sockets freed, one
address cannot hold many pending offers, and /healthz reports the capacity. Signaling bounded (issue 22, items 4
and 6): slow bodies hold no slot, idle and partial-header connections are closed and capped per address, SDP
bombs are refused before aiortc parses them while /livez answers, and remote ICE candidates are capped and
filtered (real raw sockets and UDP listeners counting the gateway's STUN); a max-size offer's body is decoded off
the event loop, and offers are rate-limited per address."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from prometheus_client import REGISTRY

from deploy.certs import generate
from deploy.faults import StunTargets, sdp_bombs, slow_offer_head, with_candidates
from deploy.nats_servers import NatsServer
from mobile_sim.sources import default_style_photo
from streaming.gateway.rate_limit import KeyedTokenBuckets
from streaming.gateway.sdp_limits import MAX_REMOTE_CANDIDATES
from streaming.gateway.server import Gateway
from streaming.ice import LOOPBACK, RemoteCandidatePolicy, gathering_on, rtc_configuration
from streaming.images import encode_jpeg
from streaming.protocol import MAX_STYLE_BYTES, decode_offer
from tests.support import LOOP_TICK_S, longest_loop_stall, phone_offer, running_gateway, wait_until

CLOSED_WITHIN_S = 5.0
SOCKET_SLACK = 4
"""Sockets the test's own HTTP client may still hold when the gateway's are all freed."""


class SilentTrack(MediaStreamTrack):
    """A video track that never yields a frame: a phone that connects, then says nothing."""

    kind = "video"

    async def recv(self) -> None:  # type: ignore[override]
        await asyncio.Event().wait()


async def _client(track: MediaStreamTrack | None = None) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(rtc_configuration())
    pc.createDataChannel("mvs")
    pc.addTrack(track or SilentTrack())
    with gathering_on(LOOPBACK):
        await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def _sockets() -> int:
    """Sockets this process holds open (the gateway's ICE transports are UDP sockets here)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


@pytest.mark.slow
async def test_concurrent_offers_never_pass_the_cap_and_unconnected_sessions_are_closed(
    nats_server: NatsServer, region: str
) -> None:
    cap, offers = 8, 20
    pc, sdp = await _client()
    await pc.close()  # the offer is genuine; nobody will ever answer the gateway's ICE checks
    sockets_before = _sockets()
    async with running_gateway(
        nats_server, region, max_sessions=cap, max_pending_per_address=offers, connect_timeout_s=1.0
    ) as gateway:
        async with aiohttp.ClientSession() as http:

            async def offer() -> int:
                async with http.post(f"{gateway.url}/offer", data=phone_offer(sdp)) as response:
                    return response.status

            statuses = await asyncio.gather(*(offer() for _ in range(offers)))
            assert statuses.count(200) == cap and statuses.count(503) == offers - cap
            assert len(gateway.sessions) == cap
            async with http.get(f"{gateway.url}/healthz") as response:
                health = await response.json()
            assert response.status == 503 and health["full"] and health["max_sessions"] == cap
            assert health["sessions"] == cap and health["unconnected"] == cap
            sessions = list(gateway.sessions.values())
            await wait_until(lambda: not gateway.sessions, CLOSED_WITHIN_S, "every session closed")
            assert all("not connected" in s.close_reason and s.pc.connectionState == "closed" for s in sessions)
            async with http.get(f"{gateway.url}/healthz") as response:
                health = await response.json()
            assert health["sessions"] == 0 and not health["full"]
        await wait_until(
            lambda: _sockets() <= sockets_before + SOCKET_SLACK, CLOSED_WITHIN_S, "the sessions' sockets freed"
        )


async def test_one_address_holds_only_a_few_pending_offers(nats_server: NatsServer, region: str) -> None:
    pc, sdp = await _client()
    await pc.close()
    async with running_gateway(nats_server, region, max_pending_per_address=3, connect_timeout_s=30.0) as gateway:
        async with aiohttp.ClientSession() as http:
            statuses, retry_after = [], []
            for _ in range(5):
                async with http.post(f"{gateway.url}/offer", data=phone_offer(sdp)) as response:
                    statuses.append(response.status)
                    retry_after.append(response.headers.get("Retry-After"))
    assert statuses == [200, 200, 200, 429, 429] and retry_after[3] is not None


@pytest.mark.slow
async def test_a_connected_phone_that_falls_silent_is_closed(nats_server: NatsServer, region: str) -> None:
    async with running_gateway(nats_server, region, idle_timeout_s=1.0) as gateway:
        pc, sdp = await _client(SilentTrack())
        closed = asyncio.Event()
        pc.on("connectionstatechange", lambda: closed.set() if pc.connectionState == "closed" else None)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{gateway.url}/offer", data=phone_offer(sdp)) as response:
                    answer = await response.json()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            session = gateway.sessions[answer["stream_id"]]
            await asyncio.wait_for(session.connected.wait(), CLOSED_WITHIN_S)
            await wait_until(lambda: not gateway.sessions, CLOSED_WITHIN_S, "every session closed")
            assert "silent" in session.close_reason
        finally:
            await pc.close()


# --- issue 22: signaling bounded (items 4 and 6's ICE part) ---------------------------------------------------------

LIVEZ_WITHIN_S = 0.5
MAX_LOOP_STALL_S = 0.25


async def _raw(gateway: Gateway, source: str, data: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TCP connection to the gateway from the loopback address ``source``, having sent ``data``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port, local_addr=(source, 0))
    if data:
        writer.write(data)
        await writer.drain()
    return reader, writer


@pytest.mark.slow
async def test_slow_offer_bodies_hold_no_session_slot_and_are_cut_at_the_deadline(
    nats_server: NatsServer, region: str
) -> None:
    """8 slow offers from each of 4 addresses used to hold every session slot (503 for the whole run)."""
    pc, sdp = await _client()
    await pc.close()
    settings = {"max_sessions": 4, "offer_read_timeout_s": 1.5, "connect_timeout_s": 30.0}
    async with running_gateway(nats_server, region, **settings) as gateway:
        slow = [
            await _raw(gateway, f"127.0.0.{2 + a}", slow_offer_head(gateway.port)) for a in range(4) for _ in range(8)
        ]
        async with aiohttp.ClientSession() as http:
            await wait_until(
                lambda: sum(gateway._reading.values()) == len(slow), CLOSED_WITHIN_S, "every slow offer being read"
            )
            start = time.monotonic()
            async with http.post(f"{gateway.url}/offer", data=phone_offer(sdp)) as response:
                assert response.status == 200, await response.text()
            assert time.monotonic() - start < 1.0
            answers = [await asyncio.wait_for(reader.read(), CLOSED_WITHIN_S) for reader, _ in slow]
            assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[0][:80]
            async with http.get(f"{gateway.url}/healthz") as response:
                health = await response.json()
            assert health["offers_reading"] == 0 and health["sessions"] == 1
        for _, writer in slow:
            writer.close()


@pytest.mark.slow
async def test_idle_and_partial_header_connections_are_closed_and_capped_per_address(
    nats_server: NatsServer, region: str
) -> None:
    """601 idle and partial-header connections used to stay open for good."""
    settings = {"http_idle_timeout_s": 1.0, "max_connections_per_address": 6}
    async with running_gateway(nats_server, region, **settings) as gateway:
        idle = [await _raw(gateway, "127.0.0.2") for _ in range(3)]
        partial = [
            await _raw(gateway, "127.0.0.2", b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: ") for _ in range(3)
        ]
        await wait_until(
            lambda: gateway.connections.open["127.0.0.2"] == 6, CLOSED_WITHIN_S, "six connections open from 127.0.0.2"
        )
        reader, writer = await _raw(gateway, "127.0.0.2", b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        refusal = await asyncio.wait_for(reader.read(), CLOSED_WITHIN_S)
        assert refusal.startswith(b"HTTP/1.1 429") and b"Retry-After" in refusal
        writer.close()
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/livez") as response:
            assert response.status == 200  # another address is served meanwhile
        start = time.monotonic()
        for reader, writer in idle + partial:
            assert await asyncio.wait_for(reader.read(), CLOSED_WITHIN_S) == b""  # closed by the gateway
            writer.close()
        assert time.monotonic() - start < 1.0 + CLOSED_WITHIN_S
        await wait_until(
            lambda: "127.0.0.2" not in gateway.connections.open, CLOSED_WITHIN_S, "127.0.0.2's connections closed"
        )


@pytest.mark.slow
async def test_sdp_bombs_are_refused_before_aiortc_and_livez_answers_meanwhile(
    nats_server: NatsServer, region: str
) -> None:
    """Offers of 20k rtpmap/fmtp lines, 50k a=ssrc lines or 1,000 m-sections blocked the loop for 4-38 s each."""
    pc, sdp = await _client()
    await pc.close()
    async with running_gateway(nats_server, region, max_pending_per_address=32) as gateway:
        stop = asyncio.Event()
        stall = asyncio.create_task(longest_loop_stall(stop))
        timeout = aiohttp.ClientTimeout(total=10.0)
        async with aiohttp.ClientSession(timeout=timeout) as http:

            async def offer(body: str) -> tuple[int, str]:
                async with http.post(f"{gateway.url}/offer", data=body) as response:
                    return response.status, (await response.json())["error"]

            async def livez() -> float:
                worst = 0.0
                while not stop.is_set():
                    start = time.monotonic()
                    async with http.get(f"{gateway.url}/livez") as response:
                        assert response.status == 200
                    worst = max(worst, time.monotonic() - start)
                    await asyncio.sleep(0.05)
                return worst

            probe = asyncio.create_task(livez())
            bombs = sdp_bombs(sdp)
            answers = await asyncio.gather(*(offer(phone_offer(b)) for b in bombs.values() for _ in range(3)))
            stop.set()
            refused_early = ("SDP offer", "only its style")  # screened, or too big for an offer: before aiortc
            assert all(status == 400 and any(r in error for r in refused_early) for status, error in answers), answers
            assert await probe < LIVEZ_WITHIN_S
            assert await stall < MAX_LOOP_STALL_S
            async with http.post(f"{gateway.url}/offer", data=phone_offer(sdp)) as response:
                assert response.status == 200  # a genuine offer still gets a session


def _remote_candidates(gateway: Gateway, stream_id: str) -> set[str]:
    """The addresses of the remote candidates the gateway's ICE agent kept for a session."""
    pc = gateway.sessions[stream_id].pc
    transports = {t.receiver.transport.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport.transport)
    return {c.ip for t in transports for c in t.getRemoteCandidates()}


@pytest.mark.slow
async def test_remote_candidates_are_capped_so_the_gateway_probes_few_ports(
    nats_server: NatsServer, region: str
) -> None:
    """2,000 remote candidates made the gateway send STUN to 200 ports of an address of the offer's choosing."""
    pc, sdp = await _client()
    await pc.close()
    targets = await StunTargets().open(64)
    try:
        candidates = [f"127.0.0.1 {port}" for port in targets.ports]
        async with running_gateway(nats_server, region, connect_timeout_s=2.0) as gateway:
            async with aiohttp.ClientSession() as http:
                body = phone_offer(with_candidates(sdp, candidates))
                async with http.post(f"{gateway.url}/offer", data=body) as response:
                    assert response.status == 200, await response.text()
                    session = gateway.sessions[(await response.json())["stream_id"]]
            await asyncio.wait_for(session.closed.wait(), CLOSED_WITHIN_S)  # the ICE checks end with the session
        assert 0 < len(targets.probed) <= MAX_REMOTE_CANDIDATES, len(targets.probed)
    finally:
        targets.close()


async def test_private_link_local_and_named_candidates_are_refused_unless_configured(
    nats_server: NatsServer, region: str
) -> None:
    pc, sdp = await _client()
    await pc.close()
    candidates = ["127.0.0.1 9", "10.1.2.3 9", "192.168.1.9 9", "169.254.1.1 9", "fe80::1 9", "100.64.0.1 9"]
    body = phone_offer(with_candidates(sdp, [*candidates, "f00d.local 9"]))
    kept = {}
    for networks in ((), ("10.0.0.0/8", "fe80::/10")):
        async with running_gateway(nats_server, region, ice_remote_networks=networks) as gateway:
            async with aiohttp.ClientSession() as http, http.post(f"{gateway.url}/offer", data=body) as response:
                assert response.status == 200, await response.text()
                kept[networks] = _remote_candidates(gateway, (await response.json())["stream_id"])
    assert kept[()] == {"127.0.0.1"}  # loopback: this gateway gathers on loopback (--ice-host 127.0.0.1)
    assert kept[("10.0.0.0/8", "fe80::/10")] == {"127.0.0.1", "10.1.2.3", "fe80::1"}
    everywhere = RemoteCandidatePolicy.of(ice_hosts=())  # a gateway on every interface: loopback is refused too
    assert not everywhere.allows("127.0.0.1") and everywhere.allows("8.8.8.8") and not everywhere.allows("::1")


async def test_an_https_gateway_caps_connections_per_address_too(
    nats_server: NatsServer, region: str, tmp_path: Path
) -> None:
    """The connection guard sits above TLS: an HTTPS gateway serves through it and refuses over the cap."""
    files = generate(tmp_path)
    tls = {"tls_cert": Path(files.cert), "tls_key": Path(files.key), "max_connections_per_address": 2}
    context = ssl.create_default_context(cafile=files.ca)
    async with running_gateway(nats_server, region, **tls) as gateway:
        assert gateway.url.startswith("https://")
        held = [await asyncio.open_connection("127.0.0.1", gateway.port, ssl=context) for _ in range(2)]
        await wait_until(
            lambda: gateway.connections.open["127.0.0.1"] == 2, CLOSED_WITHIN_S, "two connections open from 127.0.0.1"
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port, ssl=context)
        writer.write(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), CLOSED_WITHIN_S)).startswith(b"HTTP/1.1 429")
        for _, w in [*held, (reader, writer)]:
            w.close()
        await wait_until(
            lambda: "127.0.0.1" not in gateway.connections.open, CLOSED_WITHIN_S, "127.0.0.1's connections closed"
        )
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/livez", ssl=context) as response:
            assert response.status == 200


# --- issue 22: an offer's body decoded off the event loop, offers rate-limited per address --------------------------


async def test_a_max_size_offer_is_decoded_off_the_event_loop(nats_server: NatsServer, region: str) -> None:
    """An 11 MB body (8 MB style) cost ~50-200 ms of JSON and base64 on the loop; its decoding now stalls the loop
    for a fraction of what a plain parse costs. The SDP has no video, so the offer is refused right after the whole
    body is decoded: the stall measured is the body's."""
    pc = RTCPeerConnection(rtc_configuration())
    pc.createDataChannel("mvs")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    jpeg = encode_jpeg(default_style_photo())
    style = jpeg + os.urandom(MAX_STYLE_BYTES - len(jpeg))  # a JPEG with trailing bytes: its header is fine
    body = phone_offer(sdp, style)
    assert decode_offer(body).style == style
    start = time.monotonic()
    assert base64.b64decode(json.loads(body)["style"], validate=True) == style
    cost = time.monotonic() - start  # a plain parse, as the gateway made on its loop (stalling it as long)
    async with running_gateway(nats_server, region) as gateway:
        assert await asyncio.to_thread(_post, gateway.url, b"{}") == 400  # warm: the first answer's setup is apart
        stop = asyncio.Event()
        stall = asyncio.create_task(longest_loop_stall(stop))
        for _ in range(2):  # sent from a thread: the client's writes are not on the loop measured
            assert await asyncio.to_thread(_post, gateway.url, body) == 400
        stop.set()
        worst = await stall - LOOP_TICK_S
    assert worst < cost / 2, f"the loop stalled {worst * 1e3:.0f} ms; a plain parse takes {cost * 1e3:.0f} ms"


def _post(url: str, body: bytes) -> int:
    """POST an offer with a blocking client; its HTTP status."""
    request = urllib.request.Request(f"{url}/offer", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _refused_for_rate() -> float:
    return REGISTRY.get_sample_value("mvs_gateway_offers_refused_total", {"reason": "rate"}) or 0.0


async def test_offers_beyond_an_address_rate_are_refused_with_retry_after_and_counted(
    nats_server: NatsServer, region: str
) -> None:
    settings = {"offer_burst_per_address": 3, "offer_rate_per_address": 0.25}
    async with running_gateway(nats_server, region, **settings) as gateway:
        refused_before = _refused_for_rate()
        async with aiohttp.ClientSession() as http:
            answers = []
            for _ in range(5):
                async with http.post(f"{gateway.url}/offer", data=b"{}") as response:
                    answers.append((response.status, response.headers.get("Retry-After")))
        assert [status for status, _ in answers] == [400, 400, 400, 429, 429], answers
        assert answers[3][1] == "4"  # a token every 4 s
        assert _refused_for_rate() - refused_before == 2
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as other:
            async with other.post(f"{gateway.url}/offer", data=b"{}") as response:
                assert response.status == 400  # another address has its own bucket


def test_keyed_token_buckets_refill_at_their_rate_and_forget_the_least_recent_address() -> None:
    buckets = KeyedTokenBuckets(rate=2.0, burst=2, max_keys=2)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert buckets.take("a", 0.25) == 0.25 and buckets.take("a", 0.5) == 0.0  # the refused take spent nothing
    assert buckets.take("b", 0.5) == 0.0 and buckets.take("c", 0.5) == 0.0 and len(buckets) == 2
    assert buckets.take("a", 0.5) == 0.0  # "a" was forgotten: a full bucket again
