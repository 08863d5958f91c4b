"""The fault campaign of issue 14, by one command (``python -m bench.chaos``): each fault against real services on
loopback (a nats-server, an in-process worker and gateway, real aiortc phones), and what survived it.

Rows: a decompression bomb as a key frame and as a style; an echo bait (a 200 KB unknown field); a flood of offers
that never finish ICE; the gateway stopped mid-stream and restarted on its port; a gateway process killed with
SIGKILL mid-stream and restarted on its port (the phone notices by silence); NATS down for longer than the old
reconnect policy allowed; 8 phone processes at once (each writes its report); a worker rewriting its delta after the
aggregator checked it, then replaying the consumed references (issue 22: NaN, x1000, another shape; an in-process
aggregator on a synthetic model); and one phone attacking the gateway (issue 22: random frame-id announcements,
results far larger than its key frames, clock-probe and garbage floods, forged latency reports) while a well-behaved
phone streams beside it, whose keys and round-trip p95 are the row's figure against the same phone alone (target: >=
95 % of its keys, p95 within 2x); the same for the signaling and storage attacks of issue 22 (slow offers and idle
connections, SDP bombs, a candidate flood, a style flood, sessions opened and closed in a loop) and the delta swap; a
worker credential of one region attacking another (issue 22: streams, consumers and replies aimed at its subjects,
deltas as other workers) while a phone of that region streams, against the generated accounts, against the same phone
alone; one server of a three-server hub killed (-9) mid-round, during a new style's upload and as the meta leader
(issue 26, :mod:`bench.chaos_hub`: deltas acked against counted, versions loading with their digest). Each row:
frames out / captured, keys ok / failed, recovery seconds, sessions and this process's memory (RSS) after. Every step
is bounded in time; nothing leaves loopback. JSON + Markdown under ``bench/results/``; ``--only NAME`` runs some
steps.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import socket
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import nats
import numpy as np

from aggregator.service import Aggregator, AggregatorConfig
from bench.chaos_hub import kill_during_style_upload, kill_meta_leader, kill_mid_round
from bench.common import machine, table, write_results
from deploy.faults import (
    BarePhone,
    RandomPtsPhone,
    StunTargets,
    jpeg_bomb,
    key_request,
    kill_gateway_mid_stream,
    loopback_phone,
    png_bomb,
    restricted_gateway,
    restricted_worker,
    sdp_bombs,
    slow_offer_head,
    unanswered_offer_sdp,
    with_candidates,
)
from deploy.launch import ServiceProcess, stop_all
from deploy.nats_auth import worker_id, worker_user
from deploy.nats_servers import HUB_DOMAIN, NatsHubAndLeaves, NatsServer, free_port
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.client import Phone
from mobile_sim.sources import default_style_photo
from streaming.cli import ServiceOptions
from streaming.gateway.sdp_limits import MAX_REMOTE_CANDIDATES
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.gateway.session import PhoneSession
from streaming.ice import LOOPBACK
from streaming.images import encode_jpeg
from streaming.model_store import DeltaStore, ModelStore, submit_delta
from streaming.nats_connect import inbox_prefix, url_user
from streaming.protocol import (
    LATENCY_PARTS,
    STYLE_BUCKET,
    STYLIZE_QUEUE_GROUP,
    ClockPing,
    DeltaRef,
    KeyLatency,
    StylizeReply,
    decode,
    delta_bucket,
    encode,
    fl_delta_subject,
    pack,
    stylize_subject,
    unpack,
)
from streaming.runtime import run_main
from streaming.style_store import StyleStore
from streaming.tensors import NamedArrays, encode_tensors

FPS = 15.0
SIZE = (320, 180)
RECONNECT_WAIT_S = 0.1
NATS_OUTAGE_S = 7.0
"""70 reconnect attempts at 0.1 s: more than the 60 after which services used to give up."""
GATEWAY_DOWN_S = 2.0
CROWD_PHONES = 8
CROWD_SECONDS = 4.0
"""8 phone processes at once on this machine's cores, each streaming this long (issue 14, item 10)."""
FLOOD_OFFERS = 50
FLOOD_CAP = 32
FLOOD_CONNECT_TIMEOUT_S = 3.0
STEP_TIMEOUT_S = 60.0
ATTACK_SECONDS = 6.0
"""How long the well-behaved phone streams during each phone attack (and alone, for its baseline)."""
ATTACK_UNMAPPED_TIMEOUT_S = 3.0
"""The random-pts row's limit on a session whose frames never map (default 10 s: longer than the row)."""
FLOOD_BATCH = 200
"""Messages an attacker sends per loop turn (every 5 ms, while less than FLOOD_BUFFERED_BYTES wait to be sent)."""
FLOOD_BUFFERED_BYTES = 256 * 1024
SWAP_MODEL: NamedArrays = {"dec.weight": np.ones((64, 64), np.float32)}
"""The delta-swap step's synthetic model: norm 64, as in the issue's report."""
SWAP_STEP = 0.01
"""Each honest delta's value (norm 0.64: 1 % of the model's)."""
SWAP_ROUND_TIMEOUT_S = 0.5
SWAP_PHONE_S = 8.0
"""How long the well-behaved phone streams while deltas are swapped (and alone, for its baseline)."""
CHURN_ADDRESSES = 10
"""Loopback addresses the session churn offers from (each within the gateway's offer rate)."""
SLOW_ADDRESSES = 4
SLOW_OFFERS_PER_ADDRESS = 8
IDLE_CONNECTIONS = 300
"""Idle and partial-header connections, spread over addresses of 64 (the per-address cap) each."""
FLOOD_CANDIDATES = 2000
LISTENING_CANDIDATES = 200
STYLE_FLOOD_OFFERS = 32
STYLE_FLOOD_ADDRESSES = 8
STYLE_FLOOD_SIDE = 2600
"""Noise photos of this side are ~7.5 MB as JPEG (quality 95), the issue's style size."""


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
        self.server = NatsServer(port=nats_port, regions=[self.region])  # the setup makes its delta bucket
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
        self.flood_styles: list[str] = []
        """Style uploads the style-flood attack posts (made before the phone streams: the attack is the posting)."""

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
        return Phone(loopback_phone([self.gateway.url], self.region, int(seconds * FPS), size=SIZE, fps=FPS))

    async def health(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(f"{self.gateway.url}/healthz") as response:
            return dict(await response.json())


def _row(fault: str, survived: str, report: dict[str, Any] | None = None, **numbers: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"fault": fault, "survived": survived, **numbers, "rss_mb_after": rss_mb()}
    if report is not None:
        row["frames_out"], row["frames_captured"] = report["frames"]["output"], report["frames"]["captured"]
        row["keys_ok"], row["keys_failed"] = report["key_frames"]["ok"], report["key_frames"]["failed"]
        row["outcome"] = report["outcome"]["status"]
        row["outages"] = report["network"]["outages"]["count"]
        row["key_failures"] = {str(code): n for code, n in report["key_frames"]["failures_by_code"].items()}
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
            body = unpack(encode(key_request(style_id, image, (64, 64), 3000.0)), "a stylize request")
            body.update(extra)
            return pack(body)

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
    site.server = NatsServer(port=site.nats_port, regions=[site.region]).start()
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


async def gateway_kill(site: Site) -> dict[str, Any]:
    """The site's worker serves a gateway *process* (``deploy.faults.kill_gateway_mid_stream``): SIGKILL mid-stream,
    the same command again on its port ``GATEWAY_DOWN_S`` later."""
    kill = await kill_gateway_mid_stream(site.server.url, site.region, None, down_s=GATEWAY_DOWN_S, fps=FPS, size=SIZE)
    noticed, back = kill.noticed_after_s, kill.reconnect_after_up_s
    after_restart = None if kill.reconnected_at is None else kill.reconnected_at - kill.restarted_at
    return _row(
        f"gateway process killed (-9) mid-stream, restarted on its port {GATEWAY_DOWN_S:g} s later",
        f"phone noticed the silence {_round(noticed)} s after the kill; connected again "
        f"{_round(after_restart)} s after the "
        f"restart, {_round(back)} s after the new gateway's first /healthz answer",
        kill.report,
        recovery_s=_round(after_restart),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def phone_crowd(site: Site) -> dict[str, Any]:
    """``CROWD_PHONES`` phone processes (``python -m mobile_sim``) at once through the site's gateway: each must
    write its report (complete; degraded or partial with the reason) and exit 0 (non-zero only on its own failure
    or when it never streamed)."""
    with tempfile.TemporaryDirectory(prefix="mvs-crowd-") as tmp:
        frames = int(CROWD_SECONDS * FPS)
        outs = [Path(tmp) / f"phone{i}" for i in range(CROWD_PHONES)]
        phones = [
            ServiceProcess(
                loopback_phone([site.gateway.url], site.region, frames, size=SIZE, fps=FPS, out_dir=out),
                options=ServiceOptions(log_level="error"),
                log_path=out.with_suffix(".log"),
            ).start()
            for out in outs
        ]
        start = time.monotonic()
        # Bounded: a phone still running then counts as one that wrote nothing.
        await asyncio.gather(*(asyncio.wait_for(p.wait_exit(), STEP_TIMEOUT_S) for p in phones), return_exceptions=True)
        stop_all(phones)
        seconds = time.monotonic() - start
        reports = [json.loads((o / "report.json").read_text()) for o in outs if (o / "report.json").is_file()]
    codes = [code for p in phones if (code := p.returncode) is not None]  # all: stopped
    status = [r["outcome"]["status"] for r in reports]
    reasons = sorted({r["outcome"]["reason"] for r in reports if r["outcome"]["reason"]})
    return _row(
        f"{CROWD_PHONES} phone processes at once ({CROWD_SECONDS:g} s each)",
        f"{len(reports)}/{CROWD_PHONES} reports: {status.count('complete')} complete, "
        f"{status.count('degraded')} degraded, {status.count('partial')} partial"
        f"{' (' + '; '.join(reasons) + ')' if reasons else ''}; exit codes {sorted(set(codes))}; "
        f"all done {seconds:.1f} s after the start",
        frames_out=sum(r["frames"]["output"] for r in reports),
        frames_captured=sum(r["frames"]["captured"] for r in reports),
        keys_ok=sum(r["key_frames"]["ok"] for r in reports),
        keys_failed=sum(r["key_frames"]["failed"] for r in reports),
        reports=len(reports),
        complete=status.count("complete"),
        degraded=status.count("degraded"),
        partial=status.count("partial"),
        exit_codes=codes,
        wall_s=round(seconds, 3),
        sessions_after=len(site.gateway.sessions),
    )


CROSS_REGION_SECONDS = 6.0
ATTACK_PAUSE_S = 0.05


async def cross_region(site: Site) -> list[dict[str, Any]]:
    """Issue 22, item 2, on a secure hub with leaf nodes "eu" and "us" (its own: ``site`` is unused): a "us" phone
    streams, once alone (the baseline) and once while an "eu" worker's credential keeps trying to create a stream
    over ``mvs.us.stylize``, a consumer delivering the style bucket into it, direct gets answered into it, and deltas
    as another worker. The figure: the us phone's keys and round trip against its baseline."""
    del site
    with NatsHubAndLeaves(["eu", "us"], secure=True, workers={"eu": 2, "us": 1}) as cluster:
        worker = StylizerWorker(restricted_worker(cluster, "us"))
        gateway = Gateway(restricted_gateway(cluster, "us"))
        await worker.start()
        await gateway.start()
        refusals: list[str] = []

        async def on_error(exc: Exception) -> None:
            refusals.append(str(exc))

        attacker_url = cluster.client_url(cluster.leaves["eu"], worker_user(worker_id("eu", 0)))
        attacker = await nats.connect(
            attacker_url, error_cb=on_error, inbox_prefix=inbox_prefix(url_user(attacker_url))
        )
        try:
            baseline = await _us_phone(gateway, "us")
            attack = asyncio.create_task(_attack_us(attacker))
            try:
                report = await _us_phone(gateway, "us")
            finally:
                attack.cancel()
                attempts = await attack
        finally:
            await attacker.close()
            await gateway.stop()
            await worker.stop()
    refused = sum("permissions violation" in r.lower() for r in refusals)
    words, numbers = _against(baseline, report, "us")
    return [
        _row("cross-region: baseline (a us phone alone)", "baseline", baseline, p95_ms=_p95(baseline, "us")),
        _row(
            "cross-region: an eu worker credential attacks us while a us phone streams",
            f"{refused} of the attacker's {attempts} calls refused by the server (its direct gets are allowed, "
            f"answered inside eu); {words}",
            report,
            attacks=attempts,
            refused=refused,
            **numbers,
        ),
    ]


async def _us_phone(gateway: Gateway, region: str) -> dict[str, Any]:
    config = loopback_phone([gateway.url], region, int(CROSS_REGION_SECONDS * FPS), size=SIZE, fps=FPS)
    return (await asyncio.wait_for(Phone(config).run(), STEP_TIMEOUT_S)).report


async def _attack_us(nc: nats.NATS) -> int:
    """Issue 22's attacks from an eu worker's credential, round after round until cancelled; the calls made."""
    api = f"$JS.{HUB_DOMAIN}.API"
    bucket, styles = delta_bucket("eu"), "OBJ_mvs-styles"
    stream = {"name": f"OBJ_{bucket}", "subjects": [f"$O.{bucket}.C.>", f"$O.{bucket}.M.>", stylize_subject("us")]}
    consumer = {
        "stream_name": styles,
        "config": {"deliver_subject": stylize_subject("us"), "deliver_group": STYLIZE_QUEUE_GROUP},
    }
    forged = DeltaRef(worker_id=worker_id("eu", 1), region="eu", base_version=0, samples=4, object_name="x")
    calls = 0
    try:
        while True:
            await nc.publish(f"{api}.STREAM.CREATE.OBJ_{bucket}", json.dumps(stream).encode())
            await nc.publish(f"{api}.CONSUMER.CREATE.{styles}", json.dumps(consumer).encode())
            await nc.publish(f"{api}.DIRECT.GET.{styles}", b'{"seq": 1}', reply=stylize_subject("us"))
            await nc.publish(fl_delta_subject("eu", forged.worker_id), encode(forged))
            calls += 4
            await asyncio.sleep(ATTACK_PAUSE_S)
    except asyncio.CancelledError:
        return calls


def _p95(report: dict[str, Any], region: str) -> float | None:
    """A phone's key round trip p95 (ms) in ``region``."""
    value = report["latency_ms"].get(region, {}).get("round_trip", {}).get("p95")
    return None if value is None else round(float(value), 1)


KEEP_KEYS = 0.95
MAX_P95_RATIO = 2.0
"""The target of issue 22, item 8: beside an attack, a well-behaved phone keeps >= 95 % of its keys (alone) and its
round-trip p95 within 2x."""


def _against(baseline: dict[str, Any], report: dict[str, Any], region: str) -> tuple[str, dict[str, Any]]:
    """The well-behaved phone beside an attack against itself alone: the words and the numbers of its row."""
    base_keys, base_p95 = int(baseline["key_frames"]["ok"]), _p95(baseline, region)
    keys, p95 = int(report["key_frames"]["ok"]), _p95(report, region)
    ratio = None if p95 is None or not base_p95 else round(p95 / base_p95, 2)
    met = keys >= KEEP_KEYS * base_keys and ratio is not None and ratio <= MAX_P95_RATIO
    words = f"good phone: {keys}/{base_keys} keys, p95 x{ratio} ({'met' if met else 'MISSED'})"
    return words, {"p95_ms": p95, "p95_ratio": ratio, "target_met": met}


async def _attacker_session(site: Site, phone: BarePhone, **offer: object) -> PhoneSession:
    return site.gateway.sessions[(await phone.connect(site.gateway, **offer))["stream_id"]]


async def _random_pts(site: Site) -> str:
    phone = RandomPtsPhone(frames=int(ATTACK_SECONDS * 30) + 60, size=(64, 64))
    try:
        session = await _attacker_session(site, phone)
        phone.flood(1024)
        phone.feed()
        await session.closed.wait()
        return session.close_reason
    finally:
        await phone.pc.close()


async def _big_results(site: Site) -> str:
    phone = BarePhone(frames=int(ATTACK_SECONDS * 30) + 60, size=(64, 64), key_every=1)
    try:
        session = await _attacker_session(site, phone, out_width=2048, out_height=2048)
        phone.feed()
        await session.closed.wait()
        return session.close_reason
    finally:
        await phone.pc.close()


async def _flood(site: Site, message: Callable[[int], bytes]) -> str:
    phone = BarePhone(frames=1, size=(64, 64))
    try:
        session = await _attacker_session(site, phone)
        sent = 0
        while not session.closed.is_set() and phone.channel.readyState == "open":
            if phone.channel.bufferedAmount < FLOOD_BUFFERED_BYTES:
                for _ in range(FLOOD_BATCH):
                    phone.channel.send(message(sent))
                    sent += 1
            await asyncio.sleep(0.005)  # let the data channel move
        await session.closed.wait()
        return f"{session.close_reason} (after {sent} sent)"
    finally:
        await phone.pc.close()


def _forged_report(i: int) -> bytes:
    return encode(KeyLatency(frame_id=i, parts_ms={part: 60_000.0 for part in LATENCY_PARTS}))


PHONE_ATTACKS: dict[str, Callable[[Site], Coroutine[Any, Any, str]]] = {
    "1,024 random pts announced, then a random pts per frame (64x64 stream)": _random_pts,
    "2048x2048 results asked for a 64x64 stream, every frame a key": _big_results,
    "clock-probe flood": lambda site: _flood(site, lambda i: encode(ClockPing(phone_ns=i))),
    "undecodable-message flood": lambda site: _flood(site, lambda i: b"\x00\xff junk"),
    "forged 60 s latency reports": lambda site: _flood(site, _forged_report),
}
"""One phone's attacks on its gateway (issue 22); each returns why the gateway ended its session."""


async def phone_attacks(site: Site) -> list[dict[str, Any]]:
    """A well-behaved phone alone (its baseline), then beside each attack of :data:`PHONE_ATTACKS`."""
    limits = dataclasses.replace(site.gateway.settings.limits, unmapped_timeout_s=ATTACK_UNMAPPED_TIMEOUT_S)
    site.gateway.settings = dataclasses.replace(site.gateway.settings, limits=limits)
    baseline = (await asyncio.wait_for(site.phone(ATTACK_SECONDS).run(), STEP_TIMEOUT_S)).report
    rows = [_row("(baseline: the well-behaved phone alone)", "", baseline, p95_ms=_p95(baseline, site.region))]
    for fault, attack in PHONE_ATTACKS.items():
        attacker = asyncio.create_task(attack(site))
        report = (await asyncio.wait_for(site.phone(ATTACK_SECONDS).run(), STEP_TIMEOUT_S)).report
        try:
            reason = await asyncio.wait_for(asyncio.shield(attacker), ATTACK_UNMAPPED_TIMEOUT_S)
        except asyncio.TimeoutError:
            attacker.cancel()
            reason = "still open when the good phone finished"
        words, numbers = _against(baseline, report, site.region)
        rows.append(
            _row(
                fault,
                f"{words}; attacker ended: {reason}",
                report,
                sessions_after=len(site.gateway.sessions),
                **numbers,
            )
        )
    return rows


def _swapped(kind: str) -> NamedArrays:
    """What the attacker writes over its checked delta."""
    if kind == "nan":
        return {"dec.weight": np.full((64, 64), np.nan, np.float16)}
    if kind == "x1000":
        return {"dec.weight": np.full((64, 64), SWAP_STEP * 1000, np.float16)}
    return {"dec.weight": np.full((32, 128), SWAP_STEP, np.float16)}


async def _until(predicate: Callable[..., Awaitable[bool]], *args: Any) -> None:
    async def loop() -> None:
        while not await predicate(*args):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(loop(), STEP_TIMEOUT_S)


async def delta_swap(site: Site) -> list[dict[str, Any]]:
    """Issue 22's critical finding, three rounds while a phone streams: an attacker's delta is accepted, then its blob
    is overwritten (NaN, x1000, another shape) before an honest delta completes the round. Survived: every version
    finite and exactly the model plus the honest steps, each swap dropped by digest."""
    baseline = (await asyncio.wait_for(site.phone(SWAP_PHONE_S).run(), STEP_TIMEOUT_S)).report
    aggregator = Aggregator(
        AggregatorConfig(nats_url=site.server.url, min_updates=2, round_timeout_s=SWAP_ROUND_TIMEOUT_S)
    )
    await aggregator.start(SWAP_MODEL)
    serving = asyncio.create_task(aggregator.run())
    run = asyncio.create_task(site.phone(SWAP_PHONE_S).run())
    nc = await nats.connect(site.server.url)
    js = nc.jetstream()
    try:
        deltas, store = DeltaStore(js, site.region), await ModelStore.open(js)
        honest = {"dec.weight": np.full((64, 64), SWAP_STEP, np.float16)}
        kinds = ("nan", "x1000", "shape")
        consumed = []
        for base, kind in enumerate(kinds):
            bad = await submit_delta(js, deltas, worker_id="attacker", base_version=base, samples=8, delta=honest)
            await _until(_holds, aggregator, bad.object_name)
            await deltas.put(bad.object_name, encode_tensors(_swapped(kind)))
            consumed.append(
                await submit_delta(js, deltas, worker_id="honest", base_version=base, samples=8, delta=honest)
            )
            await _until(_published, store, base + 1)
        rejected = dict(aggregator.rejections)
        for ref in consumed:  # a plain replay of each consumed reference, after its round closed
            await js.publish(fl_delta_subject(site.region, ref.worker_id), encode(ref))
        await _until(_rejected, aggregator, sum(rejected.values()) + len(consumed))
        replays = {r: n - rejected.get(r, 0) for r, n in aggregator.rejections.items() if n > rejected.get(r, 0)}
        latest = await store.latest()
        assert latest is not None
        weights = (await store.weights(latest))["dec.weight"]
        running = not serving.done()
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await aggregator.stop()
        await nc.close()
    report = (await asyncio.wait_for(run, STEP_TIMEOUT_S)).report
    expected = SWAP_MODEL["dec.weight"] + len(kinds) * np.float32(np.float16(SWAP_STEP))
    exact = bool(np.allclose(weights, expected, rtol=0, atol=1e-6))
    finite = bool(np.isfinite(weights).all())
    words, numbers = _against(baseline, report, site.region)
    return [
        _row("(baseline: the well-behaved phone alone)", "", baseline, p95_ms=_p95(baseline, site.region)),
        _row(
            "a worker rewrites its delta after the aggregator checked it (NaN, x1000, another shape; a round "
            "each), then replays the consumed references",
            f"v{latest.version}: finite {finite}, the model plus the honest steps only {exact}, norm "
            f"{float(np.linalg.norm(weights)):.2f} (model 64); swaps dropped {aggregator.drops}, "
            f"{len(consumed)} replays rejected {replays}; contributors {latest.contributors}; aggregator "
            f"running {running}; {words}",
            report,
            drops=aggregator.drops,
            replays_rejected=replays,
            sessions_after=len(site.gateway.sessions),
            **numbers,
        ),
    ]


async def _holds(aggregator: Aggregator, object_name: str) -> bool:
    return any(object_name.encode() in data for data in aggregator.state.accepted)


async def _published(store: ModelStore, version: int) -> bool:
    return (await store.latest_number() or 0) >= version


async def _rejected(aggregator: Aggregator, count: int) -> bool:
    return sum(aggregator.rejections.values()) >= count


async def _raw(site: Site, source: str, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TCP connection to the site's gateway from the loopback address ``source``, having sent ``data``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", site.gateway.port, local_addr=(source, 0))
    writer.write(data)
    await writer.drain()
    return reader, writer


async def _slow_offers_and_idle_connections(site: Site, stop: asyncio.Event) -> tuple[str, dict[str, Any]]:
    raw = [
        await _raw(site, f"127.0.1.{a + 1}", slow_offer_head(site.gateway.port))
        for a in range(SLOW_ADDRESSES)
        for _ in range(SLOW_OFFERS_PER_ADDRESS)
    ]
    idle = [
        await _raw(site, f"127.0.2.{i // 64 + 1}", b"" if i % 2 else b"GET / HTTP/1.1\r\nX: ")
        for i in range(IDLE_CONNECTIONS)
    ]
    start = time.monotonic()
    answers = await asyncio.gather(*(asyncio.wait_for(r.read(), STEP_TIMEOUT_S) for r, _ in raw + idle))
    closed_s = time.monotonic() - start
    for _, writer in raw + idle:
        writer.close()
    await stop.wait()
    slow = [a[:12].decode(errors="replace") for a in answers[: len(raw)]]
    fault = (
        f"{SLOW_OFFERS_PER_ADDRESS} slow offers from each of {SLOW_ADDRESSES} addresses, {IDLE_CONNECTIONS} idle and "
        "partial-header connections"
    )
    return fault, {
        "slow_408": sum(a.endswith("408") for a in slow),
        "connections_closed_s": round(closed_s, 3),
        "what": f"slow offers answered 408 x{sum(a.endswith('408') for a in slow)}, every connection closed by the "
        f"gateway {closed_s:.1f} s after the attack began",
    }


async def _sdp_bombs(site: Site, stop: asyncio.Event) -> tuple[str, dict[str, Any]]:
    sdp = await unanswered_offer_sdp()
    style = base64.b64encode(encode_jpeg(default_style_photo())).decode()
    bodies = [json.dumps({"type": "offer", "sdp": b, "style": style}) for b in sdp_bombs(sdp).values()]
    statuses: list[int] = []
    worst_livez = 0.0
    connector = aiohttp.TCPConnector(local_addr=("127.0.3.1", 0))
    async with aiohttp.ClientSession(connector=connector) as http, aiohttp.ClientSession() as probe:

        async def livez() -> None:
            nonlocal worst_livez
            while not stop.is_set():
                start = time.monotonic()
                async with probe.get(f"{site.gateway.url}/livez") as response:
                    await response.read()
                worst_livez = max(worst_livez, time.monotonic() - start)
                await asyncio.sleep(0.05)

        prober = asyncio.create_task(livez())
        while not stop.is_set():
            for body in bodies:
                async with http.post(f"{site.gateway.url}/offer", data=body) as response:
                    statuses.append(response.status)
        await prober
    counts = {str(s): statuses.count(s) for s in sorted(set(statuses))}
    return "SDP bombs in a loop (20,000 rtpmap/fmtp lines, 50,000 a=ssrc lines, 1,000 m-sections)", {
        "livez_worst_s": round(worst_livez, 3),
        "what": f"answers {counts}; /livez answered within {worst_livez:.3f} s throughout",
    }


async def _candidate_flood(site: Site, stop: asyncio.Event) -> tuple[str, dict[str, Any]]:
    sdp = await unanswered_offer_sdp()
    style = base64.b64encode(encode_jpeg(default_style_photo())).decode()
    targets = await StunTargets().open(LISTENING_CANDIDATES)
    statuses = []
    try:
        flood = targets.ports + list(range(40_000, 40_000 + FLOOD_CANDIDATES - LISTENING_CANDIDATES))
        async with aiohttp.ClientSession() as http:
            for ports in (flood, targets.ports):  # the 2,000; then as many as fit the SDP's line limit
                candidates = [f"127.0.0.1 {p}" for p in ports]
                body = json.dumps({"type": "offer", "sdp": with_candidates(sdp, candidates), "style": style})
                async with http.post(f"{site.gateway.url}/offer", data=body) as response:
                    statuses.append(response.status)
        await stop.wait()
    finally:
        targets.close()
    return f"offers with {FLOOD_CANDIDATES} and {LISTENING_CANDIDATES} remote candidates on loopback", {
        "ports_probed": len(targets.probed),
        "what": f"HTTP {statuses[0]} and {statuses[1]}; the gateway sent STUN to {len(targets.probed)} of the "
        f"{LISTENING_CANDIDATES} listening ports (at most {MAX_REMOTE_CANDIDATES})",
    }


def _noise_style(seed: int) -> str:
    """A distinct noise photo of ``STYLE_FLOOD_SIDE`` px (~7.5 MB as JPEG), base64."""
    noise = np.random.default_rng(seed).integers(0, 256, (STYLE_FLOOD_SIDE, STYLE_FLOOD_SIDE, 3), dtype=np.uint8)
    return base64.b64encode(encode_jpeg(noise, quality=95)).decode()


async def _style_flood(site: Site, stop: asyncio.Event) -> tuple[str, dict[str, Any]]:
    sdp = await unanswered_offer_sdp()
    nc = await nats.connect(site.server.url)
    try:
        js = nc.jetstream()
        before = (await js.stream_info(f"OBJ_{STYLE_BUCKET}")).state.bytes

        async def offer(i: int) -> int:
            connector = aiohttp.TCPConnector(local_addr=(f"127.0.4.{i % STYLE_FLOOD_ADDRESSES + 1}", 0))
            body = json.dumps({"type": "offer", "sdp": sdp, "style": site.flood_styles[i]})
            async with aiohttp.ClientSession(connector=connector) as http:
                async with http.post(f"{site.gateway.url}/offer", data=body) as response:
                    return response.status

        start = time.monotonic()
        statuses = await asyncio.gather(*(offer(i) for i in range(len(site.flood_styles))))
        seconds = time.monotonic() - start
        added_mb = ((await js.stream_info(f"OBJ_{STYLE_BUCKET}")).state.bytes - before) / 1e6
    finally:
        await nc.close()
    await stop.wait()
    upload_mb = sum(len(s) * 3 / 4 for s in site.flood_styles) / 1e6
    counts = {str(s): statuses.count(s) for s in sorted(set(statuses))}
    return (
        f"{len(statuses)} offers of distinct {upload_mb / len(statuses):.1f} MB styles "
        f"from {STYLE_FLOOD_ADDRESSES} addresses",
        {
            "bucket_added_mb": round(added_mb, 1),
            "what": f"answers {counts} in {seconds:.1f} s; {upload_mb:.0f} MB uploaded, the style bucket grew "
            f"{added_mb:.1f} MB (styles re-encoded; quota per address)",
        },
    )


async def _session_churn(site: Site, stop: asyncio.Event) -> tuple[str, dict[str, Any]]:
    """Sessions offered and closed by the gateway, one after another from :data:`CHURN_ADDRESSES` addresses, until
    ``stop``; the gateway's tasks and this process's RSS once they are all gone, against before."""
    sdp = await unanswered_offer_sdp()
    body = json.dumps(
        {"type": "offer", "sdp": sdp, "style": base64.b64encode(encode_jpeg(default_style_photo())).decode()}
    )
    tasks_before, rss_before = len(asyncio.all_tasks()), rss_mb()
    statuses: list[int] = []
    clients = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(f"127.0.5.{a + 1}", 0), force_close=True))
        for a in range(CHURN_ADDRESSES)
    ]
    try:
        while not stop.is_set():
            async with clients[len(statuses) % CHURN_ADDRESSES].post(f"{site.gateway.url}/offer", data=body) as r:
                statuses.append(r.status)
                answer = await r.json() if r.status == 200 else {}
            if "stream_id" in answer:
                await site.gateway.sessions[answer["stream_id"]].close("churn")
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    await _until(_no_sessions, site)
    tasks_after = len(asyncio.all_tasks())
    counts = {str(s): statuses.count(s) for s in sorted(set(statuses))}
    return f"sessions offered and closed in a loop from {CHURN_ADDRESSES} addresses", {
        "sessions_churned": statuses.count(200),
        "tasks_added": tasks_after - tasks_before,
        "rss_added_mb": round(rss_mb() - rss_before, 1),
        "what": f"answers {counts}; once closed: {tasks_after - tasks_before:+d} tasks, RSS "
        f"{rss_mb() - rss_before:+.1f} MB against before the churn",
    }


