"""The browser phone in real headless Chromium (the system package, driven by Playwright): the app served by
the gateway streams a fake camera (a y4m pan over a bundled photo) to a real gateway and worker and renders
every frame in WebGL from the key's colour maps; and the WebGL render equals mobile_sim.affine's, pixel for pixel.

Skips without Chromium (with the install command), fails instead when ``CI=true``."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_worker.model.color_transfer import LinearColorTransfer
from edge_worker.service import StylizerWorker
from mobile_sim.affine import AffineCoefficients, AffineRenderer
from mobile_sim.sources import SyntheticCamera, sample_photo
from streaming.coefficients import decode_coefficients, encode_coefficients
from streaming.gateway.server import STYLES_DIR, Gateway
from tests.browser_support import chromium_args, mean_abs_diff, require_chromium, rgba_to_bgr, write_y4m

SIZE = (640, 360)
FPS = 30
CAMERA_FRAMES = 150
STREAM_S = 10.0
KEY_INTERVAL = 10
STYLE = "rocket"
MIN_KEYS_RETURNED = 0.95
SETTLE_S = 3.0
POLL_S = 0.1
GL_MAX_DIFF = 1  # grey levels: float rounding at the 8-bit output
STYLIZED_FROM_SOURCE = 20.0  # mean grey levels a stylized frame differs from its source at least
CLOSE_TO_WORKER = 4.0  # mean grey levels from the worker's own stylization of the frame at most
SCREENSHOT_ENV = "MVS_BROWSER_SCREENSHOT"
"""Where to copy the mid-stream screenshot (docs/browser.png was made with it)."""


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    executable = require_chromium()
    from playwright.async_api import async_playwright

    camera = SyntheticCamera(sample_photo("astronaut"), size=SIZE, frames=CAMERA_FRAMES, fps=FPS)
    y4m = tmp_path / "camera.y4m"
    write_y4m(y4m, (camera.render(i) for i in range(CAMERA_FRAMES)), FPS)
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=executable, args=chromium_args(y4m))
        yield chromium
        await chromium.close()


async def _until(page: Any, expression: str, timeout_s: float = 30.0) -> None:
    """Wait until ``expression`` is true in the page. Playwright's wait_for_function evaluates its predicate with
    eval() inside the page, which the app's Content-Security-Policy forbids; page.evaluate goes through DevTools."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await page.evaluate(expression):
        assert asyncio.get_running_loop().time() < deadline, f"still false after {timeout_s:g} s: {expression}"
        await asyncio.sleep(POLL_S)


async def _open(browser: Any, url: str) -> tuple[Any, list[str]]:
    """The app in a new page, and the page's errors as they come: exceptions and Content-Security-Policy
    violations (the gateway serves the app under a strict policy: the app must run within it)."""
    page = await browser.new_page(viewport={"width": 1300, "height": 520})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    await page.goto(url)
    await _until(page, "window.mvs !== undefined && document.querySelector('#style').options.length > 0")
    return page, errors


