"""Who may open a session: the gateway's offer admission policy, as one aiohttp middleware.

- **Origin (always).** A browser names the page that sent a request in ``Origin``. A request from a page whose origin
  is neither the gateway's own nor in the CORS allow-list (``--cors-origin``, none by default) is refused (403),
  and a preflight (``OPTIONS``) gets the CORS headers only for an allowed origin. A browser request must also be
  ``application/json``, which a page cannot send without a preflight: the ``no-cors`` ``text/plain`` POST from any
  web page that used to open a session is refused (415). Clients that are not browsers (``mvs phone``) send no
  ``Origin``.
- **Host (always).** A browser tricked by DNS rebinding sends the gateway requests whose ``Host`` is the attacker's
  name (and whose ``Origin`` matches it): a request naming a host other than an IP address, ``localhost`` or one of
  ``--public-name`` is refused (421), on every path.
- **Token (``--require-token``).** ``POST /offer`` must carry ``Authorization: Bearer <token>``, a token the operator
  issued with ``mvs token`` (:mod:`streaming.tokens`) for this region or any, unexpired (401 otherwise), and be
  ``application/json`` (415). The signing secret comes from the environment (``MVS_TOKEN_SECRET``).

Refusals are counted (``mvs_gateway_offers_refused_total{reason}``) and logged without the token, rate-limited per
client address. Every answer carries :data:`SECURITY_HEADERS` (:func:`security_middleware`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Counter

from streaming.telemetry import LogLimiter
from streaming.tokens import Claims, TokenError, verify

log = logging.getLogger(__name__)

JSON = "application/json"
GUARDED = {"/offer"}
"""Paths the policy applies to (signaling); /healthz and /metrics stay open to probes."""
PREFLIGHT_MAX_AGE_S = 600
ALLOWED_HEADERS = "Authorization, Content-Type"

LOCAL_NAMES = ("localhost",)
"""Host names always accepted besides IP addresses (a browser resolves ``localhost`` itself; it cannot be rebound)."""
TOKEN_CLAIMS = web.RequestKey("token_claims", Claims)
"""Request key of the verified token's :class:`~streaming.tokens.Claims` (with ``--require-token``)."""
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        "connect-src 'self'; worker-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
"""Headers of every answer: the browser phone runs only this origin's scripts, is never framed, and no file is
sniffed into another type."""

REFUSED = Counter("mvs_gateway_offers_refused_total", "Signaling requests refused by admission", ["reason"])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class AdmissionPolicy:
    """The gateway's admission settings."""

    region: str
    cors_origins: tuple[str, ...] = ()
    """Browser origins (``https://app.example``) allowed to call the gateway from their pages; none by default."""
    token_secret: str | None = None
    """With a secret, ``POST /offer`` needs a valid bearer token signed with it."""
    public_names: tuple[str, ...] = ()
    """Host names requests may name besides IP addresses and :data:`LOCAL_NAMES`."""

    def host_allowed(self, request: web.Request) -> bool:
        """Whether the request's ``Host`` (without its port) is an IP address, a local name or a public name."""
        host = (request.url.host or "").lower().rstrip(".")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return host in LOCAL_NAMES or host in (name.lower() for name in self.public_names)
        return True

    def origin_allowed(self, request: web.Request) -> bool:
        """Whether the request's ``Origin`` (present) is the gateway's own (its ``Host`` passed
        :meth:`host_allowed`) or in the allow-list."""
        origin = request.headers.get("Origin", "")
        return origin in self.cors_origins or origin == f"{request.scheme}://{request.host}"


def _refuse(
    refusals: LogLimiter,
    request: web.Request,
    status: int,
    reason: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    REFUSED.labels(reason).inc()
    source = request.remote or "unknown"
    refusals.log(log, logging.INFO, source, "request refused", {"reason": reason, "address": source})
    return web.json_response({"error": message}, status=status, headers=headers)


def _cors_headers(request: web.Request) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": request.headers["Origin"], "Vary": "Origin"}


def security_middleware(policy: AdmissionPolicy, refusals: LogLimiter) -> Middleware:
    """The middleware refusing unknown ``Host`` names and adding :data:`SECURITY_HEADERS` to every answer;
    refusals are logged through ``refusals`` (one per gateway, rate-limited per client address)."""

    @web.middleware
    async def secure(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not policy.host_allowed(request):
            response: web.StreamResponse = _refuse(refusals, request, 421, "host", "unknown host name for this gateway")
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # 404, 405, 413 ... are answers too
                exc.headers.update(SECURITY_HEADERS)
                raise
        response.headers.update(SECURITY_HEADERS)
        return response

    return secure


def admission_middleware(policy: AdmissionPolicy, refusals: LogLimiter) -> Middleware:
    """The middleware enforcing ``policy`` on the signaling paths; refusals are logged through ``refusals``."""

    @web.middleware
    async def admit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in GUARDED:
            return await handler(request)
        browser = "Origin" in request.headers
        if browser and not policy.origin_allowed(request):
            return _refuse(refusals, request, 403, "origin", "this origin may not use the gateway")
        if request.method == "OPTIONS":
            if not browser:
                return _refuse(refusals, request, 403, "origin", "a preflight needs an Origin")
            headers = {
                **_cors_headers(request),
                "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
            }
            return web.Response(status=204, headers=headers)
        if (browser or policy.token_secret is not None) and request.content_type != JSON:
            return _refuse(refusals, request, 415, "content_type", f"Content-Type must be {JSON}")
        if policy.token_secret is not None:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                return _refuse(
                    refusals, request, 401, "token", "a bearer token is required", {"WWW-Authenticate": "Bearer"}
                )
            try:
                claims: Claims = verify(policy.token_secret, token.strip(), policy.region)
            except TokenError as exc:
                return _refuse(
                    refusals, request, 401, "token", str(exc), {"WWW-Authenticate": 'Bearer error="invalid_token"'}
                )
            request[TOKEN_CLAIMS] = claims
        response = await handler(request)
        if browser:
            response.headers.update(_cors_headers(request))
        return response

    return admit
