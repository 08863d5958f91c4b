"""Offer admission: signed expiring tokens (streaming/tokens.py) and the gateway's policy middleware
(streaming/gateway/admission.py) on a real aiohttp server, with `mvs token` run as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from streaming.gateway.admission import AdmissionPolicy, admission_middleware
from streaming.telemetry import LogLimiter
from streaming.tokens import TOKEN_SECRET_ENV, TokenError, issue, new_secret, verify

SECRET = new_secret()
ALLOWED = "https://app.example"


def test_a_token_admits_until_it_expires_in_its_region_only() -> None:
    token = issue(SECRET, "phone-1", ttl_s=60, region="eu", now=1000)
    assert verify(SECRET, token, "eu", now=1059).sub == "phone-1"
    for bad, region, now, why in [
        (token, "eu", 1060, "expired"),
        (token, "us", 1000, "region"),
        (issue(new_secret(), "phone-1", region="eu", now=1000), "eu", 1000, "signature"),
        (token.replace("v1.", "v2.", 1), "eu", 1000, "malformed"),
        (token[:-2], "eu", 1000, "malformed|signature"),
        ("v1.e30.", "eu", 1000, "signature"),
        ("garbage", "eu", 1000, "malformed"),
    ]:
        with pytest.raises(TokenError, match=why):
            verify(SECRET, bad, region, now=now)
    mac = token.split(".")[2]
    forged = issue(SECRET, "phone-1", ttl_s=10**9, region="eu", now=1000).split(".")[1]
    with pytest.raises(TokenError, match="signature"):  # longer-lived claims under the old signature
        verify(SECRET, f"v1.{forged}.{mac}", "eu", now=1000)
    assert verify(SECRET, issue(SECRET, "any"), "us").aud == "*"
    with pytest.raises(ValueError, match="at least 32"):
        issue("short", "phone-1")


def test_mvs_token_reads_its_secret_from_the_environment_only() -> None:
    cmd = [sys.executable, "-m", "deploy.cli", "token", "--subject", "phone-7", "--region", "eu", "--ttl", "60"]
    env = {k: v for k, v in os.environ.items() if k != TOKEN_SECRET_ENV}
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and TOKEN_SECRET_ENV in refused.stderr
    done = subprocess.run(cmd, env={**env, TOKEN_SECRET_ENV: SECRET}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert verify(SECRET, done.stdout.strip(), "eu").sub == "phone-7" and SECRET not in done.stdout


async def _serve(policy: AdmissionPolicy) -> AsyncIterator[str]:
    async def offer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[admission_middleware(policy, LogLimiter())])
    app.router.add_post("/offer", offer)
    app.router.add_get("/healthz", offer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def open_gateway() -> AsyncIterator[str]:
    """The policy of a plain gateway (mvs demo): no token, no CORS origin."""
    async for url in _serve(AdmissionPolicy("eu")):
        yield url


@pytest.fixture
async def secured_gateway() -> AsyncIterator[str]:
    """--require-token and one allowed browser origin."""
    async for url in _serve(AdmissionPolicy("eu", cors_origins=(ALLOWED,), token_secret=SECRET)):
        yield url


JSON = {"Content-Type": "application/json"}


async def _post(url: str, headers: dict[str, str], data: bytes = b"{}") -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.post(f"{url}/offer", data=data, headers=headers) as response:
        return response.status, dict(response.headers)


async def test_a_plain_gateway_refuses_other_web_pages_only(open_gateway: str) -> None:
    assert (await _post(open_gateway, {}))[0] == 200  # mvs phone, curl: no Origin, no token needed
    # Issue 14: a no-cors text/plain POST from any web page opened a session.
    status, headers = await _post(open_gateway, {"Origin": "https://evil.example", "Content-Type": "text/plain"})
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    async with aiohttp.ClientSession() as http:
        preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        async with http.options(f"{open_gateway}/offer", headers=preflight) as response:
            assert response.status == 403 and "Access-Control-Allow-Origin" not in response.headers
    same_origin = {"Origin": open_gateway}  # a page the gateway serves itself
    assert (await _post(open_gateway, {**same_origin, "Content-Type": "text/plain"}))[0] == 415
    assert (await _post(open_gateway, {**same_origin, **JSON}))[0] == 200


async def test_a_secured_gateway_needs_a_token_json_and_an_allowed_origin(secured_gateway: str) -> None:
    token = issue(SECRET, "phone-1", region="eu")
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await _post(secured_gateway, {**JSON, **bearer}))[0] == 200
    status, headers = await _post(secured_gateway, JSON)
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert (await _post(secured_gateway, {**JSON, "Authorization": f"Bearer {token[:-3]}"}))[0] == 401
    expired = issue(SECRET, "phone-1", ttl_s=-1)
    assert (await _post(secured_gateway, {**JSON, "Authorization": f"Bearer {expired}"}))[0] == 401
    other_region = issue(SECRET, "phone-1", region="us")
    assert (await _post(secured_gateway, {**JSON, "Authorization": f"Bearer {other_region}"}))[0] == 401
    assert (await _post(secured_gateway, {**bearer, "Content-Type": "text/plain"}))[0] == 415
    # The allowed browser origin: preflight answered, the response readable by its page.
    async with aiohttp.ClientSession() as http:
        preflight = {"Origin": ALLOWED, "Access-Control-Request-Method": "POST"}
        async with http.options(f"{secured_gateway}/offer", headers=preflight) as response:
            assert response.status == 204 and response.headers["Access-Control-Allow-Origin"] == ALLOWED
            assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    status, headers = await _post(secured_gateway, {**JSON, **bearer, "Origin": ALLOWED})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ALLOWED
    assert (await _post(secured_gateway, {**JSON, **bearer, "Origin": "https://evil.example"}))[0] == 403
    async with aiohttp.ClientSession() as http, http.get(f"{secured_gateway}/healthz") as response:
        assert response.status == 200  # probes stay open
