"""Latency per region, as a user and an operator see it: the paper's Table 5 on emulated regions
(``python -m bench.regions``).

Everything runs on this machine with the real parts, as ``mvs local`` runs them: a NATS hub (the cloud) and a
leaf node for the edge site, behind an emulated edge-to-cloud backhaul (:mod:`deploy.backhaul`); per site a
stylizer worker process and a gateway; simulated phones over WebRTC behind an emulated link
(:mod:`mobile_sim.link_shim`) whose profile stands for the user's distance to that site (:data:`SITES`). Per site:

- Table 5: the time to send one key frame from the phone to the site (capture -> decoded at the site's
  gateway) at 512x256, 768x384, 1024x512 and 1920x1080, and the whole key round trip at each size;
- the key round trip split into uplink / queue / inference / downlink (p50/p95/p99) at 640x360, K=5, with the
  frame result and with the coefficient result (``--render affine``);
- overflow: mid-run the edge site's workers are killed; its keys go to the hub's workers for the region (cloud
  overflow); the latency step, and that no key is lost beyond those in flight at the kill.

Writes ``bench/results/regions.{json,md,png}``; prints the per-region table at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, table, write_results
from deploy.local_deployment import LocalConfig, LocalDeployment
from deploy.nats_auth import gateway_user, worker_user
from deploy.nats_servers import HUB_DOMAIN
from deploy.regions import Region
from deploy.worker_site import LOCAL_WORKER, WorkerSite
from edge_worker.service import WorkerConfig
from mobile_sim.client import Phone, PhoneConfig
from mobile_sim.link_shim import LinkProfile
from mobile_sim.report import LATENCY_PARTS, summarize
from streaming.ice import LOOPBACK
from streaming.runtime import run_main

log = logging.getLogger(__name__)
NS_PER_MS = 1e6
PHONE_RESULT_TIMEOUT_MS = 10_000.0
"""A key with no result after this counts as failed on the phone (the gateway's own deadline stays 2 s)."""


@dataclass(frozen=True)
class Site:
    """A place that serves phones, and the network between it and the user the bench emulates."""

    name: str
    """The region's name (subjects, metrics labels)."""
    stands_for: str
    nats: str
    """``leaf``: an edge site with its own leaf node; ``hub``: served from the cloud hub."""
    link: LinkProfile
    source: str
    """Where the link's numbers come from."""


PAPER_1080P_UPLOAD_S = {"edge": 0.031, "cloud-us": 0.318, "cloud-asia": 0.925}
"""The paper's Table 5: seconds to upload one 1920x1080 key frame from Boston to New York (edge), Los Angeles and
Hong Kong (cloud)."""
PAPER_KEY_BYTES = 300_000
"""Size assumed for the paper's 1080p key (a JPEG at quality ~90) to turn its Table 5 into a bandwidth."""


def _paper_kbps(site: str, delay_ms: float) -> float:
    """The bandwidth that makes the paper's 1080p upload time: (time - one-way delay) carries a 300 KB key."""
    return round(PAPER_KEY_BYTES * 8 / (PAPER_1080P_UPLOAD_S[site] - delay_ms / 1000.0) / 1000.0, -2)


SITES = (
    Site(
        "edge",
        "edge site in New York, user in Boston",
        "leaf",
        LinkProfile(delay_ms=4.0, kbps=_paper_kbps("edge", 4.0), loss=0.0),
        "one-way delay: half the ~8 ms Boston-New York RTT of public inter-city ping tables (e.g. WonderNetwork); "
        "bandwidth: the paper's Table 5 (0.031 s for a 1080p key) for a 300 KB key; loss: none (metro path)",
    ),
    Site(
        "cloud-us",
        "same-continent cloud in Los Angeles",
        "hub",
        LinkProfile(delay_ms=36.0, kbps=_paper_kbps("cloud-us", 36.0), loss=0.001),
        "one-way delay: half the ~72 ms Boston-Los Angeles RTT of public ping tables; bandwidth: the paper's "
        "0.318 s for a 300 KB 1080p key; loss: 0.1 % (a cross-country path)",
    ),
    Site(
        "cloud-asia",
        "intercontinental cloud in Hong Kong",
        "hub",
        LinkProfile(delay_ms=110.0, kbps=_paper_kbps("cloud-asia", 110.0), loss=0.005),
        "one-way delay: half the ~220 ms Boston-Hong Kong RTT of public ping tables; bandwidth: the paper's "
        "0.925 s for a 300 KB 1080p key; loss: 0.5 % (a trans-Pacific path)",
    ),
)
BACKHAUL_DELAY_MS = 33.0
"""Edge (New York) to cloud hub one-way delay: half the ~66 ms New York-Los Angeles RTT; overflow keys pay it twice."""
TABLE5_SIZES = ((512, 256), (768, 384), (1024, 512), (1920, 1080))
SPLIT_SIZE = (640, 360)
KEY_INTERVAL = 5
RENDERS = {"frame": "warp", "coefficients": "affine"}
"""Result kind -> the phone's render that asks for it."""
TARGET_EDGE_SPEEDUP = 5.0
"""Edge round trip p50 at least this many times lower than the intercontinental site's, 1920x1080 frames."""
TARGET_DOWNLINK_SAVING = 3.0
"""Intercontinental downlink p50 with coefficients at least this many times lower than with frames."""


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    sites: tuple[Site, ...] = SITES
    table5_sizes: tuple[tuple[int, int], ...] = TABLE5_SIZES
    table5_frames: int = 60
    table5_key_interval: int = 10
    """Table 5 keys are far apart (a third of a second at 30 fps) so that each travels alone, as the paper's upload."""
    split_frames: int = 300
    split_size: tuple[int, int] = SPLIT_SIZE
    fps: float = 30.0
    overflow_frames: int = 300
    overflow_stop_at: float = 0.4
    """Share of the overflow run after which the edge site's workers are killed."""
    backhaul_delay_ms: float = BACKHAUL_DELAY_MS
    model: str = "color-transfer"

    def worker(self) -> WorkerConfig:
        """The settings of every worker of the run."""
        return replace(LOCAL_WORKER, model=self.model)


QUICK = Plan(
    sites=(SITES[0], SITES[2]),
    table5_sizes=((320, 180),),
    table5_frames=20,
    split_frames=30,
    split_size=(320, 180),
    overflow_frames=60,
)
"""Two sites, a few frames: the tests' configuration."""


@dataclass
class Run:
    """One phone run's numbers."""

    report: dict[str, Any]
    round_trips_ms: list[float]
    keys: list[dict[str, Any]] = field(default_factory=list)
    """Per key: frame id, capture time (s from the run's start), ok, worker, round trip (ms)."""


class Bench:
    """The deployment of :data:`SITES` and the phone runs against it."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        regions = [Region(s.name, nats=s.nats, workers=1, link=s.link) for s in plan.sites]
        self.deployment = LocalDeployment(
            LocalConfig(regions=regions, worker=plan.worker(), backhaul_delay_ms=plan.backhaul_delay_ms)
        )
        self.overflow: WorkerSite | None = None

    async def start(self) -> None:
        """Start the hub, leaves, workers and gateways, and the hub's overflow worker for the edge site."""
        await self.deployment.start()
        edge = self.edge.name
        self.overflow = WorkerSite(
            self.deployment.url(None, worker_user(edge)),
            replace(self.plan.worker(), region=edge, js_domain=HUB_DOMAIN),
            discovery_url=self.deployment.url(None, gateway_user(edge)),
        )
        self.overflow.start_worker(f"{edge}-cloud-0")
        await self.overflow.wait_for_workers()

    async def stop(self) -> None:
        """Stop everything."""
        if self.overflow is not None:
            await asyncio.to_thread(self.overflow.stop)
        await self.deployment.stop()

    @property
    def edge(self) -> Site:
        """The first site with its own leaf node."""
        return next(s for s in self.plan.sites if s.nats == "leaf")

    def restart_edge_workers(self) -> None:
        """Bring the edge site's workers back after an overflow run (same ids)."""
        site = self.deployment.sites[self.edge.name]
        for worker_id in [w for w, p in site.workers.items() if p.returncode is not None]:
            site.start_worker(worker_id)

    def phone(
        self, site: Site, size: tuple[int, int], frames: int, fps: float, key_interval: int, render: str
    ) -> Phone:
        """A phone behind ``site``'s link, for its gateway (:func:`stream` runs it). Plain warping (no occlusion
        fill) and a long result timeout: on a shared 2-core machine the phone's own work at 1080p lags capture,
        and the bench measures the network and the site, not the phone's CPU."""
        config = PhoneConfig(
            fill_occlusions=False,
            result_timeout_ms=PHONE_RESULT_TIMEOUT_MS,
            gateway_urls=(self.deployment.gateways[site.name].url,),
            region=site.name,
            link=site.link,
            ice_hosts=LOOPBACK,
            size=size,
            frames=frames,
            fps=fps,
            key_interval=key_interval,
            render=render,  # type: ignore[arg-type]
        )
        return Phone(config)


async def stream(phone: Phone) -> Run:
    """Run ``phone`` to the end; its report and each key's capture time, worker and round trip (a run that
    fails, e.g. a phone that cannot output every frame in time, is recorded as its error)."""
    try:
        report = (await phone.run()).report
    except (TimeoutError, asyncio.TimeoutError, ConnectionError) as exc:
        log.warning("phone run failed", extra={"region": phone.config.region, "error": repr(exc)})
        return Run({"error": repr(exc) or type(exc).__name__}, [])
    start_ns = min(f.capture_ns for f in phone.frames.values())
    keys = []
    for key in report["per_key"]:
        latency = key["latency_ms"]
        keys.append(
            {
                "frame_id": key["frame_id"],
                "capture_s": (phone.frames[key["frame_id"]].capture_ns - start_ns) / 1e9,
                "ok": key["ok"],
                "error_code": key["error_code"],
                "worker_id": key["worker_id"],
                "round_trip_ms": latency["round_trip"] if latency else None,
            }
        )
    trips = [k["round_trip_ms"] for k in keys if k["round_trip_ms"] is not None]
    return Run(report, trips, keys)


def _row(run: Run, region: str) -> dict[str, Any]:
    report = run.report
    if "error" in report:
        return {
            "error": report["error"],
            "keys_ok": 0,
            "keys_marked": 0,
            "failures": {},
            "workers": [],
            "downlink_bytes_per_key": 0,
            "latency_ms": {part: {} for part in LATENCY_PARTS},
            "round_trips_ms": [],
            "link": {},
        }
    keys = report["key_frames"]
    return {
        "keys_ok": keys["ok"],
        "keys_marked": keys["marked"],
        "failures": keys["failures_by_code"],
        "workers": keys["workers"],
        "downlink_bytes_per_key": keys["downlink_bytes"] // max(1, keys["ok"]),
        "latency_ms": report["latency_ms"][region],
        "round_trips_ms": [round(v, 2) for v in run.round_trips_ms],
        "link": report["network"]["link"],
    }


async def table5(bench: Bench) -> dict[str, list[dict[str, Any]]]:
    """Per site, per size: uplink (Table 5) and round trip of keys travelling alone."""
    plan = bench.plan
    out: dict[str, list[dict[str, Any]]] = {}
    for site in plan.sites:
        out[site.name] = []
        for size in plan.table5_sizes:
            run = await stream(bench.phone(site, size, plan.table5_frames, plan.fps, plan.table5_key_interval, "warp"))
            out[site.name].append({"size": list(size), **_row(run, site.name)})
    return out


async def split(bench: Bench) -> dict[str, dict[str, dict[str, Any]]]:
    """Per site, per result kind: the round trip split at 640x360, K=5."""
    plan = bench.plan
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for site in plan.sites:
        out[site.name] = {}
        for kind, render in RENDERS.items():
            run = await stream(bench.phone(site, plan.split_size, plan.split_frames, plan.fps, KEY_INTERVAL, render))
            out[site.name][kind] = _row(run, site.name)
    return out


async def overflow(bench: Bench) -> dict[str, Any]:
    """Kill the edge site's workers mid-run; the hub's worker for the region takes its keys."""
    plan, site = bench.plan, bench.edge
    workers = bench.deployment.sites[site.name].workers
    phone = bench.phone(site, plan.split_size, plan.overflow_frames, plan.fps, KEY_INTERVAL, "warp")

    async def kill() -> int:
        while not phone.frames:  # the run starts once the phone is connected
            await asyncio.sleep(0.01)
        await asyncio.sleep(plan.overflow_frames / plan.fps * plan.overflow_stop_at)
        killed_ns = time.monotonic_ns()
        for proc in workers.values():
            proc.kill()  # a crash: the request in hand gets no reply (a SIGTERM would shed it for a retry); reaped
        return killed_ns

    killer = asyncio.create_task(kill())
    run = await stream(phone)
    killed_ns = await killer
    bench.restart_edge_workers()
    await bench.deployment.sites[site.name].wait_for_workers()
    kill_s = (killed_ns - min(f.capture_ns for f in phone.frames.values())) / 1e9
    before = [k for k in run.keys if k["capture_s"] <= kill_s]
    after = [k for k in run.keys if k["capture_s"] > kill_s]
    # In flight at the kill: captured before it, and not yet back (failed, or decoded after it).
    in_flight = [
        k for k in before if k["round_trip_ms"] is None or k["capture_s"] + k["round_trip_ms"] / 1000.0 > kill_s
    ]
    settled_before = [k for k in before if k not in in_flight]

    def outcome(keys: list[dict[str, Any]]) -> dict[str, Any]:
        trips = summarize([k["round_trip_ms"] for k in keys if k["round_trip_ms"] is not None])
        return {"keys": len(keys), "ok": sum(k["ok"] for k in keys), "round_trip_ms": trips}

    return {
        "site": site.name,
        "kill_s": round(kill_s, 3),
        "backhaul_delay_ms": plan.backhaul_delay_ms,
        "keys": run.keys,
        "before": outcome(settled_before),
        "in_flight": outcome(in_flight),
        "after": outcome(after),
        "workers_before": sorted({k["worker_id"] for k in settled_before if k["worker_id"]}),
        "workers_after": sorted({k["worker_id"] for k in after if k["worker_id"]}),
        "lost_beyond_in_flight": sum(not k["ok"] for k in after) + sum(not k["ok"] for k in settled_before),
    }


async def measure(plan: Plan) -> dict[str, Any]:
    """Everything, against one deployment."""
    bench = Bench(plan)
    await bench.start()
    try:
        return {
            "table5": await table5(bench),
            "split": await split(bench),
            "overflow": await overflow(bench),
        }
    finally:
        await bench.stop()


def _p50(latency: dict[str, dict[str, float]], part: str) -> float:
    return latency[part].get("p50", float("nan"))


def targets(data: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, measured: edge vs intercontinental round trip at the largest size; downlink saving."""
    names = [s["name"] for s in data["sites"]]
    edge, far = names[0], names[-1]
    big_edge, big_far = data["table5"][edge][-1], data["table5"][far][-1]
    speedup = _p50(big_far["latency_ms"], "round_trip") / _p50(big_edge["latency_ms"], "round_trip")
    uplink_speedup = _p50(big_far["latency_ms"], "uplink") / _p50(big_edge["latency_ms"], "uplink")
    frame, coeff = data["split"][far]["frame"]["latency_ms"], data["split"][far]["coefficients"]["latency_ms"]
    saving = _p50(frame, "downlink") / _p50(coeff, "downlink")
    one_way = next(s["link"]["delay_ms"] for s in data["sites"] if s["name"] == far)
    transfer_saving = (_p50(frame, "downlink") - one_way) / max(1e-3, _p50(coeff, "downlink") - one_way)
    return {
        "size": big_edge["size"],
        "edge_speedup_round_trip_p50": round(speedup, 2),
        "edge_speedup_uplink_p50": round(uplink_speedup, 2),
        "edge_speedup_met": speedup >= TARGET_EDGE_SPEEDUP,
        "downlink_saving_p50": round(saving, 2),
        "downlink_saving_beyond_propagation_p50": round(transfer_saving, 2),
        "downlink_saving_met": saving >= TARGET_DOWNLINK_SAVING,
    }


def _ms(stats: dict[str, float], key: str = "p50") -> str:
    return f"{stats[key]:.0f}" if key in stats else "-"


def _pct(stats: dict[str, float]) -> str:
    return " / ".join(_ms(stats, k) for k in ("p50", "p95", "p99"))


def region_table(data: dict[str, Any]) -> list[str]:
    """The per-region table: keys and round trip at 640x360 K=5 by result kind."""
    rows = [
        [site["name"], site["stands_for"], kind, f"{row['keys_ok']}/{row['keys_marked']}"]
        + [_pct(row["latency_ms"]["round_trip"]), row["downlink_bytes_per_key"]]
        for site in data["sites"]
        for kind, row in data["split"][site["name"]].items()
    ]
    header = ["region", "stands for", "result", "keys ok/marked", "round trip p50 / p95 / p99 (ms)", "downlink B/key"]
    return table(header, rows)


def markdown(data: dict[str, Any]) -> str:
    """The results as Markdown."""
    m, plan = data["machine"], data["plan"]
    sites = data["sites"]
    lines = [
        "# Latency per region (the paper's Table 5 on emulated regions)",
        "",
        f"{m['when']}, commit {m['commit']}, {m['cpus']} CPUs, load {m['load_avg_1m']} at start. All on this one "
        f"machine: NATS hub + a leaf node for the edge site (backhaul {plan['backhaul_delay_ms']:g} ms one-way, "
        f"emulated), per site one `{plan['model']}` worker process and a gateway, phones over WebRTC behind an "
        "emulated link (`mobile_sim.link_shim`: delay, bandwidth and loss on every datagram, both ways).",
        "",
        "## Sites",
        "",
    ]
    rows = [
        [s["name"], s["stands_for"], s["nats"], f"{s['link']['delay_ms']:g}", f"{s['link']['kbps']:g}"]
        + [f"{s['link']['loss']:.1%}", s["source"]]
        for s in sites
    ]
    header = ["site", "stands for", "NATS", "one-way delay (ms)", "bandwidth (kbit/s)", "loss"]
    lines += table(header + ["where the numbers come from"], rows)
    lines += [
        "",
        f"## Table 5: sending one key frame to the site (p50, ms; {plan['fps']:g} fps, a key every "
        f"{plan['table5_key_interval']} frames, {plan['table5_frames']} frames per size)",
        "",
        "Uplink: capture on the phone -> decoded at the site's gateway (VP8 over WebRTC, as the system sends it); "
        "round trip: -> the stylized key decoded on the phone.",
        "",
    ]
    rows = []
    for i, size in enumerate(plan["table5_sizes"]):
        cells = [f"{size[0]}x{size[1]}"]
        for s in sites:
            row = data["table5"][s["name"]][i]
            ok = f" ({row['keys_ok']}/{row['keys_marked']})" if row["keys_ok"] < row["keys_marked"] else ""
            cells += [_ms(row["latency_ms"]["uplink"]), _ms(row["latency_ms"]["round_trip"]) + ok]
        rows.append(cells)
    paper = [f"{PAPER_1080P_UPLOAD_S[s['name']] * 1000:.0f}" for s in sites if s["name"] in PAPER_1080P_UPLOAD_S]
    if len(paper) == len(sites):
        rows.append(["paper, 1920x1080 upload"] + [cell for p in paper for cell in (p, "-")])
    lines += table(["size"] + [f"{s['name']} {what}" for s in sites for what in ("uplink", "round trip")], rows)
    size = plan["split_size"]
    lines += [
        "",
        f"## Key round trip split at {size[0]}x{size[1]}, K={KEY_INTERVAL}, {plan['fps']:g} fps, "
        f"{plan['split_frames']} frames (ms, p50 / p95 / p99)",
        "",
    ]
    rows = [
        [s["name"], kind, *(_pct(row["latency_ms"][p]) for p in LATENCY_PARTS), row["downlink_bytes_per_key"]]
        for s in sites
        for kind, row in data["split"][s["name"]].items()
    ]
    lines += table(["site", "result", *LATENCY_PARTS, "downlink B/key"], rows)
    o = data["overflow"]
    lines += [
        "",
        f"## Overflow: the {o['site']} site's workers killed {o['kill_s']:.1f} s into a "
        f"{plan['overflow_frames']}-frame run",
        "",
        f"The hub's worker for region `{o['site']}` takes over (requests cross the backhaul, "
        f"{o['backhaul_delay_ms']:g} ms each way). Keys in flight at the kill get no reply: the gateway's first "
        "attempt times out and its retry reaches the hub's worker.",
        "",
        *table(
            ["keys", "served by", "keys ok/total", "round trip p50 / p95 / p99 (ms)"],
            [
                [label, workers, f"{o[key]['ok']}/{o[key]['keys']}", _pct(o[key]["round_trip_ms"])]
                for label, workers, key in (
                    ("settled before the kill", ", ".join(o["workers_before"]) or "-", "before"),
                    ("in flight at the kill", "", "in_flight"),
                    ("captured after the kill", ", ".join(o["workers_after"]) or "-", "after"),
                )
            ],
        ),
        "",
        f"Keys lost beyond those in flight: **{o['lost_beyond_in_flight']}**.",
    ]
    t = data["targets"]
    lines += [
        "",
        "## Targets",
        "",
        f"- Edge round trip p50 at least {TARGET_EDGE_SPEEDUP:g}x lower than the intercontinental site's at "
        f"{t['size'][0]}x{t['size'][1]} frames: **{t['edge_speedup_round_trip_p50']}x** "
        f"({'met' if t['edge_speedup_met'] else 'missed'}); uplink alone: {t['edge_speedup_uplink_p50']}x.",
        f"- Intercontinental downlink p50 with coefficients at least {TARGET_DOWNLINK_SAVING:g}x lower than with "
        f"frames: **{t['downlink_saving_p50']}x** ({'met' if t['downlink_saving_met'] else 'missed'}); beyond the "
        f"one-way propagation delay both pay: {t['downlink_saving_beyond_propagation_p50']}x.",
        "",
        "## Per region",
        "",
        *region_table(data),
    ]
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    """Stacked hop times per site and result kind, CDFs of round trips, and the overflow timeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = [s["name"] for s in data["sites"]]
    fig, (bars, cdf, timeline) = plt.subplots(1, 3, figsize=(16, 4.5))
    labels = [f"{site}\n{kind}" for site in sites for kind in RENDERS]
    rows = [data["split"][site][kind]["latency_ms"] for site in sites for kind in RENDERS]
    bottom = np.zeros(len(rows))
    for part in LATENCY_PARTS[:-1]:
        values = np.array([row[part].get("p50", 0.0) for row in rows])
        bars.bar(labels, values, bottom=bottom, label=part)
        bottom += values
    bars.set_ylabel("key round trip, p50 (ms)")
    bars.set_title("Hop times per site (stacked p50)")
    bars.legend(fontsize="small")
    for site in sites:
        for kind, style in zip(RENDERS, ("-", "--"), strict=True):
            trips = np.sort(data["split"][site][kind]["round_trips_ms"])
            if len(trips):
                cdf.plot(trips, np.arange(1, len(trips) + 1) / len(trips), style, label=f"{site} {kind}")
    cdf.set_xscale("log")
    cdf.set_xlabel("key round trip (ms)")
    cdf.set_ylabel("share of keys")
    cdf.set_title("CDF of key round trips")
    cdf.legend(fontsize="small")
    o = data["overflow"]
    for worker in sorted({k["worker_id"] for k in o["keys"]}):
        keys = [k for k in o["keys"] if k["worker_id"] == worker and k["round_trip_ms"] is not None]
        timeline.plot([k["capture_s"] for k in keys], [k["round_trip_ms"] for k in keys], "o", ms=3, label=worker)
    failed = [k["capture_s"] for k in o["keys"] if not k["ok"]]
    if failed:
        timeline.plot(failed, [0] * len(failed), "x", color="red", label="failed")
    timeline.axvline(o["kill_s"], color="black", ls=":", label="edge workers killed")
    timeline.set_xlabel("capture time (s)")
    timeline.set_ylabel("key round trip (ms)")
    timeline.set_title(f"Overflow at {o['site']}: edge -> cloud workers")
    timeline.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(plan: Plan, out: Path | None = None) -> tuple[dict[str, Any], str]:
    """Measure, write JSON + Markdown + PNG; return the data and the Markdown (ending with the files written)."""
    data: dict[str, Any] = {
        "machine": machine(),
        "plan": {**asdict(replace(plan, sites=())), "sites": [s.name for s in plan.sites]},
        "sites": [{**asdict(s), "link": asdict(s.link)} for s in plan.sites],
    }
    data.update(run_main(measure(plan)))
    data["targets"] = targets(data)
    text = markdown(data)
    json_path, md_path = write_results("regions", data, text, *([out] if out else []))
    plot(data, json_path.with_suffix(".png"))
    return data, f"{text}\nwrote {json_path}, {md_path} and {json_path.with_suffix('.png')}"


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m bench.regions", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="two sites, a few frames (what the tests run)")
    p.add_argument("--split-frames", type=int, default=None, help="frames of each 640x360 run")
    p.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.split_frames:
        plan = replace(plan, split_frames=args.split_frames, overflow_frames=args.split_frames)
    _, text = run(plan, args.out)
    print(text)  # the Markdown holds the per-region table once


if __name__ == "__main__":
    main()