async def _no_sessions(site: Site) -> bool:
    return not site.gateway.sessions


Attack = Callable[[Site, asyncio.Event], Coroutine[Any, Any, tuple[str, dict[str, Any]]]]


async def signaling_attacks(site: Site) -> list[dict[str, Any]]:
    """Issue 22's signaling and storage attacks, each beside a well-behaved phone that offers once the attack is
    under way; first that phone alone (the baseline its keys and round-trip p95 are compared with)."""
    loop = asyncio.get_running_loop()
    styles = (loop.run_in_executor(None, _noise_style, seed) for seed in range(STYLE_FLOOD_OFFERS))
    site.flood_styles = list(await asyncio.gather(*styles))
    baseline = (await asyncio.wait_for(site.phone(ATTACK_SECONDS).run(), STEP_TIMEOUT_S)).report
    rows = [_row("(baseline: the well-behaved phone alone)", "", baseline, p95_ms=_p95(baseline, site.region))]
    attacks: list[Attack] = [
        _slow_offers_and_idle_connections,
        _sdp_bombs,
        _candidate_flood,
        _style_flood,
        _session_churn,
    ]
    for attack in attacks:
        stop = asyncio.Event()
        running = asyncio.create_task(attack(site, stop))
        await asyncio.sleep(0.5)  # the attack is under way when the phone offers
        report = (await asyncio.wait_for(site.phone(ATTACK_SECONDS).run(), STEP_TIMEOUT_S)).report
        stop.set()
        fault, numbers = await asyncio.wait_for(running, STEP_TIMEOUT_S)
        words, judged = _against(baseline, report, site.region)
        what = numbers.pop("what")
        rows.append(_row(fault, f"{what}; {words}", report, **judged, **numbers))
    return rows


