"""The fault kit of the hardening campaign (issue 14): hostile inputs built on the spot, shared by the tests, the
fuzz test and ``python -m bench.chaos`` (it lives in deploy/, which tests and benches both import). Nothing here is
stored: every bomb is a tiny real image whose header is patched to claim a huge size. :func:`gateway_process` is a
gateway in its own process, to kill -9; :class:`BarePhone` a phone that does what a real one never does."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import random
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

from deploy.launch import ServiceProcess, http_answers
from deploy.nats_auth import gateway_user, worker_id, worker_user
from deploy.nats_servers import HUB_DOMAIN, NatsHubAndLeaves, free_port
from edge_worker.service import WorkerConfig
from mobile_sim.client import Phone, PhoneConfig
from mobile_sim.link import CLOCK_PROBE_PERIOD_S, LIVENESS_S, CameraTrack, Outgoing, SenderPts
from mobile_sim.sources import default_style_photo, sample_photo
from streaming.cli import ServiceOptions
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK, gathering_on, rtc_configuration
from streaming.images import PNG_SIGNATURE, encode_jpeg
from streaming.protocol import (
    DATA_CHANNEL_LABEL,
    RTP_TIMESTAMP_MODULUS,
    ChannelError,
    Chunk,
    ChunkAssembler,
    ClockPong,
    FrameMeta,
    KeyResult,
    StylizeRequest,
    decode_any,
    encode,
)

JPEG_SOF0 = b"\xff\xc0"
GATEWAY_UP_TIMEOUT_S = 20.0
GATEWAY_STOP_S = 5.0
QUIET = ServiceOptions(log_level="warning")
HEALTH_POLL_S = 0.05
STREAM_SLACK_S = 30.0
"""How much longer than its frames a phone run may take (2 loaded cores) before the step gives up on it."""


def _tiny_image(side: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (side, side, 3), dtype=np.uint8)


def jpeg_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A baseline JPEG of 8x8 pixels whose start-of-frame header claims ``width`` x ``height`` (the issue's
    820-byte, 30000x30000 one drove a worker to 4.1 GB)."""
    data = encode_jpeg(_tiny_image())
    sof = data.index(JPEG_SOF0)
    # SOF0: marker (2), length (2), precision (1), height (2), width (2)
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def png_bomb(width: int = 16_000, height: int = 16_000) -> bytes:
    """A PNG of 8x8 pixels whose IHDR claims ``width`` x ``height``, its CRC made right, so that only a size check
    stands between it and a decoder allocating ``width * height * 3`` bytes."""
    ok, buf = cv2.imencode(".png", _tiny_image())
    assert ok
    data = buf.tobytes()
    assert data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR"
    ihdr = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


async def unanswered_offer_sdp() -> str:
    """A genuine aiortc SDP offer with a video track and the data channel, whose peer is closed at once: a phone
    that will never finish ICE (loopback host candidates only)."""
    pc = RTCPeerConnection(rtc_configuration())
    pc.createDataChannel(DATA_CHANNEL_LABEL)
    pc.addTrack(VideoStreamTrack())
    with gathering_on(LOOPBACK):
        await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def key_request(
    style_id: str, image: bytes, out_size: tuple[int, int], budget_ms: float, **fields: Any
) -> StylizeRequest:
    """A stylize request for key frame 1 of stream ``s``, ``image`` to be stylized into ``out_size``."""
    width, height = out_size
    return StylizeRequest(
        stream_id="s",
        frame_id=1,
        style_id=style_id,
        image=image,
        out_width=width,
        out_height=height,
        budget_ms=budget_ms,
        **fields,
    )


def loopback_phone(urls: Sequence[str], region: str, frames: int, **fields: Any) -> PhoneConfig:
    """A phone of ``region`` for gateways on loopback (ICE on loopback, a key every 5 frames); ``fields`` set the
    rest."""
    return PhoneConfig(
        gateway_urls=tuple(urls), frames=frames, key_interval=5, region=region, ice_hosts=LOOPBACK, **fields
    )


