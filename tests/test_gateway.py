"""Gateway signaling: garbage offers are HTTP 400 with a message; health and metrics are served; every answer
carries the security headers and a request naming an unknown host is refused (issue 22, item 7)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiortc import RTCPeerConnection, VideoStreamTrack
from nats.aio.client import Client as NATS

import streaming.gateway.session as session_module
from deploy.faults import STYLE_B64, BarePhone, offer_body, unanswered_offer_sdp
from deploy.nats_servers import NatsServer
from edge_worker.model.emulated import EmulatedAccelerator, ServiceTimeProfile
from edge_worker.service import StylizerWorker, WorkerConfig
from streaming.gateway.admission import SECURITY_HEADERS
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.gateway.session import MAX_PENDING_FRAMES
from streaming.ice import LOOPBACK, rtc_configuration
from streaming.images import decode_image
from streaming.protocol import (
    MAX_ERROR_CHARS,
    MAX_STYLE_BYTES,
    STYLE_BUCKET,
    ChannelError,
    Chunk,
    ClockPing,
    ClockPong,
    ErrorCode,
    FrameMeta,
    decode,
    decode_any,
    encode,
)
from streaming.telemetry import LOG_BURST
from tests.support import offer_peer, wait_until

HEALTHY_WITHIN_S = 5.0
AUDIO_ONLY_SDP = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
)

UNPARSABLE_SDP = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96\r\n"
"""aiortc's parser raises on it (an rtpmap without a codec), unlike SDP that merely has no media."""
OVERSIZE_STYLE_B64 = base64.b64encode(b"\xff" * (MAX_STYLE_BYTES + 1)).decode()


def _without_ice_credentials(sdp: str) -> str:
    """A parsable offer with video and a data channel that aiortc cannot use: no ICE username and password."""
    return "".join(line for line in sdp.splitlines(keepends=True) if not line.startswith(("a=ice-ufrag", "a=ice-pwd")))


@pytest.fixture(scope="module")
def video_sdp() -> str:
    """A genuine aiortc offer with a video track and a data channel (never answered)."""

    return asyncio.run(unanswered_offer_sdp())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make_body", "message"),
    [
        (lambda sdp: b"this is not json", "not JSON"),
        (lambda sdp: b"[1, 2]", "JSON object"),
        (lambda sdp: offer_body(type="answer", sdp=sdp, style=STYLE_B64), '"type": "offer"'),
        (lambda sdp: offer_body(type="offer", sdp="v=0\r\nthis is no sdp", style=STYLE_B64), "it has no media"),
        (lambda sdp: offer_body(type="offer", sdp=UNPARSABLE_SDP, style=STYLE_B64), "unparsable SDP offer"),
        (
            lambda sdp: offer_body(type="offer", sdp=_without_ice_credentials(sdp), style=STYLE_B64),
            "unusable SDP offer",
        ),
        (lambda sdp: offer_body(type="offer", sdp=sdp, style=OVERSIZE_STYLE_B64), "exceeds"),
        (lambda sdp: offer_body(type="offer", sdp=AUDIO_ONLY_SDP, style=STYLE_B64), "video stream"),
        (lambda sdp: offer_body(type="offer", sdp=sdp), "style"),
        (lambda sdp: offer_body(type="offer", sdp=sdp, style="%%%"), "base64"),
        (lambda sdp: offer_body(type="offer", sdp=sdp, style=base64.b64encode(b"abc").decode()), "not a usable image"),
        (lambda sdp: offer_body(type="offer", sdp=sdp, style=STYLE_B64, out_width=-3, out_height=2), "out_width"),
        (lambda sdp: offer_body(type="offer", sdp=sdp, style=STYLE_B64, out_width=4096, out_height=4096), "exceeds"),
        (lambda sdp: offer_body(type="offer", sdp=sdp, style=STYLE_B64, result="pixels"), "'result'"),
    ],
)
async def test_garbage_offers_are_400(
    gateway: Gateway, video_sdp: str, make_body: Callable[[str], bytes], message: str
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway.url}/offer", data=make_body(video_sdp)) as response:
            assert response.status == 400
            assert message in (await response.json())["error"]
        async with http.get(f"{gateway.url}/healthz") as response:  # still serving, no session leaked
            assert (await response.json())["sessions"] == 0


