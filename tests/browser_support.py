"""Real browsers for the browser-phone tests: the system Chromium driven by Playwright (a fake camera from a y4m
file written here, the trivial YUV4MPEG2 format) and Debian's Firefox ESR over WebDriver BiDi
(tests/firefox_bidi.py, its own fake camera); one small page interface over both; pixel helpers."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import pytest

from tests.firefox_bidi import Firefox, firefox_path, is_csp_violation, write_profile, xvfb

INSTALL_HINT = (
    "apt-get install -y chromium && pip install playwright (no 'playwright install': the system Chromium is used)"
)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FIREFOX_HINT = "apt-get install -y firefox-esr xvfb"
CERTUTIL_HINT = "apt-get install -y libnss3-tools"
CA_NICKNAME = "MVStylizer local CA"
ENGINES = ("chromium", "firefox")
SETTLE_S = 5.0  # at most, for the keys in flight to come back once no new ones are asked for
SETTLED = "(s => s.keysOk + s.keysFailed >= s.keysRequested)(window.mvs.stats())"


def chromium_path() -> str | None:
    """The system Chromium (MVS_CHROMIUM overrides), or None."""
    override = os.environ.get("MVS_CHROMIUM")
    if override:
        return override
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def _missing(message: str) -> None:
    """Skip, except in CI (``CI=true``), where a missing browser fails the test."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI must run this test: .ci/run installs it)")
    pytest.skip(message)


def require_chromium() -> str:
    """Chromium's path; skips the test where it is missing, except in CI (``CI=true``), where it fails."""
    path = chromium_path()
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        _missing(f"Chromium and Playwright for Python are needed: {INSTALL_HINT}")
        raise AssertionError("unreachable")
    return path


def require_firefox() -> str:
    """Firefox's path (and Xvfb's presence); skips where missing, except in CI, where it fails."""
    path = firefox_path()
    if path is None or shutil.which("Xvfb") is None:
        _missing(f"Firefox and Xvfb are needed: {FIREFOX_HINT}")
        raise AssertionError("unreachable")
    return path


def chromium_args(y4m: Path | None = None, camera: bool = True) -> list[str]:
    """Flags for a headless Chromium on a loopback-only host, with a fake camera playing ``y4m`` (none at all
    without ``camera``: then getUserMedia finds no device, as on a desktop without one)."""
    args = [
        "--allow-loopback-in-peer-connection",  # else it offers no candidate a loopback-only gateway can reach
        "--use-fake-ui-for-media-stream",
        "--use-angle=swiftshader",  # WebGL2 without a GPU
        "--enable-unsafe-swiftshader",
        "--autoplay-policy=no-user-gesture-required",
    ]
    if camera:
        args.append("--use-fake-device-for-media-stream")
    if camera and y4m is not None:
        args.append(f"--use-file-for-fake-video-capture={y4m}")
    return args


def write_y4m(path: Path, frames: Iterator[np.ndarray], fps: int) -> int:
    """Write BGR uint8 frames (even sides) as a 4:2:0 YUV4MPEG2 file; returns the frame count."""
    count = 0
    with path.open("wb") as out:
        for frame in frames:
            height, width = frame.shape[:2]
            if count == 0:
                out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
            count += 1
    return count


def rgba_to_bgr(b64: str, width: int, height: int) -> np.ndarray:
    """RGBA rows (base64, top row first) as a BGR uint8 image."""
    rgba = np.frombuffer(base64.b64decode(b64), np.uint8).reshape(height, width, 4)
    return cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference in grey levels."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


class Page(Protocol):
    """What the tests do with a tab, in either engine."""

    errors: list[str]

    async def goto(self, url: str) -> None: ...
    async def evaluate(self, function: str, arg: Any = None) -> Any: ...
    async def screenshot(self, path: Path) -> None: ...
    async def close(self) -> None: ...