def restricted_worker(cluster: NatsHubAndLeaves, region: str, index: int = 0, **fields: Any) -> WorkerConfig:
    """Worker ``index`` of ``region`` in a secure cluster: its own NATS user on the region's leaf, stores in the
    hub's domain, one torch thread; ``fields`` set the rest."""
    worker = worker_id(region, index)
    url = cluster.client_url(cluster.leaves[region], worker_user(worker))
    return WorkerConfig(nats_url=url, region=region, worker_id=worker, threads=1, js_domain=HUB_DOMAIN, **fields)


def restricted_gateway(cluster: NatsHubAndLeaves, region: str) -> GatewayConfig:
    """The gateway of ``region`` in a secure cluster: its NATS user on the region's leaf, ICE on loopback."""
    url = cluster.client_url(cluster.leaves[region], gateway_user(region))
    return GatewayConfig(port=0, nats_url=url, region=region, js_domain=HUB_DOMAIN, ice_hosts=LOOPBACK)


def gateway_process(nats_url: str, region: str, port: int, log_path: Path | None = None) -> ServiceProcess:
    """``python -m streaming.gateway`` as a child process on a fixed loopback port, to be killed with SIGKILL (which
    sends the phone nothing: no BYE, no closed data channel) and started again on the same port."""
    config = GatewayConfig(nats_url=nats_url, region=region, port=port, ice_hosts=LOOPBACK)
    return ServiceProcess(config, options=QUIET, log_path=log_path, own_session=False, stop_grace_s=GATEWAY_STOP_S)


def gateway_url(process: ServiceProcess) -> str:
    """The URL of a gateway process on loopback."""
    return f"http://127.0.0.1:{process.config.port}"


async def wait_answering(process: ServiceProcess, timeout_s: float = GATEWAY_UP_TIMEOUT_S) -> float:
    """Until the gateway's ``/livez`` answers at all (200 or 503: the HTTP server is up); the monotonic time then.
    Not ``/healthz``: its answer waits up to ``HEALTH_DISCOVERY_S`` for workers, and a phone could reconnect before
    it came (test_gateway_kill saw the reconnect 0.29 s before such an "up")."""
    return await process.wait_ready(http_answers(f"{gateway_url(process)}/livez", statuses=None), timeout_s)


@dataclass
class GatewayKill:
    """What :func:`kill_gateway_mid_stream` saw: the phone's report, and when (monotonic s) the gateway was killed,
    the phone took it for lost, the new gateway process was started, first answered /healthz (which waits on a
    worker discovery: the phone may be connected before) and the phone was connected to it again."""

    report: dict[str, Any]
    killed_at: float
    lost_at: float | None
    restarted_at: float
    up_at: float
    reconnected_at: float | None

    @property
    def noticed_after_s(self) -> float | None:
        """Seconds from the kill to the phone taking the gateway for lost (None: never)."""
        return None if self.lost_at is None else self.lost_at - self.killed_at

    @property
    def reconnect_after_up_s(self) -> float | None:
        """Seconds from the new gateway answering /healthz to the phone connected to it (None: never)."""
        return None if self.reconnected_at is None else self.reconnected_at - self.up_at


async def kill_gateway_mid_stream(
    nats_url: str,
    region: str,
    out_dir: Path | None,
    *,
    before_s: float = 2.0,
    down_s: float = 2.0,
    after_s: float = 6.0,
    fps: float = 15.0,
    size: tuple[int, int] = (320, 180),
    log_path: Path | None = None,
) -> GatewayKill:
    """A phone streams through a gateway process (a worker of ``region`` must be serving); ``before_s`` after its
    first stylized key, the gateway is killed with SIGKILL, started again on its port ``down_s`` later, and the
    phone runs on. Its frames cover ``before_s`` + the phone's silence timeout (``mobile_sim.link.LIVENESS_S``)
    + ``after_s``, plus the time to the first key.
    """
    gateway = gateway_process(nats_url, region, free_port(), log_path).start()
    try:
        await wait_answering(gateway)
        seconds = before_s + LIVENESS_S + CLOCK_PROBE_PERIOD_S + after_s
        phone = Phone(
            loopback_phone([gateway_url(gateway)], region, int(seconds * fps), size=size, fps=fps, out_dir=out_dir)
        )
        run = asyncio.create_task(phone.run())
        try:
            deadline = time.monotonic() + GATEWAY_UP_TIMEOUT_S
            while not any(r.ok for r in phone._ledger.records.values()):  # streaming, and served
                if run.done() or time.monotonic() > deadline:
                    raise RuntimeError("the phone got no stylized key before the kill")
                await asyncio.sleep(HEALTH_POLL_S)
            await asyncio.sleep(before_s)
            gateway.kill()
            killed_at = time.monotonic()
            await asyncio.sleep(down_s)
            gateway.start()
            restarted_at = time.monotonic()
            up_at = await wait_answering(gateway)
            report = (await asyncio.wait_for(run, seconds + STREAM_SLACK_S)).report
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run
        outages = phone._link.outages
        return GatewayKill(
            report=report,
            killed_at=killed_at,
            lost_at=outages[0].began if outages else None,
            restarted_at=restarted_at,
            up_at=up_at,
            reconnected_at=outages[0].reconnected if outages else None,
        )
    finally:
        gateway.stop()


