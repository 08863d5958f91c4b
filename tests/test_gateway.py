"""Gateway signaling: garbage offers are HTTP 400 with a message; health and metrics are served."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

from deploy.nats import NatsServer
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.sources import default_style_photo
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK, restrict_host_candidates, rtc_configuration
from streaming.images import encode_jpeg
from streaming.protocol import (
    MAX_ERROR_TEXT,
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

STYLE_B64 = base64.b64encode(encode_jpeg(default_style_photo())).decode()


HEALTHY_WITHIN_S = 5.0
AUDIO_ONLY_SDP = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
)


@pytest.fixture(scope="module")
def video_sdp() -> str:
    """A genuine aiortc offer with a video track and a data channel (never answered)."""

    async def offer() -> str:
        restrict_host_candidates(LOOPBACK)
        pc = RTCPeerConnection(rtc_configuration())
        pc.createDataChannel("mvs")
        pc.addTrack(VideoStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(offer())


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("make_body", "message"),
    [
        (lambda sdp: b"this is not json", "not JSON"),
        (lambda sdp: b"[1, 2]", "JSON object"),
        (lambda sdp: _body(type="answer", sdp=sdp, style=STYLE_B64), '"type": "offer"'),
        (lambda sdp: _body(type="offer", sdp="v=0\r\nthis is no sdp", style=STYLE_B64), "SDP"),
        (lambda sdp: _body(type="offer", sdp=AUDIO_ONLY_SDP, style=STYLE_B64), "video stream"),
        (lambda sdp: _body(type="offer", sdp=sdp), "style"),
        (lambda sdp: _body(type="offer", sdp=sdp, style="%%%"), "base64"),
        (lambda sdp: _body(type="offer", sdp=sdp, style=base64.b64encode(b"abc").decode()), "not a usable image"),
        (lambda sdp: _body(type="offer", sdp=sdp, style=STYLE_B64, out_width=-3, out_height=2), "out_width"),
        (lambda sdp: _body(type="offer", sdp=sdp, style=STYLE_B64, result="pixels"), "'result'"),
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
    restrict_host_candidates(LOOPBACK)
    pc = RTCPeerConnection(rtc_configuration())
    channel = pc.createDataChannel("mvs")
    opened, pongs = asyncio.Event(), asyncio.Queue[bytes]()
    channel.on("open", opened.set)
    channel.on("message", lambda data: pongs.put_nowait(data))
    pc.addTrack(VideoStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    body = _body(type="offer", sdp=pc.localDescription.sdp, style=STYLE_B64)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{gateway.url}/offer", data=body) as response:
                answer = await response.json()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
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
        assert "capture_ns" in errors[-1].error and all(len(e.error) <= MAX_ERROR_TEXT for e in errors)
        sent_at = time.monotonic_ns()
        channel.send(encode(ClockPing(phone_ns=sent_at)))
        pong = decode(await asyncio.wait_for(pongs.get(), 10), ClockPong)
        assert pong.phone_ns == sent_at and pong.gw_received_ns <= pong.gw_sent_ns
        session = gateway.sessions[answer["stream_id"]]
        assert session.counts["bad_messages"] == len(junk) and not session.closed.is_set()
    finally:
        await pc.close()


async def test_health_says_whether_the_site_can_stylize(gateway: Gateway, nats_server: NatsServer, region: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/healthz") as response:
            body = await response.json()
        assert response.status == 503 and body["nats_connected"] and body["workers"] == []
        worker = StylizerWorker(WorkerConfig(nats_url=nats_server.url, region=region, worker_id="h1", threads=1))
        await worker.start()
        try:
            deadline = time.monotonic() + HEALTHY_WITHIN_S  # a busy machine may miss one discovery window
            while True:
                async with http.get(f"{gateway.url}/healthz") as response:
                    body = await response.json()
                if response.status == 200 or time.monotonic() > deadline:
                    break
        finally:
            await worker.stop()
        assert response.status == 200 and body["ok"] and body["workers"] == ["h1"]


async def test_a_data_channel_with_another_label_is_refused_with_a_reason(gateway: Gateway) -> None:
    restrict_host_candidates(LOOPBACK)
    pc = RTCPeerConnection(rtc_configuration())
    channel = pc.createDataChannel("video-meta")
    messages = asyncio.Queue[bytes]()
    channel.on("message", lambda data: messages.put_nowait(data))
    pc.addTrack(VideoStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{gateway.url}/offer", data=_body(type="offer", sdp=pc.localDescription.sdp, style=STYLE_B64)
            ) as response:
                answer = await response.json()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        refusal = decode_any(await asyncio.wait_for(messages.get(), 15), (ChannelError,))
        assert isinstance(refusal, ChannelError) and "'mvs'" in refusal.error
        assert gateway.sessions[answer["stream_id"]].counts["refused_channels"] == 1
    finally:
        await pc.close()


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
