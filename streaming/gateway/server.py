"""The edge gateway: HTTP signaling (``POST /offer``) and one :class:`PhoneSession` per phone.

``POST /offer`` takes an :class:`streaming.protocol.Offer` (JSON ``{"sdp", "type": "offer", "style": <base64 image>,
"out_width"?, "out_height"?, "result"?: "frame" | "coefficients"}``) and answers ``{"sdp", "type": "answer",
"stream_id", "style_id"}``; anything else is a 400 with a message. ``GET /metrics`` is Prometheus;
``GET /healthz`` is 200 only when the site can take a phone (NATS up, a worker of the region answers, a free
session slot) and says its capacity.

Admission is bounded before any work. One client address holds at most ``max_connections_per_address`` HTTP
connections (:mod:`streaming.gateway.connections`), and a connection without a complete request head for
``http_idle_timeout_s`` is closed. An offer's body must arrive within ``offer_read_timeout_s`` (HTTP 408) and is read
before a session slot is reserved, so slow senders hold no slot; the slot is then reserved synchronously, before the
next await, so concurrent offers can never exceed ``max_sessions``; one client address may hold at most
``max_pending_per_address`` offers (being read or served) and unconnected sessions, and make at most
``offer_burst_per_address`` offers at once and ``offer_rate_per_address`` a second after that (a token bucket per
address; HTTP 429 beyond, with Retry-After, counted as ``mvs_gateway_offers_refused_total{reason="rate"}``). The
body (JSON and up to ~11 MB of base64) is decoded on a thread of its own in pieces of a few milliseconds
(:func:`streaming.protocol.decode_offer`), so the event loop runs between them. The SDP is bounded before aiortc
parses it (:mod:`streaming.gateway.sdp_limits`: bytes, lines, m-sections, ``a=ssrc`` lines, remote candidates and
their addresses), so parsing and answering it stays short. The style
image's header is checked on the event loop (size limits, microseconds); the image is decoded, scaled down and
re-encoded on a thread of its own (:func:`streaming.style_store.normalized_style`: what is stored is a bounded JPEG,
never the upload's bytes), and an address (or a token's subject) stores at most ``style_quota_bytes`` of new
styles per ``style_quota_window_s``. An upload seen lately whose style is still stored is not decoded again (the
bundled styles), and at most :data:`MAX_STYLES_WAITING` offers wait for the style thread (503 beyond), so a flood
of big new styles delays no phone offering a known one. A session that does not connect within
``connect_timeout_s``, or whose phone falls silent for ``idle_timeout_s``, is closed and its ports freed
(``PhoneSession.supervise``).

``GET /`` is the browser phone (``static/``: plain HTML and JavaScript modules, no build step), ``GET /styles``
lists the bundled style photos it offers. Every answer carries the security headers of
:data:`streaming.gateway.admission.SECURITY_HEADERS` (a Content-Security-Policy of this origin only, no framing, no
sniffing). Signaling from another origin is refused by the browser unless that origin is in ``--cors-origin`` (none
by default: the app is served from here, same origin), and a request naming a host other than an IP address,
``localhost`` or a ``--public-name`` is refused (DNS rebinding).

ICE is not trickled: aiortc gathers all its candidates inside ``setLocalDescription`` and has no API to send
them one by one, so the answer carries them all; the browser waits for its own gathering to complete (bounded
by a timeout in the app) before posting the offer. With host candidates only (no STUN server configured on
either side) gathering completes in milliseconds, so trickling would save nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import ssl
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from prometheus_client import Gauge

from streaming.buckets import MIB, STYLE_BUCKET_MAX_BYTES, STYLE_TTL_S, BucketMissingError
from streaming.clock import ClockOffset
from streaming.config import REGION_FLAG, flag
from streaming.gateway.admission import (
    REFUSED,
    TOKEN_CLAIMS,
    AdmissionPolicy,
    admission_middleware,
    security_middleware,
)
from streaming.gateway.connections import ConnectionGuard, GuardedAppRunner
from streaming.gateway.rate_limit import KeyedTokenBuckets
from streaming.gateway.sdp_limits import SdpRefused, screen_sdp
from streaming.gateway.session import PhoneSession, SessionSettings
from streaming.gateway.stylize_client import discover_workers
from streaming.ice import RemoteCandidatePolicy, gathering_on, rtc_configuration
from streaming.images import ImageDecodeError, check_image_size
from streaming.jetstream_health import JetStreamProbe, probe_subject
from streaming.nats_connect import NatsClientConfig, connect_nats
from streaming.protocol import (
    DEFAULT_REGION,
    GATEWAY_INSTANCE_HEADER,
    MAX_FRAME_SIDE,
    MAX_STYLE_BYTES,
    STYLE_BUCKET,
    Answer,
    Offer,
    ProtocolError,
    clip,
    decode_offer,
    encode_answer,
    stylize_subject,
)
from streaming.style_store import (
    STORED_STYLE_MAX_BYTES,
    STORED_STYLE_MAX_SIDE,
    StyleStore,
    StyleStoreFull,
    normalized_style,
    style_id_of,
    upload_digest,
)
from streaming.telemetry import LogLimiter, add_health_routes, count_tasks, region_metrics
from streaming.tokens import TOKEN_SECRET_ENV, secret_from_env

log = logging.getLogger(__name__)

DEFAULT_HTTP_PORT = 8080
DEFAULT_DEADLINE_MS = 2000.0
DEFAULT_FIRST_ATTEMPT_MS = 1000.0
DEFAULT_MAX_INFLIGHT = 2
DEFAULT_MAX_WAITING = 2
DEFAULT_MAX_SESSIONS = 32
DEFAULT_MAX_PENDING_PER_ADDRESS = 8
DEFAULT_CONNECT_TIMEOUT_S = 15.0
DEFAULT_IDLE_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 64
DEFAULT_HTTP_IDLE_TIMEOUT_S = 5.0
DEFAULT_OFFER_READ_TIMEOUT_S = 10.0
DEFAULT_OFFER_RATE_PER_ADDRESS = 2.0
DEFAULT_OFFER_BURST_PER_ADDRESS = 20
"""A phone offers once per session, again after a lost connection (with a back-off); 20 at once and 2 a second
leave room for a few dozen phones behind one NAT."""
MAX_RATE_ADDRESSES = 10_000
"""Client addresses whose offer rate is remembered (the least recently seen are forgotten first)."""
"""An offer's body (up to ~11 MB with an 8 MB style) must arrive within this: 9 Mbit/s for the largest."""
DEFAULT_STYLE_QUOTA_BYTES = 32 * 1024 * 1024
DEFAULT_STYLE_QUOTA_WINDOW_S = 3600.0
LINGER_S = 1.0
"""How long aiohttp reads and discards the rest of a body the gateway refused before closing (its default: 10 s)."""
MAX_STYLES_WAITING = 4
"""Offers whose new style may wait for the style thread (each ~0.1-0.5 s for an 8 MB photo); more get 503 at once,
so a flood of big styles neither piles up bodies in memory nor delays the offers of known styles."""
MAX_KNOWN_UPLOADS = 1024
"""Uploads remembered by digest with the id of their stored style (the bundled styles are sent again and again)."""
MAX_QUOTA_IDENTITIES = 10_000
"""Addresses or token subjects whose recent style uploads are remembered (the oldest are forgotten first)."""
CODEC_THREADS = 2
STYLE_THREADS = 1
OFFER_THREADS = 1
RETRY_AFTER_S = 2
"""Retry-After (seconds) of a 429 or 503 answer to an offer."""
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
class GatewayConfig(NatsClientConfig):
    """Settings of one edge gateway (each field with a ``flag`` is a ``mvs gateway`` flag)."""

    region: str = field(default=DEFAULT_REGION, metadata=REGION_FLAG)
    host: str = field(default="127.0.0.1", metadata=flag("HTTP listen address"))
    port: int = field(default=DEFAULT_HTTP_PORT, metadata=flag("HTTP port (0: any free port)"))
    deadline_ms: float = field(default=DEFAULT_DEADLINE_MS, metadata=flag("budget per key frame, retry included"))
    first_attempt_ms: float = field(default=DEFAULT_FIRST_ATTEMPT_MS, metadata=flag("budget of the first try"))
    max_inflight: int = field(default=DEFAULT_MAX_INFLIGHT, metadata=flag("key frames per phone in flight"))
    """Key frames of one phone being stylized at once."""
    max_waiting: int = field(default=DEFAULT_MAX_WAITING, metadata=flag("key frames per phone queued"))
    """Key frames of one phone waiting for a dispatcher (the newest win)."""
    max_sessions: int = field(default=DEFAULT_MAX_SESSIONS, metadata=flag("phones at once"))
    max_pending_per_address: int = field(
        default=DEFAULT_MAX_PENDING_PER_ADDRESS, metadata=flag("offers and unconnected sessions per client address")
    )
    max_connections_per_address: int = field(
        default=DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, metadata=flag("open HTTP connections per client address")
    )
    http_idle_timeout_s: float = field(
        default=DEFAULT_HTTP_IDLE_TIMEOUT_S,
        metadata=flag("close an HTTP connection without a complete request head after this long (s)"),
    )
    offer_read_timeout_s: float = field(
        default=DEFAULT_OFFER_READ_TIMEOUT_S, metadata=flag("an offer's body must arrive within this (s; else 408)")
    )
    offer_rate_per_address: float = field(
        default=DEFAULT_OFFER_RATE_PER_ADDRESS,
        metadata=flag("offers a second one client address may make once its burst is spent (else 429)"),
    )
    offer_burst_per_address: int = field(
        default=DEFAULT_OFFER_BURST_PER_ADDRESS, metadata=flag("offers one client address may make at once")
    )
    style_quota_bytes: int = field(
        default=DEFAULT_STYLE_QUOTA_BYTES,
        metadata=flag(
            "bytes of new styles one address (or token subject) may store per quota window; a style is stored as a "
            f"JPEG of at most {STORED_STYLE_MAX_SIDE} px a side and {STORED_STYLE_MAX_BYTES // MIB} MiB, in a bucket "
            f"of {STYLE_BUCKET_MAX_BYTES // MIB} MiB, for {STYLE_TTL_S / 3600:g} h after its last offer"
        ),
    )
    style_quota_window_s: float = field(
        default=DEFAULT_STYLE_QUOTA_WINDOW_S, metadata=flag("the style quota's window (s)")
    )
    connect_timeout_s: float = field(
        default=DEFAULT_CONNECT_TIMEOUT_S, metadata=flag("close a session not connected after this long")
    )
    idle_timeout_s: float = field(
        default=DEFAULT_IDLE_TIMEOUT_S, metadata=flag("close a connected session silent for this long")
    )
    """A connected phone sends a frame announcement or a clock probe at least once a second."""
    jpeg_quality: int = 90
    ice_hosts: tuple[str, ...] = field(
        default_factory=tuple, metadata=flag("gather ICE candidates only here (repeatable)", name="ice-host")
    )
    """Gather ICE host candidates only on these addresses (e.g. 127.0.0.1); empty: all interfaces."""
    ice_remote_networks: tuple[str, ...] = field(
        default_factory=tuple,
        metadata=flag(
            "also send ICE checks to phones' candidates in this network (CIDR, repeatable)", name="ice-remote-network"
        ),
    )
    """Private or link-local networks whose remote candidates are kept (:class:`RemoteCandidatePolicy`); global
    addresses always are, this host's own ones when an ``--ice-host`` is loopback."""
    public_names: tuple[str, ...] = field(
        default_factory=tuple,
        metadata=flag("a host name phones and browsers use for this gateway (repeatable)", name="public-name"),
    )
    """Host names requests may name besides IP addresses and ``localhost``: any other ``Host`` is refused."""
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


