"""Offer admission tokens: what a phone shows the gateway (``Authorization: Bearer <token>``) to open a session.

A token is ``v1.<claims>.<mac>``: the claims are JSON (``sub`` who it was issued to, ``iat`` and ``exp`` in Unix
seconds, ``aud`` the region it is good for or ``*``), both parts URL-safe base64 without padding, the MAC an
HMAC-SHA256 over ``v1.<claims>`` with the operator's secret. The secret lives in the environment
(:data:`TOKEN_SECRET_ENV`), never in argv or a log; the phone's token likewise (:data:`TOKEN_ENV`).

``mvs token`` (``python -m streaming.tokens``) prints a token signed with the secret in the environment.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

TOKEN_SECRET_ENV = "MVS_TOKEN_SECRET"
"""Environment variable with the secret that signs and checks admission tokens (gateway, ``mvs token``)."""
TOKEN_ENV = "MVS_GATEWAY_TOKEN"
"""Environment variable with the token a phone presents (``mvs phone``)."""
VERSION = "v1"
MIN_SECRET_CHARS = 32
"""A shorter secret is refused: HMAC-SHA256 is only as strong as its key."""
DEFAULT_TTL_S = 24 * 3600
ANY_REGION = "*"
CLOCK_SKEW_S = 60
"""A token issued up to this far in the future (the issuer's clock ahead) is still accepted."""


class TokenError(ValueError):
    """A token that does not admit: malformed, forged, expired, or for another region."""


@dataclass(frozen=True)
class Claims:
    """What a token says."""

    sub: str
    exp: int
    iat: int
    aud: str = ANY_REGION


def new_secret() -> str:
    """A fresh random signing secret (64 hex characters)."""
    return secrets.token_hex(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, signed: str) -> bytes:
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(f"the token secret must be at least {MIN_SECRET_CHARS} characters")
    return hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()


def issue(
    secret: str, subject: str, ttl_s: float = DEFAULT_TTL_S, region: str = ANY_REGION, now: float | None = None
) -> str:
    """A token for ``subject``, good for ``region`` during ``ttl_s`` seconds."""
    issued = int(time.time() if now is None else now)
    claims = {"sub": subject, "iat": issued, "exp": issued + int(ttl_s), "aud": region}
    signed = f"{VERSION}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
    return f"{signed}.{_b64(_mac(secret, signed))}"


def verify(secret: str, token: str, region: str, now: float | None = None) -> Claims:
    """The claims of ``token`` if it is well formed, signed with ``secret``, unexpired and good for ``region``;
    :class:`TokenError` saying which check failed otherwise (nothing of the token in the message)."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise TokenError("malformed token")
    try:
        mac = _unb64(parts[2])
    except (binascii.Error, ValueError) as exc:
        raise TokenError("malformed token") from exc
    if not hmac.compare_digest(mac, _mac(secret, f"{parts[0]}.{parts[1]}")):
        raise TokenError("bad token signature")
    try:
        raw = json.loads(_unb64(parts[1]))
        claims = Claims(sub=str(raw["sub"]), exp=int(raw["exp"]), iat=int(raw["iat"]), aud=str(raw["aud"]))
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise TokenError("malformed token claims") from exc
    clock = time.time() if now is None else now
    if clock >= claims.exp:
        raise TokenError("token expired")
    if claims.iat > clock + CLOCK_SKEW_S:
        raise TokenError("token issued in the future")
    if claims.aud not in (ANY_REGION, region):
        raise TokenError(f"token is for region {claims.aud[:32]!r}, not {region!r}")
    return claims


def secret_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The signing secret from :data:`TOKEN_SECRET_ENV`, None when unset or empty."""
    return (os.environ if env is None else env).get(TOKEN_SECRET_ENV) or None


def build_parser() -> argparse.ArgumentParser:
    """CLI of ``mvs token``."""
    p = argparse.ArgumentParser(
        prog="mvs token",
        description=f"Print an offer admission token signed with the secret in ${TOKEN_SECRET_ENV} (a phone sends "
        f"it as 'Authorization: Bearer ...'; mvs phone reads it from ${TOKEN_ENV}).",
    )
    p.add_argument("--subject", default="phone", help="who the token is for (default: %(default)s)")
    p.add_argument("--ttl", type=float, default=DEFAULT_TTL_S, help="seconds it is valid (default: %(default)s)")
    p.add_argument("--region", default=ANY_REGION, help="the only region it admits to (default: any)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = build_parser().parse_args(argv)
    secret = secret_from_env()
    if secret is None:
        raise SystemExit(f"mvs token: set ${TOKEN_SECRET_ENV} (the gateways' secret; never pass it as an argument)")
    try:
        print(issue(secret, args.subject, args.ttl, args.region))
    except ValueError as exc:
        raise SystemExit(f"mvs token: {exc}") from exc


if __name__ == "__main__":
    main()
