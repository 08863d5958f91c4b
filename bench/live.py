"""The live demo's throughput and key-frame latency (``python -m bench.live``; ``make bench``).

Runs ``mvs demo`` (nats-server, worker process, gateway, phone over WebRTC on loopback) at each
key interval and records frames out per second, key frames per second, and the key-frame round
trip split into uplink, queue, inference and downlink (p50/p95/p99).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import machine, write_results
from deploy.local import run_demo
from mobile_sim.client import PhoneConfig
from mobile_sim.report import LATENCY_PARTS
from streaming.runtime import run_main

DEFAULT_INTERVALS = (1, 5, 10)


async def measure(size: tuple[int, int], frames: int, intervals: Sequence[int], region: str) -> list[dict[str, Any]]:
    """One demo run per key interval; the numbers from each run's report."""
    rows = []
    for interval in intervals:
        with tempfile.TemporaryDirectory(prefix="mvs-bench-") as tmp:
            config = PhoneConfig(frames=frames, size=size, key_interval=interval, region=region, out_dir=Path(tmp))
            report = (await run_demo(config)).report
        rows.append(
            {
                "key_interval": interval,
                "frames": report["frames"],
                "key_frames": {k: report["key_frames"][k] for k in ("marked", "ok", "failed", "failures_by_code")},
                "throughput": report["throughput"],
                "latency_ms": report["latency_ms"][region],
                "downlink_bytes_per_key": report["key_frames"]["downlink_bytes"] // max(1, report["key_frames"]["ok"]),
            }
        )
    return rows


def markdown(data: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    m = data["machine"]
    lines = [
        f"# Live demo at {data['size'][0]}x{data['size'][1]}, {data['frames']} frames at {data['fps']} fps",
        "",
        f"{m['when']}, commit {m['commit']}, {m['cpus']} CPUs, load {m['load_avg_1m']} at start. "
        "Everything (phone, gateway, worker, nats-server) on this one machine; stylizer: "
        f"`{data['model']}`.",
        "",
        "| key interval | frames out | output fps | key frames ok/marked | dropped before send | "
        "round trip p50 / p95 / p99 (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in data["runs"]:
        rt = row["latency_ms"]["round_trip"]
        lines.append(
            f"| {row['key_interval']} | {row['frames']['output']}/{row['frames']['captured']} | "
            f"{row['throughput']['output_fps']} | {row['key_frames']['ok']}/{row['key_frames']['marked']} | "
            f"{row['frames']['dropped_before_send']} | {rt['p50']:.0f} / {rt['p95']:.0f} / {rt['p99']:.0f} |"
        )
    lines += [
        "",
        "Key-frame round trip split (p50 ms):",
        "",
        "| key interval | " + " | ".join(LATENCY_PARTS) + " |",
        "| --- |" + " --- |" * len(LATENCY_PARTS),
    ]
    for row in data["runs"]:
        parts = " | ".join(f"{row['latency_ms'][p]['p50']:.1f}" for p in LATENCY_PARTS)
        lines.append(f"| {row['key_interval']} | {parts} |")
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    """Stacked bars: the key-frame round trip (p50) split into its parts, per key interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    labels = [f"K={row['key_interval']}" for row in runs]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = [0.0] * len(runs)
    for part in LATENCY_PARTS[:-1]:
        values = [row["latency_ms"][part]["p50"] for row in runs]
        ax.bar(labels, values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for i, row in enumerate(runs):
        ax.annotate(f"p95 {row['latency_ms']['round_trip']['p95']:.0f}", (i, bottom[i]), ha="center", va="bottom")
    ax.set_ylabel("key-frame round trip, p50 (ms)")
    ax.set_title(f"Live demo {data['size'][0]}x{data['size'][1]} ({data['model']})")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--intervals", type=int, nargs="+", default=list(DEFAULT_INTERVALS))
    p.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    args = p.parse_args(argv)
    size = (args.width, args.height)
    data: dict[str, Any] = {
        "machine": machine(),
        "size": list(size),
        "frames": args.frames,
        "fps": 30.0,
        "model": "color-transfer",
    }
    data["runs"] = run_main(measure(size, args.frames, args.intervals, "local"))
    json_path, md_path = write_results("live", data, markdown(data), *([args.out] if args.out else []))
    png_path = json_path.with_suffix(".png")
    plot(data, png_path)
    print(markdown(data))
    print(f"wrote {json_path}, {md_path} and {png_path}")


if __name__ == "__main__":
    main()
