"""Record what a gateway's FrameIdMapper sees from the real browser phone: ``python -m tests.record_frame_ids``.

Starts nats-server, a worker, the gateway and headless Chromium (the system package, driven by Playwright, fake
camera from a y4m pan over a bundled photo, as tests/test_browser.py does), streams for ``--seconds``, and writes
the mapper's input in arrival order to ``tests/data/chromium_frame_ids.json`` (``--out``): every announcement
``["a", frame_id, pts]`` (the phone's FrameMeta, pts = the sender's RTP timestamp) and every decoded frame
``["d", pts, frame_id]`` (pts as aiortc decodes it, re-based on the first frame received; frame_id the truth).

The truth is the one offset that maps *every* decoded pts exactly onto an announced pts (the recorder checks that
exactly one offset does, and that every frame the gateway itself mapped agrees with it). The recording hooks the
mapper by wrapping FrameIdMapper's methods in this process only; nothing is added to production code. Not a test
(pytest collects only ``test_*.py``); tests/test_frame_ids.py replays the file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from deploy.nats_servers import NatsServer
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.sources import SyntheticCamera, sample_photo
from streaming.gateway import frame_ids
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK
from streaming.protocol import RTP_TIMESTAMP_MODULUS
from tests.browser_support import chromium_args, chromium_path, write_y4m

OUT = Path(__file__).resolve().parent / "data" / "chromium_frame_ids.json"
SIZE = (640, 360)
FPS = 30
CAMERA_FRAMES = 150
STYLE = "rocket"
KEY_INTERVAL = 10


def _hook(events: list[list[Any]], mapped: dict[int, int]) -> None:
    """Wrap FrameIdMapper so that every instance logs its input (and what it mapped) to ``events``/``mapped``."""
    cls = frame_ids.FrameIdMapper
    announce, observe, locate = cls.announce, cls.observe, cls.locate

    def announce_hook(self: frame_ids.FrameIdMapper, frame_id: int, pts: int) -> None:
        events.append(["a", frame_id, pts])
        announce(self, frame_id, pts)

    def observe_hook(self: frame_ids.FrameIdMapper, received_pts: int) -> None:
        events.append(["d", received_pts])
        observe(self, received_pts)

    def locate_hook(self: frame_ids.FrameIdMapper, received_pts: int) -> int | None:
        frame_id = locate(self, received_pts)
        if frame_id is not None:
            mapped[received_pts] = frame_id
        return frame_id

    cls.announce, cls.observe, cls.locate = announce_hook, observe_hook, locate_hook  # type: ignore[method-assign]


def _truth(events: list[list[Any]], mapped: dict[int, int]) -> int:
    """Add each decoded frame's true id to its event; returns the offset (sender pts - decoded pts)."""
    announced = {pts % RTP_TIMESTAMP_MODULUS: frame_id for kind, frame_id, pts in (e for e in events if e[0] == "a")}
    decoded = [e[1] % RTP_TIMESTAMP_MODULUS for e in events if e[0] == "d"]
    votes = Counter((sent - received) % RTP_TIMESTAMP_MODULUS for received in decoded for sent in announced)
    full = [offset for offset, count in votes.items() if count == len(decoded)]
    assert len(full) == 1, f"{len(full)} offsets explain every decoded frame exactly"
    offset = full[0]
    for event in events:
        if event[0] == "d":
            event.append(announced[(event[1] + offset) % RTP_TIMESTAMP_MODULUS])
    truth = {e[1]: e[2] for e in events if e[0] == "d"}
    disagree = {pts: (got, truth.get(pts)) for pts, got in mapped.items() if truth.get(pts) != got}
    assert not disagree, f"the gateway mapped frames differently from the exact match: {disagree}"
    return offset


async def record(seconds: float) -> dict[str, Any]:
    executable = chromium_path()
    assert executable, "Chromium is needed (see tests/browser_support.py)"
    from playwright.async_api import async_playwright

    events: list[list[Any]] = []
    mapped: dict[int, int] = {}
    _hook(events, mapped)
    region = f"rec{uuid.uuid4().hex[:8]}"
    with NatsServer(monitor_port=0) as nats, tempfile.TemporaryDirectory() as tmp:
        worker = StylizerWorker(WorkerConfig(nats_url=nats.url, region=region, worker_id="w-rec", threads=1))
        await worker.start()
        gateway = Gateway(GatewayConfig(port=0, nats_url=nats.url, region=region, ice_hosts=LOOPBACK))
        await gateway.start()
        try:
            camera = SyntheticCamera(sample_photo("astronaut"), size=SIZE, frames=CAMERA_FRAMES, fps=FPS)
            y4m = Path(tmp) / "camera.y4m"
            write_y4m(y4m, (camera.render(i) for i in range(CAMERA_FRAMES)), FPS)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=executable, args=chromium_args(y4m))
                version = browser.version
                page = await browser.new_page(viewport={"width": 1300, "height": 520})
                await page.goto(f"{gateway.url}/")
                await page.wait_for_function(
                    "window.mvs !== undefined && document.querySelector('#style').options.length > 0"
                )
                await page.select_option("#style", label=STYLE)
                await page.fill("#key-interval", str(KEY_INTERVAL))
                await page.click("#start")
                await asyncio.sleep(seconds)
                stats = await page.evaluate("window.mvs.stats()")
                await page.close()
                await browser.close()
        finally:
            await gateway.stop()
            await worker.stop()
    offset = _truth(events, mapped)
    decoded = sum(e[0] == "d" for e in events)
    return {
        "about": (
            "FrameIdMapper input at a real gateway from the browser phone (streaming/gateway/static) in headless "
            f"Chromium {version}, fake camera {SIZE[0]}x{SIZE[1]} at {FPS} fps, streamed {seconds:g} s on loopback; "
            "recorded with `python -m tests.record_frame_ids`. events in arrival order: "
            '["a", frame_id, sender_pts] an announcement, ["d", decoded_pts, true_frame_id] a decoded frame; '
            "truth = the single offset matching every decoded pts exactly (and agreeing with the gateway's own map)."
        ),
        "chromium": version,
        "seconds": seconds,
        "offset": offset,
        "announced": sum(e[0] == "a" for e in events),
        "decoded": decoded,
        "mapped_by_gateway": len(mapped),
        "keys_requested": stats["keysRequested"],
        "keys_ok": stats["keysOk"],
        "events": events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    trace = asyncio.run(record(args.seconds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = {k: v for k, v in trace.items() if k != "events"}
    lines = ",\n".join(json.dumps(e, separators=(",", ":")) for e in trace["events"])
    body = json.dumps(header, indent=1)[:-2] + ',\n "events": [\n' + lines + "\n]}\n"
    args.out.write_text(body)
    json.loads(args.out.read_text())
    print(f"{args.out}: {header}")


if __name__ == "__main__":
    main()