def _hub_step(fault: Callable[[], Awaitable[dict[str, Any]]]) -> Callable[[Site], Awaitable[dict[str, Any]]]:
    """A hub fault of :mod:`bench.chaos_hub` (its own three-server hub: the site is unused) as a row."""

    async def step(site: Site) -> dict[str, Any]:
        del site
        found = await fault()
        return _row(found.pop("fault"), found.pop("survived"), found.pop("report"), **found)

    return step


STEPS: dict[str, tuple[dict[str, object], Callable[[Site], Awaitable[Any]]]] = {
    "bombs": ({}, bombs_and_echoes),
    "flood": (
        {
            "max_sessions": FLOOD_CAP,
            "max_pending_per_address": FLOOD_OFFERS,
            "offer_burst_per_address": FLOOD_OFFERS,
            "connect_timeout_s": FLOOD_CONNECT_TIMEOUT_S,
        },
        offer_flood,
    ),
    "gateway-restart": ({}, gateway_restart),
    "gateway-kill": ({}, gateway_kill),
    "nats-outage": ({}, nats_outage),
    "crowd": ({"max_pending_per_address": CROWD_PHONES}, phone_crowd),
    "cross-region": ({}, cross_region),
    "phone-attacks": ({}, phone_attacks),
    "delta-swap": ({}, delta_swap),
    "signaling": ({"max_sessions": STYLE_FLOOD_OFFERS + 4}, signaling_attacks),
    "hub-mid-round": ({}, _hub_step(kill_mid_round)),
    "hub-style-upload": ({}, _hub_step(kill_during_style_upload)),
    "hub-meta-leader": ({}, _hub_step(kill_meta_leader)),
}
"""The campaign's steps by name (``--only``), in order."""


