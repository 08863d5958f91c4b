"""Every bench writes its Markdown tables with bench.common.table: well-formed tables from its committed results."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from bench.common import RESULTS_DIR, table

BENCHES = sorted(p.stem for p in RESULTS_DIR.glob("*.json"))


def test_a_table_has_its_header_rule_and_rows() -> None:
    assert table(["size", "ms"], [["640x360", 12.5], ["1280x720", None]], align="lr") == [
        "| size | ms |",
        "| --- | ---: |",
        "| 640x360 | 12.5 |",
        "| 1280x720 |  |",
    ]


@pytest.mark.parametrize("name", BENCHES)
def test_each_bench_renders_its_results_as_well_formed_tables(name: str) -> None:
    markdown = importlib.import_module(f"bench.{name}").markdown
    text = markdown(json.loads((RESULTS_DIR / f"{name}.json").read_text()))
    tables: list[list[str]] = []
    previous = ""
    for line in text.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(line)
        previous = line
    assert tables, f"bench.{name} wrote no table"
    for lines in tables:
        columns = lines[0].count(" | ") + 1
        assert set(lines[1].strip("|").split("|")) <= {" --- ", " ---: "}, lines[:2]  # the rule table() writes
        assert all(line.count(" | ") + 1 == columns and line.endswith(" |") for line in lines), lines


def test_every_bench_with_a_markdown_report_has_results_here() -> None:
    benches = {p.stem for p in Path(RESULTS_DIR).parent.glob("*.py") if "def markdown(" in p.read_text()}
    assert benches - set(BENCHES) <= {"gpu"}  # gpu.py needs CUDA: its quick CPU run is tests/test_bench_gpu.py