def slow_offer_head(port: int, length: int = 100_000) -> bytes:
    """The head and first bytes of an offer whose body never finishes (issue 22: such offers held every slot)."""
    head = f"POST /offer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {length}\r\n\r\n" + '{"type": "offer", "sdp": "').encode()


def _sdp_with(sdp: str, extra: list[str], after: str = "m=video") -> str:
    """``sdp`` with ``extra`` lines inserted after its first line starting with ``after``."""
    lines = sdp.split("\r\n")
    at = next(i for i, line in enumerate(lines) if line.startswith(after)) + 1
    return "\r\n".join(lines[:at] + extra + lines[at:])


def sdp_bombs(sdp: str) -> dict[str, str]:
    """Offers built on ``sdp`` (a genuine one) that kept aiortc busy on the gateway's loop for seconds each (issue
    22): 20,000 rtpmap/fmtp lines, 50,000 ``a=ssrc`` lines, 1,000 bundled m-sections."""
    lines = sdp.split("\r\n")
    video = next(i for i, line in enumerate(lines) if line.startswith("m=video"))
    end = next(i for i in range(video + 1, len(lines)) if lines[i].startswith("m="))
    sections = [line.replace("a=mid:0", f"a=mid:v{k}") for k in range(1000) for line in lines[video:end]]
    codecs = [f"a=rtpmap:{96 + k % 32} VP8/90000\r\na=fmtp:{96 + k % 32} x={k}" for k in range(10_000)]
    return {
        "20,000 rtpmap/fmtp lines": _sdp_with(sdp, codecs),
        "50,000 a=ssrc lines": _sdp_with(sdp, [f"a=ssrc:{k} cname:bomb{k}" for k in range(50_000)]),
        "1,000 bundled m-sections": "\r\n".join(lines[:video] + sections + lines[video:]),
    }


def with_candidates(sdp: str, candidates: list[str]) -> str:
    """``sdp`` with its own candidates replaced by ``candidates`` (``"address port"``), highest priority first, in
    each m-section (issue 22: 2,000 of them made the gateway send STUN to 200 ports of one address)."""
    out: list[str] = []
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            continue
        out.append(line)
        if line.startswith("m="):
            out += [f"a=candidate:c{k} 1 udp {2_000_000_000 - k} {c} typ host" for k, c in enumerate(candidates)]
    return "\r\n".join(out)