async def campaign(only: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every fault (or those named in ``only``), one after another, each on a fresh site."""
    rows: list[dict[str, Any]] = []
    for name, (settings, step) in STEPS.items():
        if only and name not in only:
            continue
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
        "# Chaos campaign (issues 14 and 22)",
        "",
        f"`python -m bench.chaos` at commit {m['commit']} on {m['cpus']} CPUs (load {m['load_avg_1m']}), "
        f"{data['seconds']} s. Loopback only: nats-server, an in-process worker (colour transfer) and gateway, "
        "aiortc phones. RSS is this one process's, all services included.",
        "",
        *table(COLUMNS, [[row.get(c) for c in COLUMNS] for row in data["rows"]]),
    ]
    return "\n".join(lines) + "\n"


README_COLUMNS = (
    "fault",
    "frames out / captured",
    "keys ok / failed",
    "recovery (s)",
    "p95 (ms)",
    "p95 vs alone",
    "target",
)


def _pair(row: dict[str, Any], first: str, second: str) -> str:
    return "" if row.get(first) is None else f"{row[first]} / {row.get(second, '')}"


def readme_table(data: dict[str, Any]) -> str:
    """The README's "Under fault" table of a campaign's results: its figures only (what each row survived, in words,
    is in ``chaos.md``); p95 is the well-behaved phone's key round trip, and the target that of issue 22, item 8."""
    rows = [
        [
            row["fault"],
            _pair(row, "frames_out", "frames_captured"),
            _pair(row, "keys_ok", "keys_failed"),
            row.get("recovery_s"),
            row.get("p95_ms"),
            None if row.get("p95_ratio") is None else f"x{row['p95_ratio']}",
            {True: "met", False: "MISSED"}.get(row.get("target_met"), ""),
        ]
        for row in data["rows"]
    ]
    return "\n".join(table(README_COLUMNS, rows)) + "\n"


async def _main(out: Path | None, only: Sequence[str]) -> None:
    start = time.monotonic()
    rows = await campaign(only)
    data = {"machine": machine(), "seconds": round(time.monotonic() - start, 1), "rows": rows}
    json_path, md_path = write_results("chaos", data, markdown(data), *([out] if out else []))
    print(markdown(data))
    print(f"wrote {json_path} and {md_path}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    p.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        choices=list(STEPS),
        help="run only this step (repeatable; the results file then holds only its rows)",
    )
    args = p.parse_args(argv)
    run_main(_main(args.out, args.only))


if __name__ == "__main__":
    main()
