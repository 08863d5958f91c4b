"""The browser phone in real browsers, each test in Chromium (the system package, driven by Playwright; fake camera:
a y4m pan over a bundled photo) and in Firefox ESR (over WebDriver BiDi, tests/firefox_bidi.py; the app's test
pattern, a pan over a bundled photo, since Firefox's fake camera is one flat colour): the app served by the
gateway streams to a real gateway and worker, which must tell every frame's id from the RTP timestamps read
through Encoded Transform, and renders every frame in WebGL from the key's colour maps; the WebGL render equals
mobile_sim.affine's, pixel for pixel; and on a phone-sized touch screen without a camera the page says so and
streams its test pattern.

Skips without a browser (with the install command), fails instead when ``CI=true``."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_worker.model.color_transfer import LinearColorTransfer
from edge_worker.service import StylizerWorker
from mobile_sim.affine import AffineCoefficients, AffineRenderer
from mobile_sim.sources import SyntheticCamera, sample_photo
from streaming.coefficients import decode_coefficients, encode_coefficients
from streaming.gateway.server import STYLES_DIR, Gateway
from tests.browser_support import (
    ENGINES,
    Browser,
    Page,
    PlaywrightPage,
    chromium_args,
    click,
    mean_abs_diff,
    open_browser,
    require_chromium,
    rgba_to_bgr,
    set_value,
    settle,
    wait_for,
    write_y4m,
)

pytestmark = pytest.mark.slow  # real browsers


SIZE = (640, 360)
FPS = 30
CAMERA_FRAMES = 150
STREAM_S = 6.0
KEY_INTERVAL = 10
STYLE = "rocket"
MIN_KEYS_RETURNED = 0.95
GL_MAX_DIFF = 1  # grey levels: float rounding at the 8-bit output
STYLIZED_FROM_SOURCE = 20.0  # mean grey levels a stylized frame differs from its source at least
CLOSE_TO_WORKER = 4.0  # mean grey levels from the worker's own stylization of the frame at most
SCREENSHOT_ENV = "MVS_BROWSER_SCREENSHOT"
"""Where to copy the mid-stream screenshot (docs/browser.png was made with it)."""


@pytest.fixture(scope="module")
def camera_y4m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Chromium's fake camera: a pan over a bundled photo."""
    camera = SyntheticCamera(sample_photo("astronaut"), size=SIZE, frames=CAMERA_FRAMES, fps=FPS)
    y4m = tmp_path_factory.mktemp("camera") / "camera.y4m"
    write_y4m(y4m, (camera.render(i) for i in range(CAMERA_FRAMES)), FPS)
    return y4m


@pytest.fixture(params=ENGINES)
async def browser(request: pytest.FixtureRequest, camera_y4m: Path) -> AsyncIterator[Browser]:
    firefox = request.getfixturevalue("firefox") if request.param == "firefox" else None
    async with open_browser(request.param, camera_y4m, firefox) as opened:
        yield opened


async def _open(browser: Browser, url: str) -> Page:
    page = await browser.new_page(1300, 520)
    await page.goto(url)
    await wait_for(page, "window.mvs !== undefined && document.querySelector('#style').options.length > 0")
    return page


async def test_browser_phone_streams_and_renders_stylized_frames(
    browser: Browser, gateway: Gateway, worker: StylizerWorker, tmp_path: Path
) -> None:
    page = await _open(browser, f"{gateway.url}/")
    if browser.name == "firefox":  # its fake camera is one flat colour changing hue: the test source has content
        await set_value(page, "#camera", "test")
    await set_value(page, "#style", STYLE)
    await set_value(page, "#key-interval", str(KEY_INTERVAL))
    await click(page, "#start")
    await wait_for(page, "window.mvs.stats().keysOk > 0")
    await asyncio.sleep(STREAM_S / 2)
    screenshot = tmp_path / "browser.png"
    await page.screenshot(screenshot)
    if os.environ.get(SCREENSHOT_ENV) and browser.name == "chromium":
        shutil.copy(screenshot, os.environ[SCREENSHOT_ENV])
    await asyncio.sleep(STREAM_S / 2)
    snap = await page.evaluate("() => window.mvs.snapshot()")
    await set_value(page, "#key-interval", "1000000")  # no new keys: let those in flight settle
    await settle(page)
    stats = await page.evaluate("() => window.mvs.stats()")
    message = await page.evaluate("() => document.querySelector('#message').textContent")
    await page.close()

    assert not page.errors and not stats["errors"], (page.errors, stats["errors"], message)
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