class PlaywrightPage:
    """A Playwright page behind :class:`Page`."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", lambda msg: self.errors.append(msg.text) if is_csp_violation(msg.text) else None)

    async def goto(self, url: str) -> None:
        await self.page.goto(url)

    async def evaluate(self, function: str, arg: Any = None) -> Any:
        return await self.page.evaluate(function, arg)

    async def screenshot(self, path: Path) -> None:
        await self.page.screenshot(path=str(path))

    async def close(self) -> None:
        await self.page.close()


class Browser(Protocol):
    """Opens tabs of one engine."""

    name: str

    async def new_page(self, width: int, height: int) -> Page: ...


class ChromiumBrowser:
    """A Playwright Chromium behind :class:`Browser`."""

    name = "chromium"

    def __init__(self, chromium: Any) -> None:
        self.chromium = chromium

    async def new_page(self, width: int, height: int) -> Page:
        return PlaywrightPage(await self.chromium.new_page(viewport={"width": width, "height": height}))


class FirefoxBrowser:
    """A BiDi session of a running Firefox behind :class:`Browser`."""

    name = "firefox"

    def __init__(self, session: Any) -> None:
        self.session = session

    async def new_page(self, width: int, height: int) -> Page:
        page: Page = await self.session.new_page(width, height)
        return page


def trust_ca(nssdb: Path, ca: Path) -> None:
    """Install ``ca`` as a trusted root in the NSS database in ``nssdb`` (made if missing), as a person installs a
    CA once: Chromium reads ``$HOME/.pki/nssdb``, Firefox its profile's."""
    certutil = shutil.which("certutil")
    if certutil is None:
        _missing(f"certutil is needed to trust a CA: {CERTUTIL_HINT}")
        raise AssertionError("unreachable")
    nssdb.mkdir(parents=True, exist_ok=True)
    db = f"sql:{nssdb}"
    if not (nssdb / "cert9.db").exists():
        subprocess.run([certutil, "-N", "-d", db, "--empty-password"], check=True, capture_output=True)
    subprocess.run([certutil, "-A", "-d", db, "-t", "C,,", "-n", CA_NICKNAME, "-i", str(ca)], check=True)


@contextlib.contextmanager
def firefox_process(profile: Path, ca: Path) -> Iterator[Firefox]:
    """Firefox (the test prefs, ``ca`` trusted) on a private Xvfb display."""
    executable = require_firefox()
    write_profile(profile)
    trust_ca(profile, ca)
    with xvfb() as display:
        firefox = Firefox(executable, profile, display)
        try:
            yield firefox
        finally:
            firefox.close()


@contextlib.asynccontextmanager
async def open_browser(
    engine: str, y4m: Path | None, firefox: Firefox | None, home: Path | None = None
) -> AsyncIterator[Browser]:
    """A :class:`Browser` of ``engine``: Chromium launched here (fake camera ``y4m``; ``home``: its $HOME, where it
    finds the trusted CAs), or a session of ``firefox``."""
    if engine == "firefox":
        assert firefox is not None
        async with firefox.session() as session:
            yield FirefoxBrowser(session)
        return
    executable = require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        env = {**os.environ, "HOME": str(home)} if home is not None else None
        chromium = await pw.chromium.launch(executable_path=executable, args=chromium_args(y4m), env=env)
        try:
            yield ChromiumBrowser(chromium)
        finally:
            await chromium.close()


WAIT_JS = """async (timeoutMs) => {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try { if (EXPRESSION) return true; } catch (err) { /* not there yet */ }
    if (performance.now() > deadline) return false;
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
}"""
SET_JS = """([selector, value]) => {
  const el = document.querySelector(selector);
  if (el.tagName === 'SELECT') el.value = [...el.options].find((o) => o.text === value || o.value === value).value;
  else el.value = value;
  el.dispatchEvent(new Event('input', { bubbles: true }));
  el.dispatchEvent(new Event('change', { bubbles: true }));
}"""


async def wait_until(page: Page, expression: str, timeout_s: float) -> bool:
    """Whether the JavaScript ``expression`` became true in the page within ``timeout_s`` (checked every animation
    frame there)."""
    return bool(await page.evaluate(WAIT_JS.replace("EXPRESSION", expression), timeout_s * 1000))  # no eval(): CSP


async def settle(page: Page) -> None:
    """Let the keys in flight come back (at most :data:`SETTLE_S`; one lost for good is the ratio's business)."""
    await wait_until(page, SETTLED, SETTLE_S)


async def wait_for(page: Page, expression: str, timeout_s: float = 30.0) -> None:
    """Until the JavaScript ``expression`` is true in the page; AssertionError after ``timeout_s``."""
    if not await wait_until(page, expression, timeout_s):
        state = await page.evaluate("() => document.querySelector('#message')?.textContent")
        raise AssertionError(f"not true within {timeout_s} s: {expression} (page says {state!r})")


async def set_value(page: Page, selector: str, value: str) -> None:
    """Set an input's value or pick a select's option (by text or value), with input and change events."""
    await page.evaluate(SET_JS, [selector, value])


async def click(page: Page, selector: str) -> None:
    """Click an element."""
    await page.evaluate("(s) => document.querySelector(s).click()", selector)