async def test_browser_phone_streams_and_renders_stylized_frames(
    browser: Any, gateway: Gateway, worker: StylizerWorker, tmp_path: Path
) -> None:
    page, errors = await _open(browser, f"{gateway.url}/")
    await page.select_option("#style", label=STYLE)
    await page.fill("#key-interval", str(KEY_INTERVAL))
    await page.click("#start")
    await _until(page, "window.mvs.stats().keysOk > 0")
    await asyncio.sleep(STREAM_S / 2)
    screenshot = tmp_path / "browser.png"
    await page.screenshot(path=str(screenshot))
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copy(screenshot, os.environ[SCREENSHOT_ENV])
    await asyncio.sleep(STREAM_S / 2)
    snap = await page.evaluate("window.mvs.snapshot()")
    await page.fill("#key-interval", "1000000")  # no new keys: let those in flight settle
    await asyncio.sleep(SETTLE_S)
    stats = await page.evaluate("window.mvs.stats()")
    message = await page.text_content("#message")
    await page.close()

    assert not errors and not stats["errors"], (errors, stats["errors"], message)
    assert stats["keysRequested"] >= STREAM_S * FPS / KEY_INTERVAL / 2, stats
    assert stats["keysOk"] >= MIN_KEYS_RETURNED * stats["keysRequested"], stats
    assert stats["rtts"] and all(0 < rtt < 2000 for rtt in stats["rtts"]), stats["rtts"]
    assert stats["frames"] >= STREAM_S * FPS / 2, stats  # every camera frame rendered, give or take a slow box

    width, height = snap["width"], snap["height"]
    source = rgba_to_bgr(snap["source"], width, height)
    shown = rgba_to_bgr(snap["output"], width, height)
    assert snap["coefficients"], "no colour maps applied"
    maps = AffineCoefficients.from_model(decode_coefficients(base64.b64decode(snap["coefficients"])))
    expected = AffineRenderer().apply(source, maps)
    worst = int(np.abs(shown.astype(int) - expected.astype(int)).max())
    assert worst <= GL_MAX_DIFF, f"WebGL differs from mobile_sim.affine by {worst} grey levels"
    assert mean_abs_diff(shown, source) > STYLIZED_FROM_SOURCE
    stylizer = LinearColorTransfer()
    style = cv2.cvtColor(cv2.imread(str(STYLES_DIR / f"{STYLE}.jpg")), cv2.COLOR_BGR2RGB)
    own = stylizer.stylize(cv2.cvtColor(source, cv2.COLOR_BGR2RGB), stylizer.prepare_style(style), (width, height))
    assert mean_abs_diff(shown, cv2.cvtColor(own, cv2.COLOR_RGB2BGR)) < CLOSE_TO_WORKER


JS_RENDER = """async ([blob, rgba, width, height]) => {
  const { AffineGL, decodeCoefficients } = await import('/static/affine-gl.js');
  const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const gl = new AffineGL(document.createElement('canvas'));
  gl.setCoefficients(await decodeCoefficients(bytes(blob)));
  gl.render(new ImageData(new Uint8ClampedArray(bytes(rgba)), width, height), width, height);
  const out = gl.pixels();
  let s = ''; for (let i = 0; i < out.length; i += 8192) s += String.fromCharCode(...out.subarray(i, i + 8192));
  return btoa(s);
}"""


async def test_webgl_render_equals_the_python_affine_render(browser: Any, gateway: Gateway) -> None:
    """A smooth 40 x 24 grid (bilinear resampling exercised, unlike colour transfer's 1 x 1) on a noisy frame."""
    rng = np.random.default_rng(3)
    grid = cv2.resize(rng.normal(0.0, 0.4, (6, 10, 12)).astype(np.float32), (80, 48), interpolation=cv2.INTER_CUBIC)
    grid[..., [0, 4, 8]] += 1.0  # near identity, so the clip does not hide mistakes
    blob = encode_coefficients(grid)
    width, height = 333, 187  # odd sides: no accidental alignment with the grid
    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    rgba = cv2.cvtColor(frame, cv2.COLOR_BGR2RGBA)
    page, errors = await _open(browser, f"{gateway.url}/")
    out_b64 = await page.evaluate(
        JS_RENDER, [base64.b64encode(blob).decode(), base64.b64encode(rgba.tobytes()).decode(), width, height]
    )
    await page.close()
    shown = rgba_to_bgr(out_b64, width, height)
    expected = AffineRenderer().apply(frame, AffineCoefficients.from_model(decode_coefficients(blob)))
    assert not errors
    worst = int(np.abs(shown.astype(int) - expected.astype(int)).max())
    assert worst <= GL_MAX_DIFF, f"WebGL differs from mobile_sim.affine by {worst} grey levels"
    assert mean_abs_diff(shown, frame) > STYLIZED_FROM_SOURCE / 2
