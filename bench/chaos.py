"""The fault campaign of issue 14, by one command (``python -m bench.chaos``): each fault against real services on
loopback (a nats-server, an in-process worker and gateway, real aiortc phones), and what survived it.

Rows: a decompression bomb as a key frame and as a style; an echo bait (a 200 KB unknown field); a flood of offers
that never finish ICE; the gateway stopped mid-stream and restarted on its port; NATS down for longer than the old
reconnect policy allowed. Each row: frames out / captured, keys ok / failed, recovery seconds, sessions and this
process's memory (RSS) after. Every step is bounded in time; nothing leaves loopback. JSON + Markdown under
``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import nats

from bench.common import machine, write_results
from bench.faults import jpeg_bomb, png_bomb, unanswered_offer_sdp
from deploy.nats import NatsServer, free_port
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.client import Phone, PhoneConfig
from mobile_sim.sources import default_style_photo
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK
from streaming.images import encode_jpeg
from streaming.protocol import StylizeReply, StylizeRequest, decode, encode, stylize_subject
from streaming.runtime import run_main
from streaming.style_store import StyleStore

FPS = 15.0
SIZE = (320, 180)
RECONNECT_WAIT_S = 0.1
NATS_OUTAGE_S = 7.0
"""70 reconnect attempts at 0.1 s: more than the 60 after which services used to give up."""
GATEWAY_DOWN_S = 2.0
FLOOD_OFFERS = 50
FLOOD_CAP = 32
FLOOD_CONNECT_TIMEOUT_S = 3.0
STEP_TIMEOUT_S = 60.0


def rss_mb() -> float:
    """Resident memory of this process (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Site:
    """A nats-server, a worker and a gateway of one region, all on loopback."""

    def __init__(self, nats_port: int, http_port: int, **gateway: object) -> None:
        self.region = f"c{uuid.uuid4().hex[:6]}"
        self.nats_port, self.http_port, self.gateway_settings = nats_port, http_port, gateway
        self.server = NatsServer(port=nats_port)
        self.worker = StylizerWorker(
            WorkerConfig(
                nats_url=self.server.url,
                region=self.region,
                worker_id="w",
                threads=1,
                nats_reconnect_wait_s=RECONNECT_WAIT_S,
            )
        )
        self.gateway = self.new_gateway()

    def new_gateway(self) -> Gateway:
        return Gateway(
            GatewayConfig(
                port=self.http_port,
                nats_url=self.server.url,
                region=self.region,
                ice_hosts=LOOPBACK,
                nats_reconnect_wait_s=RECONNECT_WAIT_S,
                **self.gateway_settings,  # type: ignore[arg-type]
            )
        )

    async def __aenter__(self) -> Site:
        self.server.start()
        await self.worker.start()
        await self.gateway.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.gateway.stop()
        await self.worker.stop()
        self.server.stop()

    def phone(self, seconds: float) -> Phone:
        config = PhoneConfig(
            gateway_urls=(self.gateway.url,),
            frames=int(seconds * FPS),
            size=SIZE,
            fps=FPS,
            key_interval=5,
            region=self.region,
            ice_hosts=LOOPBACK,
        )
        return Phone(config)

    async def health(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(f"{self.gateway.url}/healthz") as response:
            return dict(await response.json())


def _row(fault: str, survived: str, report: dict[str, Any] | None = None, **numbers: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"fault": fault, "survived": survived, **numbers, "rss_mb_after": rss_mb()}
    if report is not None:
        row["frames_out"], row["frames_captured"] = report["frames"]["output"], report["frames"]["captured"]
        row["keys_ok"], row["keys_failed"] = report["key_frames"]["ok"], report["key_frames"]["failed"]
        row["outcome"] = report["outcome"]["status"]
    return row


async def bombs_and_echoes(site: Site) -> list[dict[str, Any]]:
    nc = await nats.connect(site.server.url)
    rows = []
    try:
        store = await StyleStore.open(nc.jetstream())
        good_style = await store.put(encode_jpeg(default_style_photo()))
        bomb_style = await store.put(png_bomb(16_000, 16_000))
        frame = encode_jpeg(default_style_photo()[:64, :64])

        def request(style_id: str, image: bytes, **extra: object) -> bytes:
            body = msgpack.unpackb(
                encode(
                    StylizeRequest(
                        stream_id="s",
                        frame_id=1,
                        style_id=style_id,
                        image=image,
                        out_width=64,
                        out_height=64,
                        budget_ms=3000.0,
                    )
                )
            )
            body.update(extra)
            return bytes(msgpack.packb(body))

        cases = [
            ("JPEG key frame claiming 30000x30000 (820 B)", request(good_style, jpeg_bomb())),
            ("PNG style claiming 16000x16000", request(bomb_style, frame)),
            ("stylize request with a 200 KB unknown field", request(good_style, frame, **{"k" * 200_000: 1})),
        ]
        for fault, data in cases:
            start = time.monotonic()
            msg = await nc.request(stylize_subject(site.region), data, timeout=10)
            answered_s = time.monotonic() - start
            ok = (await nc.request(stylize_subject(site.region), request(good_style, frame), timeout=10)).data
            serving = decode(ok, StylizeReply).ok
            rows.append(
                _row(
                    fault,
                    f"error reply of {len(msg.data)} B; next good request ok: {serving}",
                    reply_bytes=len(msg.data),
                    recovery_s=round(answered_s, 3),
                )
            )
        sdp = await unanswered_offer_sdp()
        async with aiohttp.ClientSession() as http:
            body = json.dumps({"type": "offer", "sdp": sdp, "style": base64.b64encode(png_bomb()).decode()})
            start = time.monotonic()
            async with http.post(f"{site.gateway.url}/offer", data=body) as response:
                status, size = response.status, len(await response.read())
        rows.append(
            _row(
                "offer with a PNG style claiming 16000x16000",
                f"HTTP {status}, {size} B",
                reply_bytes=size,
                recovery_s=round(time.monotonic() - start, 3),
                sessions_after=(await site.health())["sessions"],
            )
        )
    finally:
        await nc.close()
    return rows


async def offer_flood(site: Site) -> dict[str, Any]:
    sdp = await unanswered_offer_sdp()
    body = json.dumps(
        {"type": "offer", "sdp": sdp, "style": base64.b64encode(encode_jpeg(default_style_photo())).decode()}
    )
    async with aiohttp.ClientSession() as http:

        async def offer() -> int:
            async with http.post(f"{site.gateway.url}/offer", data=body) as response:
                return response.status

        statuses = await asyncio.gather(*(offer() for _ in range(FLOOD_OFFERS)))
    peak = len(site.gateway.sessions)
    start = time.monotonic()
    while site.gateway.sessions and time.monotonic() - start < STEP_TIMEOUT_S:
        await asyncio.sleep(0.1)
    counts = {str(s): statuses.count(s) for s in sorted(set(statuses))}
    return _row(
        f"{FLOOD_OFFERS} concurrent offers that never finish ICE (cap {FLOOD_CAP})",
        f"answers {counts}; peak {peak} sessions; all closed after the connect timeout",
        sessions_peak=peak,
        sessions_after=len(site.gateway.sessions),
        recovery_s=round(time.monotonic() - start, 3),
    )


async def gateway_restart(site: Site) -> dict[str, Any]:
    phone = site.phone(GATEWAY_DOWN_S + 8.0)
    run = asyncio.create_task(phone.run())
    await asyncio.sleep(2.0)
    await site.gateway.stop()
    await asyncio.sleep(GATEWAY_DOWN_S)
    site.gateway = site.new_gateway()
    await site.gateway.start()
    up_at = time.monotonic()
    report = (await asyncio.wait_for(run, STEP_TIMEOUT_S)).report
    outage = phone._link.outages[0] if phone._link.outages else None
    back = round(outage.reconnected - up_at, 3) if outage is not None and outage.reconnected is not None else None
    return _row(
        f"gateway stopped mid-stream, restarted on its port {GATEWAY_DOWN_S:g} s later",
        f"phone reconnected {back} s after the gateway came up",
        report,
        recovery_s=back,
        sessions_after=len(site.gateway.sessions),
    )


async def nats_outage(site: Site) -> dict[str, Any]:
    run = asyncio.create_task(site.phone(2.0 + NATS_OUTAGE_S + 6.0).run())
    await asyncio.sleep(2.0)
    site.server.stop()
    await asyncio.sleep(NATS_OUTAGE_S)
    site.server = NatsServer(port=site.nats_port).start()
    back_at = time.monotonic()
    recovered = None
    while time.monotonic() - back_at < STEP_TIMEOUT_S:
        if site.worker.ready() and (await site.health())["ok"]:
            recovered = round(time.monotonic() - back_at, 3)
            break
        await asyncio.sleep(0.1)
    report = (await asyncio.wait_for(run, STEP_TIMEOUT_S)).report
    return _row(
        f"NATS down {NATS_OUTAGE_S:g} s ({int(NATS_OUTAGE_S / RECONNECT_WAIT_S)} reconnect attempts; old limit 60)",
        f"worker and gateway ready {recovered} s after NATS came back, no restart",
        report,
        recovery_s=recovered,
        sessions_after=len(site.gateway.sessions),
    )


async def campaign() -> list[dict[str, Any]]:
    """Every fault, one after another, each on a fresh site."""
    rows: list[dict[str, Any]] = []
    steps: list[tuple[dict[str, object], Callable[[Site], Awaitable[Any]]]] = [
        ({}, bombs_and_echoes),
        (
            {
                "max_sessions": FLOOD_CAP,
                "max_pending_per_address": FLOOD_OFFERS,
                "connect_timeout_s": FLOOD_CONNECT_TIMEOUT_S,
            },
            offer_flood,
        ),
        ({}, gateway_restart),
        ({}, nats_outage),
    ]
    for settings, step in steps:
        async with Site(free_port(), _port(), **settings) as site:
            result = await asyncio.wait_for(step(site), STEP_TIMEOUT_S * 2)
        rows.extend(result if isinstance(result, list) else [result])
    return rows


COLUMNS = (
    "fault",
    "frames_out",
    "frames_captured",
    "keys_ok",
    "keys_failed",
    "recovery_s",
    "sessions_after",
    "rss_mb_after",
    "survived",
)


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# Chaos campaign (issue 14)",
        "",
        f"`python -m bench.chaos` at commit {m['commit']} on {m['cpus']} CPUs (load {m['load_avg_1m']}), "
        f"{data['seconds']} s. Loopback only: nats-server, an in-process worker (colour transfer) and gateway, "
        "aiortc phones. RSS is this one process's, all services included.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in data["rows"]:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


async def _main(out: Path | None) -> None:
    start = time.monotonic()
    rows = await campaign()
    data = {"machine": machine(), "seconds": round(time.monotonic() - start, 1), "rows": rows}
    json_path, md_path = write_results("chaos", data, markdown(data), *([out] if out else []))
    print(markdown(data))
    print(f"wrote {json_path} and {md_path}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    p.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    args = p.parse_args(argv)
    run_main(_main(args.out))


if __name__ == "__main__":
    main()
