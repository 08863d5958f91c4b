"""A soak of the local deployment (issue 26): ``python -m bench.soak --minutes N``.

Runs what ``mvs local --federated`` runs (a three-server JetStream hub, a leaf node, the region's stylizer workers as
child processes, the gateway and the aggregator in this process) while phone processes (``mvs phone``) join and
leave back to back, the workers retrain between them and the aggregator publishes rounds, and one hub server is
killed (-9) and restarted every few minutes. Every process's RSS and open fds, the asyncio tasks of the gateway's
and the workers' loops (``mvs_asyncio_tasks``), the gateway's sessions and every hub server's JetStream storage are
sampled (each minute; faster in a short run). The run fails (exit 1, the reasons printed) when a series grows without
bound (:mod:`bench.soak_verdict`: a fitted slope over the last half above the README's threshold), a service process
died, or no phone streamed. JSON + Markdown + PNG (each series) under ``bench/results/`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import machine, publish, table
from bench.soak_verdict import LIMITS, judge
from deploy.local_deployment import LocalConfig, LocalDeployment
from deploy.nats_servers import NatsServer
from deploy.regions import Region
from edge_worker.federated import FederatedConfig
from edge_worker.service import WorkerConfig
from streaming.ice import LOOPBACK
from streaming.runtime import dying_with_parent, run_main
from streaming.telemetry import setup_logging

REGION = "soak"
MODEL = "lite"
"""The cheapest trainable model: the soak is about the system's resources, not the model's speed."""
IDLE_S, PUBLISH_EVERY = 1.0, 8
"""Workers retrain after 1 s without a request and publish a delta every 8 trained key frames: rounds every minute
or so while phones come and go."""
PHONE_FRAMES = 150
"""Each phone streams 10 s (15 fps) and leaves."""
SAMPLES = 40
"""Samples per run (each minute from a 40-minute run on; at least every 5 s)."""
MIN_INTERVAL_S, MAX_INTERVAL_S = 5.0, 60.0
RESTART_EVERY_S = 180.0
"""A hub server is killed and restarted this often (in a short run, three times in all)."""
RESTART_WAIT_S = 60.0
PHONE_TIMEOUT_S = 120.0
NAME = "soak"


@dataclass
class Soak:
    """The deployment, its phones and its hub restarts, and what was sampled."""

    minutes: float
    phones: int
    workers: int
    deployment: LocalDeployment | None = None
    started: float = field(default_factory=time.monotonic)
    series: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``"process/kind"`` -> {"process", "kind", "samples": [[t, value, pid]]}."""
    load: list[list[float]] = field(default_factory=list)
    """[t, 1-minute load average] at each sample."""
    phone_runs: list[dict[str, Any]] = field(default_factory=list)
    restarts: list[dict[str, Any]] = field(default_factory=list)
    deaths: list[str] = field(default_factory=list)
    restarting: set[str] = field(default_factory=set)
    """The hub server being restarted (not sampled, not a death)."""

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0

    def now(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def record(self, process: str, kind: str, value: float, pid: int) -> None:
        key = f"{process}/{kind}"
        entry = self.series.setdefault(key, {"process": process, "kind": kind, "samples": []})
        entry["samples"].append([self.now(), round(value, 2), pid])

    async def run(self) -> None:
        config = LocalConfig(
            regions=[Region(REGION, gateway_port=0, workers=self.workers)],
            worker=WorkerConfig(
                model=MODEL,
                threads=1,
                federated=FederatedConfig(Path("per-worker"), idle_s=IDLE_S, publish_every=PUBLISH_EVERY),
            ),
            federated=True,
        )
        self.deployment = LocalDeployment(config)
        await self.deployment.start()
        self.started = time.monotonic()
        deadline = self.started + self.duration_s
        tasks = [asyncio.create_task(self._phone_slot(i, deadline)) for i in range(self.phones)]
        tasks.append(asyncio.create_task(self._restarts(deadline)))
        try:
            async with aiohttp.ClientSession() as http:
                interval = min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, self.duration_s / SAMPLES))
                while time.monotonic() < deadline:
                    await self._sample(http)
                    await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
                await self._sample(http)
        finally:
            for task in tasks:
                task.cancel()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, Exception):  # a phone slot or the restarts broke (not cancelled)
                    self._died(f"{type(result).__name__}: {result}")
            await self.deployment.stop()

    async def _phone_slot(self, slot: int, deadline: float) -> None:
        """Phones one after another until the deadline: each joins, streams :data:`PHONE_FRAMES` and leaves."""
        assert self.deployment is not None
        url = self.deployment.local_url(REGION)
        while time.monotonic() < deadline:
            out = Path(tempfile.mkdtemp(prefix=f"mvs-soak-phone{slot}-"))
            cmd = [sys.executable, "-m", "mobile_sim", "--gateway", url, "--region", REGION]
            cmd += ["--ice-host", LOOPBACK[0], "--frames", str(PHONE_FRAMES), "--out", str(out)]
            cmd += ["--log-level", "error"]
            began = self.now()
            # subprocess.Popen, not the loop's subprocess support: uvloop's runs Python code in the forked child,
            # which can hang there before exec (streaming.runtime.dying_with_parent says why).
            with (out / "stderr.txt").open("wb") as err:
                proc = subprocess.Popen(dying_with_parent(cmd), stdout=subprocess.DEVNULL, stderr=err)
            try:
                await asyncio.to_thread(proc.wait, PHONE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            run: dict[str, Any] = {"slot": slot, "t": began, "s": round(self.now() - began, 1), "rc": proc.returncode}
            report = out / "report.json"
            if report.is_file():
                data = json.loads(report.read_text())
                run["keys_ok"] = data["key_frames"]["ok"]
                run["keys_failed"] = data["key_frames"].get("failed", 0)
            if proc.returncode != 0:
                run["error"] = (out / "stderr.txt").read_text(errors="replace").strip().splitlines()[-1:]
            self.phone_runs.append(run)
            shutil.rmtree(out, ignore_errors=True)

    async def _restarts(self, deadline: float) -> None:
        """Kill -9 one hub server (the next in turn), wait for a meta leader without it, restart it and wait for
        the cluster to be whole (a meta leader with every peer current)."""
        assert self.deployment is not None and self.deployment.nats is not None
        cluster = self.deployment.nats
        every = min(RESTART_EVERY_S, self.duration_s / 3)
        turn = 0
        while True:
            await asyncio.sleep(max(0.0, min(every, deadline - time.monotonic() - every / 2)))
            if time.monotonic() + every / 2 > deadline:
                return
            victim: NatsServer = cluster.hubs[turn % len(cluster.hubs)]
            turn += 1
            t = self.now()
            self.restarting.add(victim.name)
            victim.kill()
            tic = time.monotonic()
            await asyncio.to_thread(cluster.wait_for_meta_leader, RESTART_WAIT_S)
            down = time.monotonic() - tic
            await asyncio.to_thread(victim.start)
            await asyncio.to_thread(cluster.wait_for_meta_leader, RESTART_WAIT_S)
            self.restarting.discard(victim.name)
            self.restarts.append(
                {"t": t, "server": victim.name, "leader_s": round(down, 2), "whole_s": round(time.monotonic() - tic, 2)}
            )

    async def _sample(self, http: aiohttp.ClientSession) -> None:
        deployment = self.deployment
        assert deployment is not None and deployment.nats is not None
        self.load.append([self.now(), round(os.getloadavg()[0], 2)])
        me = os.getpid()
        self._proc("gateway+aggregator", me)
        self.record("gateway+aggregator", "tasks", len(asyncio.all_tasks()), me)
        gateway = deployment.gateways[REGION]
        self.record("gateway+aggregator", "sessions", len(gateway.sessions), me)
        site = deployment.sites[REGION]
        for worker, proc in site.workers.items():
            if proc.returncode is not None:
                self._died(f"worker {worker} exited with {proc.returncode}")
                continue
            self._proc(worker, proc.pid)
            tasks = await _scrape(http, site.metrics_urls[worker], "mvs_asyncio_tasks")
            if tasks is not None:
                self.record(worker, "tasks", tasks, proc.pid)
        for server in [*deployment.nats.hubs, *deployment.nats.leaves.values()]:
            pid = server.pid
            if pid is None:
                if server.name not in self.restarting:
                    self._died(f"{server.name} exited")
                continue
            self._proc(server.name, pid, "nats_rss_mb")
            if server.monitor_port is not None:
                storage = await _jetstream_storage(http, server)
                if storage is not None:
                    self.record(server.name, "js_storage_mb", storage / 2**20, pid)

    def _proc(self, process: str, pid: int, rss_kind: str = "rss_mb") -> None:
        """RSS (MB, as ``rss_kind``) and open fds of ``pid`` from /proc."""
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return  # it just exited: the next sample says so
        rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        self.record(process, rss_kind, rss / 1024, pid)
        self.record(process, "fds", fds, pid)

    def _died(self, what: str) -> None:
        if what not in self.deaths:
            self.deaths.append(what)

    def results(self) -> dict[str, Any]:
        end = self.now() if self.series else 0.0
        end = max((s[0] for e in self.series.values() for s in e["samples"]), default=end)
        verdicts = {key: judge(e["kind"], [tuple(s) for s in e["samples"]], end) for key, e in self.series.items()}
        growing = sorted(key for key, v in verdicts.items() if v["grows"])
        ok_phones = [r for r in self.phone_runs if r["rc"] == 0 and r.get("keys_ok", 0) > 0]
        reasons = [
            f"{key} grows: {verdicts[key]['rise']:+} {LIMITS[self.series[key]['kind']].unit} over the last half "
            f"(allowed {verdicts[key]['allowed']})"
            for key in growing
        ]
        reasons += self.deaths
        if not ok_phones:
            reasons.append("no phone streamed")
        loads = [v for _, v in self.load]
        return {
            "machine": machine(),
            "config": {
                "minutes": self.minutes,
                "phones": self.phones,
                "workers": self.workers,
                "model": MODEL,
                "worker_args": ["--idle-s", str(IDLE_S), "--publish-every", str(PUBLISH_EVERY)],
                "phone_frames": PHONE_FRAMES,
                "limits": {k: vars(v) for k, v in LIMITS.items()},
            },
            "duration_s": end,
            "load_avg_1m": {"min": min(loads, default=0), "max": max(loads, default=0), "samples": self.load},
            "phones": {
                "runs": len(self.phone_runs),
                "ok": len(ok_phones),
                "keys_ok": sum(r.get("keys_ok", 0) for r in self.phone_runs),
                "keys_failed": sum(r.get("keys_failed", 0) for r in self.phone_runs),
                "failed": [r for r in self.phone_runs if r not in ok_phones],
            },
            "rounds_published": self._versions(),
            "hub_restarts": self.restarts,
            "series": self.series,
            "verdicts": verdicts,
            "passed": not reasons,
            "reasons": reasons,
        }

    def _versions(self) -> int:
        aggregator = self.deployment.aggregator if self.deployment is not None else None
        return aggregator.current.version if aggregator is not None and aggregator.current is not None else 0


async def _scrape(http: aiohttp.ClientSession, url: str, name: str) -> float | None:
    """The value of an unlabelled Prometheus series at ``url`` (None if unreachable or absent)."""
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
            for line in (await response.text()).splitlines():
                if line.startswith(f"{name} "):
                    return float(line.split()[1])
    return None


async def _jetstream_storage(http: aiohttp.ClientSession, server: NatsServer) -> float | None:
    """Bytes of JetStream file and memory storage on ``server`` (its ``/jsz``)."""
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
        async with http.get(f"{server.monitor_url}/jsz", timeout=aiohttp.ClientTimeout(total=10)) as response:
            jsz = await response.json(content_type=None)
            return float(jsz["storage"]) + float(jsz["memory"])
    return None


def markdown(data: dict[str, Any]) -> str:
    """The verdict, the run's conditions and a row per series."""
    m, c, p = data["machine"], data["config"], data["phones"]
    verdict = "PASSED" if data["passed"] else "FAILED: " + "; ".join(data["reasons"])
    lines = [
        f"# Soak ({c['minutes']:g} min): {verdict}",
        "",
        f"Commit {m['commit']}, {m['cpus']} CPUs, load average {data['load_avg_1m']['min']}-"
        f"{data['load_avg_1m']['max']} (1 min) during the run, {m['when']}.",
        f"{c['workers']} {c['model']} worker(s) retraining, {c['phones']} phone(s) at a time ({c['phone_frames']} "
        f"frames each, back to back): {p['runs']} phone runs, {p['ok']} streamed, {p['keys_ok']} keys ok, "
        f"{p['keys_failed']} failed; {data['rounds_published']} federated versions published; "
        f"{len(data['hub_restarts'])} hub server restarts (kill -9), meta leader back in "
        + ", ".join(f"{r['leader_s']} s" for r in data["hub_restarts"])
        + ".",
        "",
    ]
    rows = []
    for key, entry in sorted(data["series"].items()):
        values = [s[1] for s in entry["samples"]]
        v = data["verdicts"][key]
        word = "n/a" if v["grows"] is None else ("GROWS" if v["grows"] else "bounded")
        rise = None if v["rise"] is None else f"{v['rise']:+}"
        extremes = [f"{values[0]:g}", f"{values[-1]:g}", f"{max(values):g}"]
        rows.append([entry["process"], entry["kind"], *extremes, rise, v["allowed"], word])
    header = ["process", "series", "first", "last", "max", "fitted rise, last half", "allowed", "verdict"]
    lines += table(header, rows, align="llrrrrrl")
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    """One panel per kind of series, a line per process."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({e["kind"] for e in data["series"].values()})
    fig, axes = plt.subplots(len(kinds), 1, figsize=(9, 2.4 * len(kinds)), sharex=True)
    for ax, kind in zip(axes, kinds, strict=True):
        for entry in data["series"].values():
            if entry["kind"] == kind:
                t = [s[0] / 60 for s in entry["samples"]]
                ax.plot(t, [s[1] for s in entry["samples"]], label=entry["process"], marker=".")
        for restart in data["hub_restarts"]:
            ax.axvline(restart["t"] / 60, color="grey", linestyle=":", linewidth=0.8)
        ax.set_ylabel(f"{kind} ({LIMITS[kind].unit})")
        ax.legend(fontsize="x-small", ncol=4)
    axes[-1].set_xlabel("minutes (dotted: a hub server killed and restarted)")
    fig.suptitle(f"soak at {data['machine']['commit']}: {'passed' if data['passed'] else 'FAILED'}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Soak the local deployment (3 hub servers, workers, gateway, aggregator) with phones joining "
        "and leaving and hub servers restarted; fail if any process's resources grow without bound.",
    )
    p.add_argument("--minutes", type=float, default=30.0, help="how long to run (default: %(default)s)")
    p.add_argument("--phones", type=int, default=2, help="phones streaming at a time (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="stylizer workers (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="results directory (default: bench/results)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.minutes <= 0 or args.phones < 1 or args.workers < 1:
        raise SystemExit("bench.soak: --minutes must be > 0, --phones and --workers >= 1")
    setup_logging("warning", json_lines=False)
    soak = Soak(args.minutes, args.phones, args.workers)
    run_main(soak.run())
    data = soak.results()
    publish(NAME, data, markdown, plot, args.out)
    if not data["passed"]:
        raise SystemExit("bench.soak: FAILED: " + "; ".join(data["reasons"]))


if __name__ == "__main__":
    main()
