"""The edge gateway: HTTP signaling (``POST /offer``) and one :class:`PhoneSession` per phone.

``POST /offer`` takes an :class:`streaming.protocol.Offer` (JSON ``{"sdp", "type": "offer", "style": <base64 image>,
"out_width"?, "out_height"?, "result"?: "frame" | "coefficients"}``) and answers ``{"sdp", "type": "answer",
"stream_id", "style_id"}``; anything else is a 400 with a message. ``GET /metrics`` is Prometheus;
``GET /healthz`` is 200 only when the site can stylize (NATS up, a worker of the region answers).

``GET /`` is the browser phone (``static/``: plain HTML and JavaScript modules, no build step), ``GET /styles``
lists the bundled style photos it offers. Signaling from another origin is refused by the browser unless that
origin is in ``--cors-origin`` (none by default: the app is served from here, same origin).

ICE is not trickled: aiortc gathers all its candidates inside ``setLocalDescription`` and has no API to send
them one by one, so the answer carries them all; the browser waits for its own gathering to complete (bounded
by a timeout in the app) before posting the offer. With host candidates only (no STUN server configured on
either side) gathering completes in milliseconds, so trickling would save nothing.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription
from nats.aio.client import Client as NATS
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from streaming.clock import ClockOffset
from streaming.config import JS_DOMAIN_FLAG, NATS_CA_FLAG, NATS_FLAG, REGION_FLAG, flag
from streaming.gateway.admission import AdmissionPolicy, admission_middleware
from streaming.gateway.session import PhoneSession, SessionSettings
from streaming.gateway.stylize_client import discover_workers
from streaming.ice import restrict_host_candidates, rtc_configuration
from streaming.images import ImageDecodeError, decode_image
from streaming.nats_connect import connect_nats
from streaming.protocol import (
    DEFAULT_NATS_URL,
    DEFAULT_REGION,
    MAX_FRAME_SIDE,
    MAX_STYLE_BYTES,
    Answer,
    Offer,
    ProtocolError,
    decode_offer,
    encode_answer,
    stylize_subject,
)
from streaming.style_store import StyleStore
from streaming.tokens import TOKEN_SECRET_ENV, secret_from_env

log = logging.getLogger(__name__)

DEFAULT_HTTP_PORT = 8080
DEFAULT_DEADLINE_MS = 2000.0
DEFAULT_FIRST_ATTEMPT_MS = 1000.0
DEFAULT_MAX_INFLIGHT = 2
DEFAULT_MAX_WAITING = 2
DEFAULT_MAX_SESSIONS = 32
CODEC_THREADS = 2
BASE64_OVERHEAD = 4 / 3
SIGNALING_SLACK_BYTES = 256 * 1024

STATIC_DIR = Path(__file__).with_name("static")
"""The browser phone: index.html, its modules, the vendored msgpack library and the bundled style photos."""
STYLES_DIR = STATIC_DIR / "styles"
STYLE_SUFFIXES = (".jpg", ".png")

HEALTH_DISCOVERY_S = 0.5
"""How long /healthz waits for workers to answer discovery."""

SESSIONS = Gauge("mvs_gateway_sessions", "Phones connected", ["region"])


@dataclass
class GatewayConfig:
    """Settings of one edge gateway (each field with a ``flag`` is a ``mvs gateway`` flag)."""

    nats_url: str = field(default=DEFAULT_NATS_URL, metadata=NATS_FLAG)
    nats_ca: Path | None = field(default=None, metadata=NATS_CA_FLAG)
    region: str = field(default=DEFAULT_REGION, metadata=REGION_FLAG)
    js_domain: str | None = field(default=None, metadata=JS_DOMAIN_FLAG)
    """JetStream domain of the style store (when this site's NATS is a leaf node of the hub)."""
    host: str = field(default="127.0.0.1", metadata=flag("HTTP listen address"))
    port: int = field(default=DEFAULT_HTTP_PORT, metadata=flag("HTTP port (0: any free port)"))
    deadline_ms: float = field(default=DEFAULT_DEADLINE_MS, metadata=flag("budget per key frame, retry included"))
    first_attempt_ms: float = field(default=DEFAULT_FIRST_ATTEMPT_MS, metadata=flag("budget of the first try"))
    max_inflight: int = field(default=DEFAULT_MAX_INFLIGHT, metadata=flag("key frames per phone in flight"))
    """Key frames of one phone being stylized at once."""
    max_waiting: int = field(default=DEFAULT_MAX_WAITING, metadata=flag("key frames per phone queued"))
    """Key frames of one phone waiting for a dispatcher (the newest win)."""
    max_sessions: int = field(default=DEFAULT_MAX_SESSIONS, metadata=flag("phones at once"))
    jpeg_quality: int = 90
    ice_hosts: tuple[str, ...] = field(
        default_factory=tuple, metadata=flag("gather ICE candidates only here (repeatable)", name="ice-host")
    )
    """Gather ICE host candidates only on these addresses (e.g. 127.0.0.1); empty: all interfaces."""
    tls_cert: Path | None = field(default=None, metadata=flag("serve HTTPS with this certificate (PEM)"))
    """HTTPS certificate chain; browsers give a page the camera only in a secure context. None: plain HTTP."""
    tls_key: Path | None = field(default=None, metadata=flag("the certificate's private key (PEM)"))
    cors_origin: tuple[str, ...] = field(
        default_factory=tuple, metadata=flag("a browser origin allowed to call the gateway (repeatable)")
    )
    """Browser origins allowed to call /offer from their pages (streaming/gateway/admission.py); none by default."""
    require_token: bool = field(
        default=False, metadata=flag(f"POST /offer needs a bearer token (mvs token; secret from ${TOKEN_SECRET_ENV})")
    )
    token_secret: str | None = field(default=None, repr=False)
    """The token signing secret (never a flag); None: from the environment."""


class BadOffer(ValueError):
    """A signaling request that cannot be served (HTTP 400)."""


def parse_offer(body: bytes) -> Offer:
    """Decode a ``POST /offer`` body (``streaming.protocol``) and check what only the gateway can: that the SDP
    parses and offers a video stream and a data channel, and that the style is an image it can decode;
    raise :class:`BadOffer` with a clear message."""
    try:
        offer = decode_offer(body)
    except ProtocolError as exc:
        raise BadOffer(str(exc)) from exc
    try:
        kinds = [media.kind for media in SessionDescription.parse(offer.sdp).media]
    except Exception as exc:  # aiortc's SDP parser raises assorted errors on garbage
        raise BadOffer(f"unparsable SDP offer: {exc}") from exc
    if "video" not in kinds or "application" not in kinds:
        raise BadOffer(f"SDP offer needs a video stream and a data channel, it has {kinds or 'no media'}")
    try:
        decode_image(offer.style, max_side=MAX_FRAME_SIDE)
    except ImageDecodeError as exc:
        raise BadOffer(f"'style' is not a usable image: {exc}") from exc
    return offer


class Gateway:
    """Signaling server and owner of all phone sessions of one edge site."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.settings = SessionSettings(
            region=config.region,
            subject=stylize_subject(config.region),
            deadline_ms=config.deadline_ms,
            first_attempt_ms=config.first_attempt_ms,
            max_inflight=config.max_inflight,
            max_waiting=config.max_waiting,
            jpeg_quality=config.jpeg_quality,
        )
        self.sessions: dict[str, PhoneSession] = {}
        self.worker_clocks: dict[str, ClockOffset] = {}
        """Clock offset of every worker seen, learnt from request/reply timestamps; shared by sessions."""
        self._executor = ThreadPoolExecutor(max_workers=CODEC_THREADS, thread_name_prefix="gateway-codec")
        self._nc: NATS | None = None
        self._styles: StyleStore | None = None
        self._runner: web.AppRunner | None = None
        self.port = config.port
        self._reapers: set[asyncio.Task[None]] = set()
        secret = (config.token_secret or secret_from_env()) if config.require_token else None
        if config.require_token and secret is None:
            raise ValueError(f"--require-token needs the token secret in ${TOKEN_SECRET_ENV}")
        if (config.tls_cert is None) != (config.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        self.admission = AdmissionPolicy(config.region, config.cors_origin, secret)

    def app(self) -> web.Application:
        """The aiohttp application (routes: /offer, /metrics, /healthz)."""
        app = web.Application(
            client_max_size=int(MAX_STYLE_BYTES * BASE64_OVERHEAD) + SIGNALING_SLACK_BYTES,
            middlewares=[admission_middleware(self.admission)],
        )
        app.router.add_post("/offer", self._offer)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/", self._index)
        app.router.add_get("/styles", self._styles_list)
        app.router.add_static("/static/", STATIC_DIR)
        return app

    async def start(self) -> None:
        """Connect to NATS and start serving HTTP."""
        if self.config.ice_hosts:
            restrict_host_candidates(self.config.ice_hosts)
        self._nc = await connect_nats(
            self.config.nats_url, f"gateway-{self.config.region}", service="gateway", tls_ca=self.config.nats_ca
        )
        self._styles = await StyleStore.open(self._nc.jetstream(domain=self.config.js_domain))
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.config.host, self.config.port, ssl_context=self._ssl_context()).start()
        self.port = int(self._runner.addresses[0][1])  # the real port when config.port is 0
        log.info("gateway listening", extra={"url": self.url, "region": self.config.region})

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.config.tls_cert is None or self.config.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    @property
    def url(self) -> str:
        """Base URL of the signaling server."""
        scheme = "https" if self.config.tls_cert is not None else "http"
        return f"{scheme}://{self.config.host}:{self.port}"

    async def stop(self) -> None:
        """Close every session, the HTTP server and the NATS connection."""
        await asyncio.gather(*(s.close() for s in list(self.sessions.values())), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._nc is not None:
            await self._nc.drain()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _offer(self, request: web.Request) -> web.Response:
        try:
            offer = parse_offer(await request.read())
        except BadOffer as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if len(self.sessions) >= self.config.max_sessions:
            return web.json_response({"error": "gateway full"}, status=503)
        assert self._nc is not None and self._styles is not None
        style_id = await self._styles.put(offer.style)
        stream_id = uuid.uuid4().hex[:12]
        pc = RTCPeerConnection(rtc_configuration())
        session = PhoneSession(
            stream_id,
            pc,
            self._nc,
            self._executor,
            self.settings,
            style_id,
            offer.out_size,
            self.worker_clocks,
            offer.result,
        )
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises ValueError and others on SDP it cannot use
            await pc.close()
            return web.json_response({"error": f"unusable SDP offer: {exc}"}, status=400)
        self.sessions[stream_id] = session
        SESSIONS.labels(self.config.region).set(len(self.sessions))
        reaper = asyncio.create_task(self._reap(session))
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)
        log.info("phone connected", extra={"stream_id": stream_id, "style_id": style_id})
        answer = Answer(sdp=pc.localDescription.sdp, stream_id=stream_id, style_id=style_id)
        return web.Response(body=encode_answer(answer), content_type="application/json")

    async def _reap(self, session: PhoneSession) -> None:
        await session.closed.wait()
        self.sessions.pop(session.stream_id, None)
        SESSIONS.labels(self.config.region).set(len(self.sessions))

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def _styles_list(self, request: web.Request) -> web.Response:
        """The bundled style photos: ``{"styles": [{"name", "url"}]}``."""
        photos = sorted(p for p in STYLES_DIR.iterdir() if p.suffix in STYLE_SUFFIXES)
        styles = [{"name": p.stem, "url": f"/static/styles/{p.name}"} for p in photos]
        return web.json_response({"styles": styles})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        """200 when this site can stylize (NATS connected, at least one worker answers), else 503."""
        nc = self._nc
        connected = nc is not None and nc.is_connected
        workers = await discover_workers(nc, self.config.region, HEALTH_DISCOVERY_S) if nc and connected else []
        ok = connected and bool(workers)
        body = {
            "ok": ok,
            "region": self.config.region,
            "sessions": len(self.sessions),
            "nats_connected": connected,
            "workers": sorted(w.worker_id for w in workers),
        }
        return web.json_response(body, status=200 if ok else 503)


async def run(config: GatewayConfig) -> None:
    """Run a gateway until cancelled."""
    gateway = Gateway(config)
    await gateway.start()
    try:
        await asyncio.Event().wait()
    finally:
        await gateway.stop()