async def test_metrics_endpoint(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/metrics") as response:
            text = await response.text()
    assert response.status == 200 and "mvs_gateway_sessions" in text


async def test_garbage_on_the_data_channel_is_answered_with_errors_and_the_session_lives(gateway: Gateway) -> None:
    pc = RTCPeerConnection(rtc_configuration())
    channel = pc.createDataChannel("mvs")
    opened, pongs = asyncio.Event(), asyncio.Queue[bytes]()
    channel.on("open", opened.set)
    channel.on("message", lambda data: pongs.put_nowait(data))
    pc.addTrack(VideoStreamTrack())
    try:
        answer = await offer_peer(gateway, pc)
        await asyncio.wait_for(opened.wait(), 15)
        float_capture = encode(FrameMeta(frame_id=1, pts=3000, key=True, capture_ns=1.5e12))  # type: ignore[arg-type]
        junk = [
            b"\x00\xff junk",
            "text, not binary",
            encode(Chunk(frame_id=1, index=0, data=b"x")),
            b"\x81" * 200_000,
            float_capture,
        ]
        for item in junk:
            channel.send(item)
        errors = [decode(await asyncio.wait_for(pongs.get(), 10), ChannelError) for _ in junk]
        assert [e.code for e in errors] == [
            ErrorCode.MALFORMED,
            ErrorCode.MALFORMED,
            ErrorCode.INVALID,
            ErrorCode.TOO_LARGE,
            ErrorCode.INVALID,
        ]
        assert "capture_ns" in errors[-1].error and all(len(e.error) <= MAX_ERROR_CHARS for e in errors)
        sent_at = time.monotonic_ns()
        channel.send(encode(ClockPing(phone_ns=sent_at)))
        pong = decode(await asyncio.wait_for(pongs.get(), 10), ClockPong)
        assert pong.phone_ns == sent_at and pong.gw_received_ns <= pong.gw_sent_ns
        session = gateway.sessions[answer["stream_id"]]
        assert session.counts["bad_messages"] == len(junk) and not session.closed.is_set()
    finally:
        await pc.close()


@pytest.mark.slow
async def test_health_says_whether_the_site_can_stylize(gateway: Gateway, nats_server: NatsServer, region: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/healthz") as response:
            body = await response.json()
        assert response.status == 503 and body["nats_connected"] and body["workers"] == []
        worker = StylizerWorker(WorkerConfig(nats_url=nats_server.url, region=region, worker_id="h1", threads=1))
        await worker.start()
        try:

            async def healthy() -> dict[str, object] | None:
                async with http.get(f"{gateway.url}/healthz") as response:
                    return await response.json() if response.status == 200 else None

            # a busy machine may miss one discovery window
            body = await wait_until(healthy, HEALTHY_WITHIN_S, "/healthz saying the site can stylize")
        finally:
            await worker.stop()
        assert body["ok"] and body["workers"] == ["h1"]


async def test_a_data_channel_with_another_label_is_refused_with_a_reason(gateway: Gateway) -> None:
    pc = RTCPeerConnection(rtc_configuration())
    channel = pc.createDataChannel("video-meta")
    messages = asyncio.Queue[bytes]()
    channel.on("message", lambda data: messages.put_nowait(data))
    pc.addTrack(VideoStreamTrack())
    try:
        answer = await offer_peer(gateway, pc)
        refusal = decode_any(await asyncio.wait_for(messages.get(), 15), (ChannelError,))
        assert isinstance(refusal, ChannelError) and "'mvs'" in refusal.error
        assert gateway.sessions[answer["stream_id"]].counts["refused_channels"] == 1
    finally:
        await pc.close()


async def test_refused_data_channels_are_logged_rate_limited(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A phone opening many channels with other labels used to write a warning for each (15: 15 lines)."""
    caplog.set_level(logging.WARNING, logger="streaming.gateway.session")
    pc = RTCPeerConnection(rtc_configuration())
    refused = 15  # under the session's limit of refusals (it closes the session at 20)
    for k in range(refused):
        pc.createDataChannel(f"spam-{k}")
    pc.addTrack(VideoStreamTrack())
    try:
        answer = await offer_peer(gateway, pc)
        session = gateway.sessions[answer["stream_id"]]
        await wait_until(
            lambda: session.counts.get("refused_channels", 0) >= refused, HEALTHY_WITHIN_S, "every channel refused"
        )
        assert session.counts["refused_channels"] == refused
    finally:
        await pc.close()
    logged = [r for r in caplog.records if r.getMessage() == "data channel refused"]
    assert 0 < len(logged) <= LOG_BURST


async def test_every_answer_carries_the_security_headers(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        for method, path in (
            ("GET", "/"),
            ("GET", "/static/app.js"),
            ("GET", "/livez"),
            ("GET", "/nope"),
            ("POST", "/offer"),
        ):
            async with http.request(
                method, f"{gateway.url}{path}", data=b"{}" if method == "POST" else None
            ) as response:
                for name, value in SECURITY_HEADERS.items():
                    assert response.headers.get(name) == value, (path, response.status, name)
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self';" in csp


async def test_requests_naming_an_unknown_host_are_refused(nats_server: NatsServer, region: str) -> None:
    """DNS rebinding: a page of http://rebind.example:<port> whose name now resolves to the gateway sends requests
    with that Host and Origin, which the origin check took for the gateway's own."""
    gateway = Gateway(GatewayConfig(port=0, nats_url=nats_server.url, region=region, public_names=("gw.example",)))
    await gateway.start()
    json_body = {"Content-Type": "application/json"}
    try:
        async with aiohttp.ClientSession() as http:
            for name in ("rebind.example", "gw.example.rebind.example"):
                host = f"{name}:{gateway.port}"
                for method, path in (("GET", "/"), ("GET", "/metrics"), ("POST", "/offer")):
                    headers = {"Host": host, "Origin": f"http://{host}", **json_body}
                    async with http.request(method, f"{gateway.url}{path}", headers=headers, data=b"{}") as response:
                        assert response.status == 421, (host, path)
            for host in (f"gw.example:{gateway.port}", f"localhost:{gateway.port}", f"127.0.0.1:{gateway.port}"):
                headers = {"Host": host, "Origin": f"http://{host}", **json_body}
                async with http.get(f"{gateway.url}/", headers={"Host": host}) as response:
                    assert response.status == 200, host
                async with http.post(f"{gateway.url}/offer", headers=headers, data=b"{}") as response:
                    assert response.status == 400, host  # past admission: the body is what is wrong
    finally:
        await gateway.stop()


async def test_the_browser_app_and_its_styles_are_served(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/") as response:
            assert response.status == 200 and "/static/app.js" in await response.text()
        async with http.get(f"{gateway.url}/styles") as response:
            styles = (await response.json())["styles"]
        assert {"rocket", "coffee"} <= {s["name"] for s in styles}
        for path in (
            "/static/app.js",
            "/static/vendor/msgpack/msgpack.min.js",
            "/static/vendor/msgpack/LICENSE",
            styles[0]["url"],
        ):
            async with http.get(f"{gateway.url}{path}") as response:
                assert response.status == 200, path


async def test_cors_only_for_allow_listed_origins(nats_server: NatsServer, region: str) -> None:
    allowed, other = "https://app.example", "https://evil.example"
    gateway = Gateway(GatewayConfig(port=0, nats_url=nats_server.url, region=region, cors_origin=(allowed,)))
    await gateway.start()
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.options(f"{gateway.url}/offer", headers={"Origin": allowed, **preflight}) as response:
                assert response.status == 204
                assert response.headers["Access-Control-Allow-Origin"] == allowed
                assert "POST" in response.headers["Access-Control-Allow-Methods"]
            async with http.options(f"{gateway.url}/offer", headers={"Origin": other, **preflight}) as response:
                assert response.status == 403 and "Access-Control-Allow-Origin" not in response.headers
            json_body = {"Content-Type": "application/json"}  # what a page's fetch() of the offer sends
            async with http.post(
                f"{gateway.url}/offer", data=b"{}", headers={"Origin": allowed, **json_body}
            ) as response:
                assert response.status == 400 and response.headers["Access-Control-Allow-Origin"] == allowed
            async with http.post(f"{gateway.url}/offer", data=b"{}", headers={"Origin": other}) as response:
                assert "Access-Control-Allow-Origin" not in response.headers
    finally:
        await gateway.stop()


async def test_explicit_output_size_is_what_the_worker_renders(worker: StylizerWorker, gateway: Gateway) -> None:
    """out_width/out_height in the offer: keys come back at that size, not the video's."""
    phone = BarePhone(frames=20, size=(320, 180))
    try:
        await phone.connect(gateway, out_width=200, out_height=150)
        phone.feed()
        header, payload = await asyncio.wait_for(phone.results.get(), 30)
    finally:
        await phone.pc.close()
    assert header.ok and header.frame_id % 5 == 0
    assert decode_image(payload).shape == (150, 200, 3)


@pytest.mark.slow
async def test_a_session_is_removed_when_its_phone_leaves(worker: StylizerWorker, gateway: Gateway) -> None:
    phone = BarePhone(frames=10, size=(160, 96))
    try:
        stream_id = (await phone.connect(gateway))["stream_id"]
        assert stream_id in gateway.sessions
        session = gateway.sessions[stream_id]
    finally:
        await phone.pc.close()
    await asyncio.wait_for(session.closed.wait(), 60)  # ICE/DTLS notice the peer is gone
    # the reaper runs right after the session closes
    await wait_until(lambda: stream_id not in gateway.sessions, 5, "the session reaped", poll_s=0.01)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/healthz") as response:
            assert (await response.json())["sessions"] == 0


async def test_a_workers_error_reaches_the_phone(worker: StylizerWorker, gateway: Gateway, nc: NATS) -> None:
    phone = BarePhone(frames=10, size=(160, 96))
    try:
        answer = await phone.connect(gateway)
        # the style vanishes before the first key frame: the worker answers unknown_style
        await (await nc.jetstream().object_store(STYLE_BUCKET)).delete(answer["style_id"])
        phone.feed()
        failure = await asyncio.wait_for(phone.failures.get(), 30)
    finally:
        await phone.pc.close()
    assert failure.frame_id == 0 and failure.error_code == ErrorCode.UNKNOWN_STYLE and failure.attempts == 1
    assert answer["style_id"] in failure.error


@pytest.fixture
async def slow_site(nats_server: NatsServer, region: str) -> AsyncIterator[Gateway]:
    """One worker taking 400 ms a key, a gateway with one key in flight and one waiting."""
    model = EmulatedAccelerator(ServiceTimeProfile(fixed_ms=400.0, per_item_ms=0.0))
    worker = StylizerWorker(WorkerConfig(nats_url=nats_server.url, region=region, warmup=False), model)
    gateway = Gateway(
        GatewayConfig(
            port=0, nats_url=nats_server.url, region=region, ice_hosts=LOOPBACK, max_inflight=1, max_waiting=1
        )
    )
    await worker.start()
    await gateway.start()
    yield gateway
    await gateway.stop()
    await worker.stop()


@pytest.mark.slow
async def test_a_key_overtaken_while_waiting_is_reported_dropped(slow_site: Gateway) -> None:
    """Every frame a key, one stylized at a time: a waiting key replaced by a newer one is failed at once."""
    phone = BarePhone(frames=30, size=(160, 96), key_every=1)
    try:
        stream_id = (await phone.connect(slow_site))["stream_id"]
        phone.feed()
        failure = await asyncio.wait_for(phone.failures.get(), 30)
        header, _ = await asyncio.wait_for(phone.results.get(), 30)  # the site keeps serving
        counts = slow_site.sessions[stream_id].counts
    finally:
        await phone.pc.close()
    assert failure.error_code == ErrorCode.DROPPED and failure.attempts == 0 and header.ok
    assert counts["key_dropped"] >= 1


@pytest.mark.slow
async def test_frames_whose_id_stays_unknown_are_evicted(worker: StylizerWorker, gateway: Gateway) -> None:
    """A phone that announces nothing: decoded frames wait for an id, at most MAX_PENDING_FRAMES of them."""
    phone = BarePhone(frames=MAX_PENDING_FRAMES + 20, size=(160, 96), announce=False)
    try:
        session = gateway.sessions[(await phone.connect(gateway))["stream_id"]]
        phone.feed()

        await wait_until(lambda: session.counts.get("unmapped_frames_dropped"), 30, "frames evicted", poll_s=0.01)
        assert not session.closed.is_set()
    finally:
        await phone.pc.close()
    assert phone.results.empty() and phone.failures.empty()  # nothing was stylized: no frame had an id


@pytest.mark.slow
async def test_results_arrive_whole_when_the_data_channel_pushes_back(
    worker: StylizerWorker, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Water marks so low that the gateway waits for the buffer to drain before nearly every message."""
    monkeypatch.setattr(session_module, "BUFFER_HIGH_WATER", 1)
    monkeypatch.setattr(session_module, "BUFFER_LOW_WATER", 0)
    phone = BarePhone(frames=16, size=(640, 360))  # frames past the last key: aiortc releases one when the next comes
    try:
        await phone.connect(gateway, out_width=1280, out_height=720)  # ~10 chunks a key
        phone.feed()
        results = [await asyncio.wait_for(phone.results.get(), 30) for _ in range(3)]
    finally:
        await phone.pc.close()
    assert [h.frame_id for h, _ in results] == [0, 5, 10]
    assert all(h.chunks > 1 and decode_image(p).shape == (720, 1280, 3) for h, p in results)