def parse_offer(body: bytes, candidates: RemoteCandidatePolicy) -> Offer:
    """Decode a ``POST /offer`` body (``streaming.protocol``) and check what only the gateway can: that the SDP is
    within :mod:`~streaming.gateway.sdp_limits` (its remote candidates cut to what ``candidates`` allows), parses
    and offers a video stream and a data channel, and that the style's header is a JPEG or PNG within the size
    limits (decoding it is the caller's); raise :class:`BadOffer` with a clear message. Pure and bounded: the gateway
    runs it on its offer thread."""
    try:
        offer = decode_offer(body)
        offer = dataclasses.replace(offer, sdp=screen_sdp(offer.sdp, candidates).sdp)
    except (ProtocolError, SdpRefused) as exc:
        raise BadOffer(str(exc)) from exc
    try:
        kinds = [media.kind for media in SessionDescription.parse(offer.sdp).media]
    except Exception as exc:  # aiortc's SDP parser raises assorted errors on garbage
        raise BadOffer(f"unparsable SDP offer: {exc}") from exc
    if "video" not in kinds or "application" not in kinds:
        raise BadOffer(f"SDP offer needs a video stream and a data channel, it has {kinds or 'no media'}")
    try:
        check_image_size(offer.style, max_side=MAX_FRAME_SIDE)
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
        self.instance = uuid.uuid4().hex[:16]
        """This process's id (:data:`GATEWAY_INSTANCE_HEADER`)."""
        self.worker_clocks: dict[str, ClockOffset] = {}
        """Clock offset of every worker seen, learnt from request/reply timestamps; shared by sessions."""
        self._executor = ThreadPoolExecutor(max_workers=CODEC_THREADS, thread_name_prefix="gateway-codec")
        self._style_executor = ThreadPoolExecutor(max_workers=STYLE_THREADS, thread_name_prefix="gateway-style")
        """Style images are decoded here, apart from key frames: a flood of offers never delays a phone's keys."""
        self._offer_executor = ThreadPoolExecutor(max_workers=OFFER_THREADS, thread_name_prefix="gateway-offer")
        """Offer bodies are decoded and their SDP screened and parsed here, off the event loop."""
        self._offer_rate = KeyedTokenBuckets(
            config.offer_rate_per_address, config.offer_burst_per_address, MAX_RATE_ADDRESSES
        )
        self._reading: Counter[str] = Counter()
        """Offers whose body is being read, by client address (they hold no session slot yet)."""
        self._offering: Counter[str] = Counter()
        """Offers being served right now, by client address (each holds a session slot)."""
        self._uploads: OrderedDict[str, str] = OrderedDict()
        """Style id by digest of the upload it was made from, most recent last: a known upload is not decoded."""
        self._making: dict[str, asyncio.Task[str]] = {}
        """The new styles being made (waiting for the style thread, on it, or being stored), by digest of upload."""
        self._stored: dict[str, deque[tuple[float, int]]] = {}
        """New styles stored recently (time, bytes) by address or token subject: the style quota."""
        self.connections = ConnectionGuard(config.max_connections_per_address, RETRY_AFTER_S)
        self.candidates = RemoteCandidatePolicy.of(config.ice_hosts, config.ice_remote_networks)
        self._nc: NATS | None = None
        self._styles: StyleStore | None = None
        self.jetstream: JetStreamProbe | None = None
        """Whether the hub's JetStream (the style store) answers, once started (streaming.jetstream_health)."""
        self._probing: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.port = config.port
        self._background: set[asyncio.Future[None]] = set()
        """This gateway's tasks that nothing awaits (session reapers, closes), kept referenced until they end."""
        self._bad_offer_log = LogLimiter()
        """Refused offers are logged rate-limited per client address."""
        self._refusal_log = LogLimiter()
        """Requests admission refused are logged rate-limited per client address."""
        secret = (config.token_secret or secret_from_env()) if config.require_token else None
        if config.require_token and secret is None:
            raise ValueError(f"--require-token needs the token secret in ${TOKEN_SECRET_ENV}")
        if (config.tls_cert is None) != (config.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        self.admission = AdmissionPolicy(config.region, config.cors_origin, secret, config.public_names)

    def app(self) -> web.Application:
        """The aiohttp application (routes: /offer, /metrics, /healthz, /livez, the browser phone)."""
        app = web.Application(
            client_max_size=int(MAX_STYLE_BYTES * BASE64_OVERHEAD) + SIGNALING_SLACK_BYTES,
            middlewares=[
                security_middleware(self.admission, self._refusal_log),
                admission_middleware(self.admission, self._refusal_log),
            ],
        )
        app.router.add_post("/offer", self._offer)
        add_health_routes(
            app,
            ready=self._readiness,
            live=self._liveness,
            exposition=lambda: region_metrics(self.config.region),
            headers={GATEWAY_INSTANCE_HEADER: self.instance},
        )
        app.router.add_get("/", self._index)
        app.router.add_get("/styles", self._styles_list)
        app.router.add_static("/static/", STATIC_DIR)
        return app

    async def start(self) -> None:
        """Connect to NATS and start serving HTTP."""
        self._nc = await connect_nats(
            self.config.nats_url,
            f"gateway-{self.config.region}",
            service="gateway",
            tls_ca=self.config.nats_ca,
            reconnect_wait_s=self.config.nats_reconnect_wait_s,
        )
        js = self._nc.jetstream(domain=self.config.js_domain)
        self._styles = await StyleStore.open(js)
        probe = probe_subject(STYLE_BUCKET)  # a gateway writes styles
        self.jetstream = JetStreamProbe(self._nc, js, probe, "gateway", self.config.region)
        self._probing = asyncio.create_task(self.jetstream.run(), name="jetstream-probe")
        self._runner = GuardedAppRunner(
            self.app(),
            self.connections,
            access_log=None,
            keepalive_timeout=self.config.http_idle_timeout_s,
            lingering_time=LINGER_S,
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, self.config.host, self.config.port, ssl_context=self._ssl_context()).start()
        self.port = int(self._runner.addresses[0][1])  # the real port when config.port is 0
        count_tasks(asyncio.get_running_loop())  # its /metrics says how many tasks the process runs
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
        if self._probing is not None:
            self._probing.cancel()
            await asyncio.gather(self._probing, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._nc is not None and not (self._nc.is_closed or self._nc.is_draining):
            await self._nc.drain()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._style_executor.shutdown(wait=False, cancel_futures=True)
        self._offer_executor.shutdown(wait=False, cancel_futures=True)

    def occupied(self) -> int:
        """Session slots taken: sessions, and offers being served (each reserved a slot)."""
        return len(self.sessions) + sum(self._offering.values())

    def pending(self, address: str) -> int:
        """Offers being read or served and sessions not connected yet, of one client address."""
        unconnected = sum(1 for s in self.sessions.values() if s.address == address and not s.connected.is_set())
        return self._reading[address] + self._offering[address] + unconnected

    async def _offer(self, request: web.Request) -> web.Response:
        address = request.remote or "unknown"
        wait_s = self._offer_rate.take(address, time.monotonic())
        if wait_s > 0:
            REFUSED.labels("rate").inc()
            return _refuse(
                429,
                f"too many offers from this address (at most {self.config.offer_burst_per_address} at once, "
                f"{self.config.offer_rate_per_address:g} a second)",
                retry_after_s=math.ceil(wait_s),
            )
        if self.pending(address) >= self.config.max_pending_per_address:
            return _refuse(
                429, f"too many pending offers from this address (limit {self.config.max_pending_per_address})"
            )
        if self.occupied() >= self.config.max_sessions:
            return _refuse(503, "gateway full")
        with _held(self._reading, address):
            try:
                async with asyncio.timeout(self.config.offer_read_timeout_s):
                    body = await request.read()
            except TimeoutError:
                return _refuse(408, f"offer body not received within {self.config.offer_read_timeout_s:g} s")
        # The slot is reserved after the body is in and before the next await: no offer can pass a full check.
        if self.occupied() >= self.config.max_sessions:
            return _refuse(503, "gateway full")
        claims = request.get(TOKEN_CLAIMS)
        identity = f"token:{claims.sub}" if claims is not None else address
        with _held(self._offering, address):
            return await self._open_session(body, address, identity)

    async def _open_session(self, body: bytes, address: str, identity: str) -> web.Response:
        loop = asyncio.get_running_loop()
        try:
            offer = await loop.run_in_executor(self._offer_executor, parse_offer, body, self.candidates)
        except BadOffer as exc:
            return self._bad_offer(address, str(exc))
        assert self._nc is not None and self._styles is not None
        try:
            style_id = await self._style_of(offer.style, identity)
        except ImageDecodeError as exc:
            return self._bad_offer(address, f"'style' is not a usable image: {exc}")
        except StyleQuotaExceeded as exc:
            return _refuse(429, str(exc))
        except (StyleStoreFull, StylesBusy) as exc:
            return _refuse(503, str(exc))
        except (NatsError, asyncio.TimeoutError, BucketMissingError) as exc:  # a hub server down: no leader yet
            self._bad_offer_log.log(log, logging.WARNING, "style-store", "style store unavailable", {"error": str(exc)})
            return _refuse(503, "the style store does not answer (the hub is electing a leader): retry shortly")
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
            self._background,
            offer.result,
            address=address,
        )
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            with gathering_on(self.config.ice_hosts):
                await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises ValueError and others on SDP it cannot use
            await pc.close()
            return self._bad_offer(address, f"unusable SDP offer: {exc}")
        self.sessions[stream_id] = session
        SESSIONS.labels(self.config.region).set(len(self.sessions))
        session.start_supervision(self.config.connect_timeout_s, self.config.idle_timeout_s)
        reaper = asyncio.create_task(self._reap(session))
        self._background.add(reaper)
        reaper.add_done_callback(self._background.discard)
        log.info("phone offered", extra={"stream_id": stream_id, "style_id": style_id, "address": address})
        answer = Answer(sdp=pc.localDescription.sdp, stream_id=stream_id, style_id=style_id)
        return web.Response(
            body=encode_answer(answer),
            content_type="application/json",
            headers={GATEWAY_INSTANCE_HEADER: self.instance},
        )

    async def _style_of(self, upload: bytes, identity: str) -> str:
        """The id of the stored style of an upload: one seen lately whose style is still stored costs a digest;
        another is normalized on the style thread (at most :data:`MAX_STYLES_WAITING` offers wait for it, else
        :class:`StylesBusy`) and stored (:meth:`_store_style`)."""
        assert self._styles is not None
        digest = await asyncio.to_thread(upload_digest, upload)
        known = self._uploads.get(digest)
        if known is not None and await self._styles.fresh(known):
            self._uploads.move_to_end(digest)
            return known
        making = self._making.get(digest)
        if making is None:  # (offers of one upload at once share its work)
            if len(self._making) >= MAX_STYLES_WAITING:
                raise StylesBusy(f"busy with {len(self._making)} new styles: retry shortly")
            making = asyncio.create_task(self._new_style(upload, digest, identity))
            self._making[digest] = making
            making.add_done_callback(lambda _: self._making.pop(digest, None))
        return await asyncio.shield(making)

    async def _new_style(self, upload: bytes, digest: str, identity: str) -> str:
        """Normalize an upload on the style thread and store it (:meth:`_style_of`)."""
        loop = asyncio.get_running_loop()
        style = await loop.run_in_executor(self._style_executor, normalized_style, upload)
        style_id = await self._store_style(style, identity)
        self._uploads[digest] = style_id
        while len(self._uploads) > MAX_KNOWN_UPLOADS:
            self._uploads.popitem(last=False)
        return style_id

    async def _store_style(self, style: bytes, identity: str) -> str:
        """Store a style (its id); a new one counts against ``identity``'s quota, checked first."""
        assert self._styles is not None
        if await self._styles.fresh(style_id_of(style)):
            return await self._styles.put(style)
        now = time.monotonic()
        recent = self._stored.pop(identity, deque())
        while recent and now - recent[0][0] >= self.config.style_quota_window_s:
            recent.popleft()
        self._stored[identity] = recent  # most recent last: the oldest identities are forgotten first
        while len(self._stored) > MAX_QUOTA_IDENTITIES:
            del self._stored[next(iter(self._stored))]
        used = sum(size for _, size in recent)
        if used + len(style) > self.config.style_quota_bytes:
            raise StyleQuotaExceeded(
                f"style quota used: {used} of {self.config.style_quota_bytes} B of new styles per "
                f"{self.config.style_quota_window_s:g} s"
            )
        recent.append((now, len(style)))
        return await self._styles.put(style)

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

    async def _liveness(self) -> tuple[bool, Mapping[str, object]]:
        """``/livez``: passes while the event loop answers and the NATS connection is up or reconnecting (the
        gateway reconnects forever, streaming.nats_connect); fails once it is closed for good: restart me. The
        answer's :data:`GATEWAY_INSTANCE_HEADER` tells a silent phone whether this is still the gateway it
        connected to."""
        return self._nc is not None and not self._nc.is_closed, {}

    def _bad_offer(self, address: str, error: str) -> web.Response:
        """HTTP 400 with the reason (clipped: it may quote the offer), logged rate-limited per address."""
        error = clip(error)
        self._bad_offer_log.log(log, logging.INFO, address, "offer refused", {"address": address, "error": error})
        return web.json_response({"error": error}, status=400)

    async def _readiness(self) -> tuple[bool, Mapping[str, object]]:
        """``/healthz``: passes when this site can take a phone (NATS connected, a worker answers, a free slot); its
        answer also says whether the hub's JetStream answers (not the status: streaming.jetstream_health)."""
        nc = self._nc
        connected = nc is not None and nc.is_connected
        workers = await discover_workers(nc, self.config.region, HEALTH_DISCOVERY_S) if nc and connected else []
        full = self.occupied() >= self.config.max_sessions
        ok = connected and bool(workers) and not full
        return ok, {
            "region": self.config.region,
            "sessions": len(self.sessions),
            "max_sessions": self.config.max_sessions,
            "offers_in_progress": sum(self._offering.values()),
            "offers_reading": sum(self._reading.values()),
            "unconnected": sum(1 for s in self.sessions.values() if not s.connected.is_set()),
            "full": full,
            "nats_connected": connected,
            "jetstream": self.jetstream is not None and self.jetstream.available,
            "workers": sorted(w.worker_id for w in workers),
        }


class StylesBusy(Exception):
    """Too many new styles wait for the style thread (HTTP 503)."""


class StyleQuotaExceeded(Exception):
    """An address or token subject stored its quota of new styles (HTTP 429)."""


@contextmanager
def _held(counter: Counter[str], address: str) -> Iterator[None]:
    """Count ``address`` in ``counter`` for the duration of the block."""
    counter[address] += 1
    try:
        yield
    finally:
        counter[address] -= 1
        if counter[address] <= 0:
            del counter[address]


def _refuse(status: int, error: str, retry_after_s: int = RETRY_AFTER_S) -> web.Response:
    """An offer turned away before any work, with a hint of when to retry."""
    return web.json_response({"error": error}, status=status, headers={"Retry-After": str(retry_after_s)})


async def run(config: GatewayConfig) -> None:
    """Run a gateway until cancelled (a start that fails, e.g. on a port in use, closes what it had opened)."""
    gateway = Gateway(config)
    try:
        await gateway.start()
        await asyncio.Event().wait()
    finally:
        await gateway.stop()