class StunTargets:
    """UDP sockets on loopback that count which of them received anything (the gateway's connectivity checks)."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.probed: set[int] = set()
        self._transports: list[asyncio.DatagramTransport] = []

    async def open(self, count: int) -> StunTargets:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            transport, _ = await loop.create_datagram_endpoint(lambda: _Target(self), local_addr=("127.0.0.1", 0))
            self._transports.append(transport)
            self.ports.append(int(transport.get_extra_info("sockname")[1]))
        return self

    def close(self) -> None:
        for transport in self._transports:
            transport.close()


class _Target(asyncio.DatagramProtocol):
    def __init__(self, targets: StunTargets) -> None:
        self._targets = targets
        self._port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._port = int(transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._targets.probed.add(self._port)


STYLE_B64 = base64.b64encode(encode_jpeg(default_style_photo())).decode()


def offer_body(**fields: object) -> bytes:
    """A ``POST /offer`` body with these JSON fields."""
    return json.dumps(fields).encode()


class BarePhone:
    """A phone reduced to the gateway's side of the contract, for what ``mobile_sim.Phone`` never does (ask for an
    output size, announce frames wrongly or not at all, flood the data channel), built from the phone's real parts
    (camera track, dithered sender pts, chunk reassembly). Streams ``frames`` frames of ``size`` at 30 fps, a key
    every ``key_every``; every message the gateway sends lands in a queue: complete results, failed keys, clock
    pongs and channel errors."""

    def __init__(self, frames: int, size: tuple[int, int], key_every: int = 5, announce: bool = True) -> None:
        self.pc = RTCPeerConnection(rtc_configuration())
        self.channel = self.pc.createDataChannel(DATA_CHANNEL_LABEL)
        self.opened = asyncio.Event()
        self.channel.on("open", self.opened.set)
        self.channel.on("message", self._on_message)
        self.results: asyncio.Queue[tuple[KeyResult, bytes]] = asyncio.Queue()
        self.failures: asyncio.Queue[KeyResult] = asyncio.Queue()
        self.pongs: asyncio.Queue[ClockPong] = asyncio.Queue()
        self.errors: asyncio.Queue[ChannelError] = asyncio.Queue()
        self._assembler = ChunkAssembler()
        self._frames: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._image = cv2.resize(sample_photo(), size)
        self._count, self._key_every, self._announce_frames = frames, key_every, announce
        self.pc.addTrack(CameraTrack(self._next_frame, SenderPts(30.0, frames, seed=0), self._on_send))

    def feed(self) -> None:
        """Start the camera: its frames go out at 30 fps."""
        for i in range(self._count):
            key = i % self._key_every == 0
            self._frames.put_nowait(Outgoing(frame_id=i, image=self._image, key=key, capture_ns=time.monotonic_ns()))

    async def _next_frame(self) -> Outgoing:
        await asyncio.sleep(1 / 30)  # the camera's pace, not a synchronisation
        return await self._frames.get()

    def _on_send(self, meta: FrameMeta) -> bool:
        if self._announce_frames:
            self.announce(meta)
        return True

    def announce(self, meta: FrameMeta) -> None:
        """Tell the gateway about a frame handed to the encoder (a test may announce something else)."""
        self.channel.send(encode(meta))

    def _on_message(self, data: bytes) -> None:
        message = decode_any(data, (KeyResult, Chunk, ClockPong, ChannelError))
        if isinstance(message, KeyResult) and not message.ok:
            self.failures.put_nowait(message)
        elif isinstance(message, KeyResult):
            self._assembler.start(message)
        elif isinstance(message, Chunk) and (complete := self._assembler.add(message)) is not None:
            self.results.put_nowait(complete)
        elif isinstance(message, ClockPong):
            self.pongs.put_nowait(message)
        elif isinstance(message, ChannelError):
            self.errors.put_nowait(message)

    async def connect(self, gateway: Gateway | str, **fields: object) -> dict[str, str]:
        """Offer, apply the answer, wait for the data channel; the answer (stream and style ids)."""
        url = gateway if isinstance(gateway, str) else gateway.url
        with gathering_on(LOOPBACK):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        body = offer_body(type="offer", sdp=self.pc.localDescription.sdp, style=STYLE_B64, **fields)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/offer", data=body) as response:
                if response.status != 200:
                    raise RuntimeError(f"offer refused: HTTP {response.status} {await response.text()}")
                answer = await response.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await asyncio.wait_for(self.opened.wait(), GATEWAY_UP_TIMEOUT_S)
        return {"stream_id": answer["stream_id"], "style_id": answer["style_id"]}


class RandomPtsPhone(BarePhone):
    """Announces made-up pts: 1,024 of them at once, then a random one for every frame it sends (issue 22)."""

    def __init__(self, frames: int, size: tuple[int, int]) -> None:
        super().__init__(frames, size)
        self.rng = random.Random(22)

    def flood(self, count: int) -> None:
        """Announce ``count`` frames that were never sent."""
        for i in range(count):
            self.announce(
                FrameMeta(frame_id=-1 - i, pts=self.rng.randrange(RTP_TIMESTAMP_MODULUS), key=True, capture_ns=0)
            )

    def announce(self, meta: FrameMeta) -> None:
        super().announce(dataclasses.replace(meta, pts=self.rng.randrange(RTP_TIMESTAMP_MODULUS)))