async def test_webgl_render_equals_the_python_affine_render(browser: Browser, gateway: Gateway) -> None:
    """A smooth 40 x 24 grid (bilinear resampling exercised, unlike colour transfer's 1 x 1) on a noisy frame."""
    rng = np.random.default_rng(3)
    grid = cv2.resize(rng.normal(0.0, 0.4, (6, 10, 12)).astype(np.float32), (80, 48), interpolation=cv2.INTER_CUBIC)
    grid[..., [0, 4, 8]] += 1.0  # near identity, so the clip does not hide mistakes
    blob = encode_coefficients(grid)
    width, height = 333, 187  # odd sides: no accidental alignment with the grid
    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    rgba = cv2.cvtColor(frame, cv2.COLOR_BGR2RGBA)
    page = await _open(browser, f"{gateway.url}/")
    out_b64 = await page.evaluate(
        JS_RENDER, [base64.b64encode(blob).decode(), base64.b64encode(rgba.tobytes()).decode(), width, height]
    )
    await page.close()
    shown = rgba_to_bgr(out_b64, width, height)
    expected = AffineRenderer().apply(frame, AffineCoefficients.from_model(decode_coefficients(blob)))
    assert not page.errors
    worst = int(np.abs(shown.astype(int) - expected.astype(int)).max())
    assert worst <= GL_MAX_DIFF, f"WebGL differs from mobile_sim.affine by {worst} grey levels"
    assert mean_abs_diff(shown, frame) > STYLIZED_FROM_SOURCE / 2


PHONE = {"width": 360, "height": 800}
PHONE_STREAM_S = 2.0
PHONE_SCREENSHOT_ENV = "MVS_BROWSER_PHONE_SCREENSHOT"
"""Where to copy the phone-sized screenshot (docs/browser-phone.png was made with it)."""
MIN_TAP_PX = 36  # CSS pixels: a control shorter than this is hard to hit with a finger
GEOMETRY_JS = """() => {
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; };
  const controls = [...document.querySelectorAll('header button, header select, header input')]
    .filter((el) => el.offsetParent !== null);
  return { viewport: [innerWidth, innerHeight], scrollWidth: document.documentElement.scrollWidth,
           output: box(document.querySelector('#output')), source: box(document.querySelector('#source')),
           controls: Object.fromEntries(controls.map((el) => [el.id, box(el)])) };
}"""


async def test_phone_screen_without_a_camera_says_so_and_streams_the_test_pattern(
    gateway: Gateway, worker: StylizerWorker, tmp_path: Path
) -> None:
    """360 x 800 portrait with touch, no camera at all: a clear message and a HUD of "-" instead of NaN; the
    test pattern picked instead streams; every control is on the screen and big enough to tap, the stylized
    render spans the width and the camera preview is an inset over it (element geometry, not a screenshot diff)."""
    executable = require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=executable, args=chromium_args(camera=False))
        context = await chromium.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
        raw = await context.new_page()
        page = PlaywrightPage(raw)
        await page.goto(f"{gateway.url}/")
        await wait_for(page, "document.querySelector('#style').options.length > 0")
        await raw.tap("#start")
        await wait_for(page, "document.querySelector('#message').className === 'error'")
        message = await raw.text_content("#message")
        await wait_for(page, "document.querySelector('#hud').textContent !== ''")
        hud = await raw.text_content("#hud")
        await raw.select_option("#camera", "test")
        await raw.tap("#start")
        await wait_for(page, "window.mvs.stats().keysOk > 0")
        await asyncio.sleep(PHONE_STREAM_S)
        stats = await page.evaluate("() => window.mvs.stats()")
        geometry = await page.evaluate(GEOMETRY_JS)
        await page.screenshot(tmp_path / "phone.png")
        if os.environ.get(PHONE_SCREENSHOT_ENV):
            shutil.copy(tmp_path / "phone.png", os.environ[PHONE_SCREENSHOT_ENV])
        icon = await raw.evaluate("async () => (await fetch(document.querySelector('link[rel=icon]').href)).ok")
        await chromium.close()

    assert message is not None and message.startswith("No camera found") and "test pattern" in message, message
    assert hud is not None and "NaN" not in hud and "p50 -" in hud and "- fps" in hud, hud
    assert not page.errors and not stats["errors"] and stats["keysOk"] > 0 and stats["frames"] > 0, (page.errors, stats)
    assert icon
    width, height = geometry["viewport"]
    assert (width, height) == (PHONE["width"], PHONE["height"])
    assert geometry["scrollWidth"] <= width, "the page scrolls sideways"
    left, top, shown_width, _ = geometry["output"]
    assert left == 0 and shown_width == width, geometry["output"]
    inset = geometry["source"]
    assert inset[0] >= left and inset[1] >= top and inset[0] + inset[2] <= left + shown_width, "the camera inset"
    assert inset[1] + inset[3] <= height, "the camera preview is on the screen (scrolled away, it would be paused)"
    for name, (x, _, w, h) in geometry["controls"].items():
        assert 0 <= x and x + w <= width, f"#{name} is off the screen: {geometry['controls'][name]}"
        assert h >= MIN_TAP_PX, f"#{name} is {h} px high"
