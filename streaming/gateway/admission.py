"""Who may open a session: the gateway's offer admission policy, as one aiohttp middleware.

- **Origin (always).** A browser names the page that sent a request in ``Origin``. A request from a page whose origin
  is neither the gateway's own nor in the CORS allow-list (``--cors-origin``, none by default) is refused (403),
  and a preflight (``OPTIONS``) gets the CORS headers only for an allowed origin. A browser request must also be
  ``application/json``, which a page cannot send without a preflight: the ``no-cors`` ``text/plain`` POST from any
  web page that used to open a session is refused (415). Clients that are not browsers (``mvs phone``) send no
  ``Origin``.
- **Token (``--require-token``).** ``POST /offer`` must carry ``Authorization: Bearer <token>``, a token the operator
  issued with ``mvs token`` (:mod:`streaming.tokens`) for this region or any, unexpired (401 otherwise), and be
  ``application/json`` (415). The signing secret comes from the environment (``MVS_TOKEN_SECRET``).

Refusals are counted (``mvs_gateway_offers_refused_total{reason}``) and logged without the token.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Counter

from streaming.tokens import TokenError, verify

log = logging.getLogger(__name__)

JSON = "application/json"
GUARDED = {"/offer"}
"""Paths the policy applies to (signaling); /healthz and /metrics stay open to probes."""
PREFLIGHT_MAX_AGE_S = 600
ALLOWED_HEADERS = "Authorization, Content-Type"

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

    def origin_allowed(self, request: web.Request) -> bool:
        """Whether the request's ``Origin`` (present) is the gateway's own or in the allow-list."""
        origin = request.headers.get("Origin", "")
        return origin in self.cors_origins or origin == f"{request.scheme}://{request.host}"


def _refuse(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    REFUSED.labels(reason).inc()
    log.info("offer refused", extra={"reason": reason})
    return web.json_response({"error": message}, status=status, headers=headers)


def _cors_headers(request: web.Request) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": request.headers["Origin"], "Vary": "Origin"}


def admission_middleware(policy: AdmissionPolicy) -> Middleware:
    """The middleware enforcing ``policy`` on the signaling paths."""

    @web.middleware
    async def admit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in GUARDED:
            return await handler(request)
        browser = "Origin" in request.headers
        if browser and not policy.origin_allowed(request):
            return _refuse(403, "origin", "this origin may not use the gateway")
        if request.method == "OPTIONS":
            if not browser:
                return _refuse(403, "origin", "a preflight needs an Origin")
            headers = {
                **_cors_headers(request),
                "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
            }
            return web.Response(status=204, headers=headers)
        if (browser or policy.token_secret is not None) and request.content_type != JSON:
            return _refuse(415, "content_type", f"Content-Type must be {JSON}")
        if policy.token_secret is not None:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                return _refuse(401, "token", "a bearer token is required", {"WWW-Authenticate": "Bearer"})
            try:
                verify(policy.token_secret, token.strip(), policy.region)
            except TokenError as exc:
                return _refuse(401, "token", str(exc), {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        response = await handler(request)
        if browser:
            response.headers.update(_cors_headers(request))
        return response

    return admit
