"""The phone's record of a run and the latency report built from it (JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobile_sim.reconstruct import OUTPUT_KINDS
from streaming.protocol import LATENCY_PARTS, Stamp, Stamps

REPORT_FILE = "report.json"
PERCENTILES = (50, 95, 99)
NS_PER_MS = 1e6
LIVE_KEYS_OK = 0.98
"""The live rate (issue 13's target, bench.live): at least this share of the marked key frames stylized..."""
LIVE_FPS_SHARE = 29.5 / 30
"""...and frames coming out at this share of the capture rate (29.5 fps for a 30 fps camera) at least."""


def latency_split(stamps: Stamps) -> dict[str, float] | None:
    """A key's round trip split into :data:`LATENCY_PARTS` (ms) from its hop stamps; None if one is missing.

    uplink: capture -> decoded at the gateway; queue: -> inference starts on a worker (gateway JPEG, NATS hop,
    worker queue); inference: the stylizer; downlink: -> decoded on the phone. Stamps come from several
    processes' clocks, moved onto the phone's by the gateway and the phone (``streaming.clock``).
    """
    s = stamps
    needed = (Stamp.PHONE_CAPTURE, Stamp.GW_DECODED, Stamp.W_INFER_START, Stamp.W_INFER_END, Stamp.PHONE_DECODED)
    if any(k not in s for k in needed):
        return None
    parts = {
        "uplink": s[Stamp.GW_DECODED] - s[Stamp.PHONE_CAPTURE],
        "queue": s[Stamp.W_INFER_START] - s[Stamp.GW_DECODED],
        "inference": s[Stamp.W_INFER_END] - s[Stamp.W_INFER_START],
        "downlink": s[Stamp.PHONE_DECODED] - s[Stamp.W_INFER_END],
        "round_trip": s[Stamp.PHONE_DECODED] - s[Stamp.PHONE_CAPTURE],
    }
    return {k: v / NS_PER_MS for k, v in parts.items()}


@dataclass
class FrameRecord:
    """What happened to one captured frame."""

    frame_id: int
    capture_ns: int
    key: bool
    key_reason: str
    key_id: int
    fate: str = "sent"
    """sent | dropped_before_send (encoder busy) | lost (emulated network loss)."""
    output: str = ""
    """key | warped | fallback | failed (from the reconstructor)."""


@dataclass
class KeyRecord:
    """Outcome of one key frame's round trip."""

    frame_id: int
    ok: bool = False
    error_code: str = ""
    error: str = ""
    attempts: int = 0
    worker_id: str = ""
    bytes: int = 0
    stamps: dict[str, int] = field(default_factory=dict)

    def latency_ms(self) -> dict[str, float] | None:
        """Round trip split into :data:`LATENCY_PARTS` (ms) if the key succeeded (:func:`latency_split`)."""
        return latency_split(self.stamps) if self.ok else None


def summarize(values: list[float]) -> dict[str, float]:
    """p50/p95/p99, mean and max of a list of numbers (empty dict if none)."""
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    out = {f"p{p}": round(float(np.percentile(arr, p)), 3) for p in PERCENTILES}
    out["mean"] = round(float(arr.mean()), 3)
    out["max"] = round(float(arr.max()), 3)
    return out


def build_report(
    *,
    region: str,
    settings: dict[str, Any],
    frames: list[FrameRecord],
    keys: dict[int, KeyRecord],
    duration_s: float,
    counters: dict[str, int],
    output_span_s: float = 0.0,
) -> dict[str, Any]:
    """The run's report: frame fates, key-frame outcomes, latency percentiles by region, throughput.

    ``duration_s`` runs from the first capture to the last output frame, ``output_span_s`` from the first output
    frame to the last: ``output_rate_fps`` is the rate frames came out at, whatever the pipeline's latency (a
    short run's ``output_fps`` is lowered by it).
    """
    latencies = [lat for k in keys.values() if (lat := k.latency_ms()) is not None]
    outputs = [f for f in frames if f.output]
    kinds = {kind: sum(1 for f in outputs if f.output == kind) for kind in OUTPUT_KINDS}
    reasons: dict[str, int] = {}
    for f in frames:
        if f.key:
            reasons[f.key_reason] = reasons.get(f.key_reason, 0) + 1
    failures: dict[str, int] = {}
    for k in keys.values():
        if not k.ok:
            failures[k.error_code] = failures.get(k.error_code, 0) + 1
    return {
        "region": region,
        "settings": settings,
        "frames": {
            "captured": len(frames),
            "output": len(outputs),
            "by_output": kinds,
            "dropped_before_send": sum(1 for f in frames if f.fate == "dropped_before_send"),
            "lost_emulated": sum(1 for f in frames if f.fate == "lost"),
        },
        "key_frames": {
            "marked": len(keys),
            "by_reason": reasons,
            "ok": sum(1 for k in keys.values() if k.ok),
            "failed": sum(1 for k in keys.values() if not k.ok),
            "failures_by_code": failures,
            "retried": sum(1 for k in keys.values() if k.attempts > 1),
            "workers": sorted({k.worker_id for k in keys.values() if k.worker_id}),
            "downlink_bytes": sum(k.bytes for k in keys.values()),
        },
        "latency_ms": {region: {part: summarize([lat[part] for lat in latencies]) for part in LATENCY_PARTS}},
        "throughput": {
            "duration_s": round(duration_s, 3),
            "output_fps": round(len(outputs) / duration_s, 2) if duration_s > 0 else 0.0,
            "output_rate_fps": round((len(outputs) - 1) / output_span_s, 2) if output_span_s > 0 else 0.0,
            "key_frames_per_s": round(sum(1 for k in keys.values() if k.ok) / duration_s, 2) if duration_s > 0 else 0.0,
        },
        "counters": counters,
        "per_frame": [
            {
                "id": f.frame_id,
                "key": f.key,
                "reason": f.key_reason,
                "key_id": f.key_id,
                "fate": f.fate,
                "output": f.output,
            }
            for f in frames
        ],
        "per_key": [
            {**{k: v for k, v in asdict(rec).items() if k != "stamps"}, "latency_ms": rec.latency_ms()}
            for rec in sorted(keys.values(), key=lambda r: r.frame_id)
        ],
    }


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write the report as indented JSON (directories created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def live_rate_shortfall(report: dict[str, Any], capture_fps: float) -> str:
    """Why a run missed the live rate (:data:`LIVE_KEYS_OK`, :data:`LIVE_FPS_SHARE` of ``capture_fps``), or ""."""
    keys, misses = report["key_frames"], []
    if keys["marked"] and keys["ok"] < LIVE_KEYS_OK * keys["marked"]:
        misses.append(f"{keys['ok']} of {keys['marked']} key frames ok (target >= {LIVE_KEYS_OK:.0%})")
    rate, target = report["throughput"]["output_rate_fps"], round(LIVE_FPS_SHARE * capture_fps, 2)
    if report["frames"]["output"] > 1 and rate < target:
        misses.append(f"{rate:g} fps out (target >= {target:g})")
    return "live rate missed: " + ", ".join(misses) if misses else ""


def human_summary(report: dict[str, Any], files: list[Path] | None = None) -> str:
    """A few lines a person reads after a run (the whole report is the JSON file)."""
    outcome, frames, keys = report["outcome"], report["frames"], report["key_frames"]
    lines = [f"outcome: {outcome['status']}" + (f": {outcome['reason']}" if outcome["reason"] else "")]
    by_output = ", ".join(f"{count} {kind}" for kind, count in frames["by_output"].items() if count)
    lines.append(
        f"frames: {frames['output']} of {frames['captured']} out ({by_output or 'none'}), "
        f"{report['throughput']['output_rate_fps']:g} fps; {frames['dropped_before_send']} dropped before send"
    )
    failures = ", ".join(f"{n} {code}" for code, n in sorted(keys["failures_by_code"].items()))
    lines.append(f"key frames: {keys['ok']} of {keys['marked']} ok" + (f" (failed: {failures})" if failures else ""))
    for region, parts in report["latency_ms"].items():
        trip = parts["round_trip"]
        if trip:
            split = ", ".join(f"{part} {parts[part]['p50']:.0f}" for part in parts if part != "round_trip")
            lines.append(f"round trip ({region}): p50 {trip['p50']:.0f} ms, p95 {trip['p95']:.0f} ms (p50 {split})")
    if files:
        lines.append("wrote " + ", ".join(str(f) for f in files))
    return "\n".join(lines)
