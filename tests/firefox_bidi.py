"""Debian's Firefox ESR driven over WebDriver BiDi, the W3C protocol Firefox serves itself (its Remote Agent):
no geckodriver (neither Debian nor PyPI ships one for Linux) and no Playwright (its BiDi Firefox sends
``emulation.setMediaFeaturesOverride``, which Firefox ESR 153 answers "unknown command").

Firefox runs under Xvfb, not ``--headless``: headless Firefox finds no GL driver here ("Exhausted GL driver
options"), under Xvfb it gets Mesa's software WebGL 2. One Firefox serves a module's tests; each test opens its
own BiDi session (:meth:`Firefox.session`) and tab."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp

FIREFOX_NAMES = ("firefox-esr", "firefox")
READY = re.compile(r"WebDriver BiDi listening on (ws://\S+)")
START_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 60.0
STDERR_TAIL = 20  # lines of Firefox's stderr kept for a failed start's message

PREFS: dict[str, bool | int | str] = {
    "media.navigator.streams.fake": True,  # a built-in fake camera
    "media.navigator.permission.disabled": True,  # no permission prompt
    "media.peerconnection.ice.loopback": True,  # loopback candidates, the gateway listens on 127.0.0.1 only
    "media.peerconnection.ice.obfuscate_host_addresses": False,  # no mDNS names in host candidates
    "media.autoplay.default": 0,  # play without a gesture
    "webgl.force-enabled": True,  # Mesa's llvmpipe is on Firefox's blocklist
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "browser.aboutwelcome.enabled": False,
}


def firefox_path() -> str | None:
    """The system Firefox (MVS_FIREFOX overrides), or None."""
    override = os.environ.get("MVS_FIREFOX")
    if override:
        return override
    return next((found for name in FIREFOX_NAMES if (found := shutil.which(name))), None)


def write_profile(profile: Path, prefs: dict[str, bool | int | str] = PREFS) -> Path:
    """A Firefox profile directory whose ``user.js`` sets ``prefs``."""
    profile.mkdir(parents=True, exist_ok=True)
    lines = [f"user_pref({json.dumps(k)}, {json.dumps(v)});" for k, v in prefs.items()]
    (profile / "user.js").write_text("\n".join(lines) + "\n")
    return profile


@contextlib.contextmanager
def xvfb() -> Iterator[str]:
    """A private X display (Xvfb picks a free number and writes it to the pipe); yields ``:N``."""
    read, write = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1920x1080x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    try:
        with os.fdopen(read) as pipe:
            number = pipe.readline().strip()
        if not number:
            raise RuntimeError("Xvfb did not start")
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(10)


class Firefox:
    """One Firefox process with its Remote Agent on a free loopback port."""

    def __init__(self, executable: str, profile: Path, display: str) -> None:
        env = {**os.environ, "DISPLAY": display, "MOZ_CRASHREPORTER_DISABLE": "1"}
        self.proc = subprocess.Popen(
            [executable, "--no-remote", "--profile", str(profile), "--remote-debugging-port=0", "about:blank"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = self._wait_ready()

    def _wait_ready(self) -> str:
        assert self.proc.stderr is not None
        found: list[str] = []
        tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        ready = threading.Event()

        def drain() -> None:  # the pipe must be read for as long as Firefox runs
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                tail.append(line.rstrip())
                if not found and (match := READY.search(line)):
                    found.append(match.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True, name="firefox-stderr").start()
        if not ready.wait(START_TIMEOUT_S) or not found:
            self.close()
            said = "\n".join(tail)
            raise RuntimeError(f"Firefox did not open WebDriver BiDi within {START_TIMEOUT_S:.0f} s; it said:\n{said}")
        return found[0] + "/session"

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[BidiSession]:
        """A new BiDi session (one at a time), ended on exit."""
        async with aiohttp.ClientSession() as http, http.ws_connect(self.url, max_msg_size=0) as ws:
            session = BidiSession(ws)
            try:
                await session.send("session.new", {"capabilities": {}})
                await session.send("session.subscribe", {"events": ["log.entryAdded"]})
                yield session
            finally:
                with contextlib.suppress(Exception):
                    await session.send("session.end", {})
                session.stop()

    def close(self) -> None:
        """Stop Firefox."""
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def is_csp_violation(text: str) -> bool:
    """Whether a console message reports a Content-Security-Policy violation (Chromium's and Firefox's wording)."""
    return "Content Security Policy" in text or "Content-Security-Policy" in text


class BidiError(RuntimeError):
    """A BiDi command failed (``error: message``)."""


class BidiSession:
    """Commands over one WebSocket; uncaught JavaScript errors and Content-Security-Policy violations (from
    ``log.entryAdded``) collected in :attr:`errors`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.errors: list[str] = []
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read(), name="bidi-reader")

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            future = self._pending.pop(data["id"], None) if "id" in data else None
            if future is not None and not future.done():
                future.set_result(data)
            elif data.get("method") == "log.entryAdded":
                entry = data["params"]
                text = str(entry.get("text"))
                if entry.get("type") == "javascript" and entry.get("level") == "error" or is_csp_violation(text):
                    self.errors.append(text)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BidiError("the BiDi connection closed"))

    async def send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One command; its ``result``, or :class:`BidiError`."""
        self._next += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next] = future
        await self.ws.send_json({"id": self._next, "method": method, "params": params})
        reply = await asyncio.wait_for(future, COMMAND_TIMEOUT_S)
        if reply.get("type") == "error":
            raise BidiError(f"{method}: {reply.get('error')}: {reply.get('message')}")
        result: dict[str, Any] = reply["result"]
        return result

    async def new_page(self, width: int, height: int) -> BidiPage:
        """A new tab with a viewport of ``width`` x ``height`` CSS pixels."""
        context = (await self.send("browsingContext.create", {"type": "tab"}))["context"]
        viewport = {"width": width, "height": height}
        await self.send("browsingContext.setViewport", {"context": context, "viewport": viewport})
        return BidiPage(self, context)

    def stop(self) -> None:
        """Stop reading."""
        self._reader.cancel()


class BidiPage:
    """A tab: the few page operations tests/browser_pages.py needs."""

    def __init__(self, session: BidiSession, context: str) -> None:
        self.session = session
        self.context = context

    @property
    def errors(self) -> list[str]:
        """Uncaught JavaScript errors (of the whole session)."""
        return self.session.errors

    async def goto(self, url: str) -> None:
        await self.session.send("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    async def evaluate(self, function: str, arg: Any = None) -> Any:
        """``await function(arg)`` in the page; arg and result travel as JSON."""
        wrapped = f"async (a) => JSON.stringify((await ({function})(JSON.parse(a))) ?? null)"
        result = await self.session.send(
            "script.callFunction",
            {
                "functionDeclaration": wrapped,
                "arguments": [{"type": "string", "value": json.dumps(arg)}],
                "awaitPromise": True,
                "target": {"context": self.context},
            },
        )
        if result["type"] == "exception":
            raise BidiError(f"script threw: {result['exceptionDetails'].get('text')}")
        return json.loads(result["result"]["value"])

    async def screenshot(self, path: Path) -> None:
        shot = await self.session.send("browsingContext.captureScreenshot", {"context": self.context})
        path.write_bytes(base64.b64decode(shot["data"]))

    async def close(self) -> None:
        await self.session.send("browsingContext.close", {"context": self.context})
