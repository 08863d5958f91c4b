"""Keep the README true: its commands parse with the real parsers, and its figures are in the results files.

Commands. Every ``mvs ...`` and ``python -m ...`` line of a ```` ```sh ```` block in README.md (continuation lines
joined, a trailing ``&`` and ``# comments`` dropped) is handed to the very ``main`` the console script runs
(``mvs X`` through ``deploy.cli.COMMANDS``, ``python -m M`` through ``M.__main__`` or ``M``), with
``ArgumentParser.parse_args`` stopped right after it accepted the line: flags must exist and values must pass
their types and choices. A value that names a file of the repository (``deploy/regions.toml``, a model file)
must exist. No line is skipped: the README uses no shell placeholders.

Figures. A table whose figures come from a benchmark sits under a marker line::

    <!-- figures: bench/results/NAME.json @ COMMIT -->

and the test checks that the results file exists and was written at that commit (``machine.commit``), and that
every number in the table's cells (but the first column, which names the row; a number glued to a letter, as in
``512x256`` or ``1.22x``, is a label, not a figure) occurs among the JSON's numbers,
rounded as printed (``0.635`` matches 0.6349; ``65`` matches 64.7). A unit after a number lets it match the
JSON's value in base units too: ``17.6 ms`` matches 0.0176 (s), ``1.45 MB`` 1446657 (B), ``50.1 %`` 0.501. A
figure derived from two stored numbers (a ratio nobody stored) does not belong in a marked table. Each README
paragraph that quotes such a table names the same file and commit in words.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FIGURES = re.compile(r"<!-- figures: (bench/results/[\w.-]+\.json) @ ([0-9a-f]{7,40}) -->")
NUMBER = re.compile(r"(?<![\w.])(-?\d+(?:,\d{3})*(?:\.\d+)?)(?!\w|\.\d)(?:\s?(ms|MB|KB|%)(?!\w))?")
"""A figure: digits not glued to letters (``512x256``, ``K=5``'s 5 is a figure, ``v0``'s 0 is not), maybe a unit."""
UNIT_SCALES = {"ms": 1e3, "MB": 1e-6, "KB": 1e-3, "%": 1e2}
"""A printed figure with this unit may be a JSON value in base units (s, B, a fraction) times the scale."""


def sh_commands(text: str) -> list[str]:
    """The ``mvs``/``python -m`` command lines of the README's sh blocks."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip().removesuffix("&").strip()
            if line.startswith(("mvs ", "python -m ")):
                commands.append(line)
    return commands


class Accepted(Exception):
    """Raised by the patched ``parse_args`` once the real parser accepted the command line."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("accepted")
        self.namespace = namespace


def _entry(argv: list[str]) -> tuple[Any, list[str]]:
    """The ``main`` a README command runs, and its arguments."""
    if argv[0] == "mvs":
        module = importlib.import_module(COMMANDS[argv[1]][0])
        return module.main, argv[2:]
    assert argv[:2] == ["python", "-m"], argv
    name = argv[2]
    try:
        module = importlib.import_module(f"{name}.__main__")
    except ModuleNotFoundError:
        module = importlib.import_module(name)
    return module.main, argv[3:]


def parse_command(line: str, monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """Run the command's own parser on ``line``; SystemExit (status 2) when argparse refuses it."""
    main, args = _entry(shlex.split(line))
    real_parse_args = argparse.ArgumentParser.parse_args

    def parse_args(self: argparse.ArgumentParser, *a: Any, **k: Any) -> Any:
        raise Accepted(real_parse_args(self, *a, **k))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr(sys, "argv", [line.split()[0], *args])  # for a main() that reads sys.argv
    try:
        main() if not _takes_argv(main) else main(args)
    except Accepted as accepted:
        return accepted.namespace
    raise AssertionError(f"{line!r}: its main never parsed its arguments")


def _takes_argv(main: Any) -> bool:
    return bool(main.__code__.co_argcount)


def _repo_paths(namespace: argparse.Namespace) -> Iterator[Path]:
    """Values that name a file of the repository (relative, under a tracked top-level directory but ``out/``)."""
    tops = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")} - {"out"}
    for value in vars(namespace).values():
        if isinstance(value, (str, Path)) and not str(value).startswith(("/", "nats:", "http")):
            parts = Path(value).parts
            if len(parts) > 1 and parts[0] in tops:
                yield Path(value)


COMMAND_LINES = sh_commands(README.read_text())


def test_the_readme_has_commands() -> None:
    assert len(COMMAND_LINES) >= 10 and any(c.startswith("python -m") for c in COMMAND_LINES)


@pytest.mark.parametrize("line", COMMAND_LINES)
def test_every_readme_command_parses(line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = parse_command(line, monkeypatch)
    for path in _repo_paths(namespace):
        assert (ROOT / path).exists(), f"{line!r} names {path}, which is not in the repository"


def test_a_wrong_flag_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        parse_command("mvs worker --nats nats://127.0.0.1:4222 --regoin eu", monkeypatch)
    with pytest.raises(SystemExit):
        parse_command("mvs phone --mode later", monkeypatch)


def json_numbers(data: object) -> list[float]:
    """Every number in a JSON document."""
    if isinstance(data, bool):
        return []
    if isinstance(data, (int, float)):
        return [float(data)] if math.isfinite(data) else []
    if isinstance(data, dict):
        return [n for value in data.values() for n in json_numbers(value)]
    if isinstance(data, list):
        return [n for value in data for n in json_numbers(value)]
    return []


def printed_as(number: str, values: list[float], unit: str = "") -> bool:
    """Whether some value (or, with a unit, the value scaled from base units), rounded to the decimals ``number``
    is printed with, is ``number``."""
    decimals = len(number.split(".")[1]) if "." in number else 0
    target = float(number.replace(",", ""))
    half = 0.5 * 10.0**-decimals + 1e-9
    scales = (1.0, UNIT_SCALES[unit]) if unit else (1.0,)
    return any(abs(v * scale - target) <= half for v in values for scale in scales)


def figure_tables(text: str) -> Iterator[tuple[str, str, list[list[str]]]]:
    """(results file, commit, rows of cells without the first column) of every marked table."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        found = FIGURES.search(line)
        if not found:
            continue
        rows = []
        j = i + 1
        while j < len(lines) and not lines[j].startswith("|"):
            j += 1
        for row in lines[j + 2 :]:  # past the header and the --- line
            if not row.startswith("|"):
                break
            rows.append([cell.strip() for cell in row.strip().strip("|").split("|")][1:])
        yield found.group(1), found.group(2), rows


TABLES = list(figure_tables(README.read_text()))


def test_the_readme_marks_its_figure_tables() -> None:
    assert {name for name, _, _ in TABLES} >= {
        f"bench/results/{n}.json" for n in ("live", "interpolation", "stylize", "federated")
    }


@pytest.mark.parametrize(("name", "commit", "rows"), TABLES, ids=[f"{n}:{i}" for i, (n, _, _) in enumerate(TABLES)])
def test_every_figure_of_a_marked_table_is_in_its_results_file(name: str, commit: str, rows: list[list[str]]) -> None:
    data = json.loads((ROOT / name).read_text())
    assert data["machine"]["commit"] == commit, f"{name} was written at {data['machine']['commit']}, not {commit}"
    values = json_numbers(data)
    assert rows
    figures = [(cell, number, unit) for row in rows for cell in row for number, unit in NUMBER.findall(cell)]
    missing = [(cell, number) for cell, number, unit in figures if not printed_as(number, values, unit)]
    assert not missing, f"figures in the README that {name} does not hold: {missing}"


def test_a_figure_absent_from_the_results_file_is_caught() -> None:
    values = json_numbers({"a": [0.6349, 64.7], "b": {"c": 12}})
    assert printed_as("0.635", values) and printed_as("65", values) and printed_as("12", values)
    assert not printed_as("0.636", values) and not printed_as("13", values)
    assert printed_as("64.7", values) and printed_as("635", values, "ms") and not printed_as("635", values)
    assert [m.groups() for m in NUMBER.finditer("17.6 ms, 3.30 MB, 50.1 %, 512x256, 1.22x, 1,250, 0.5.")] == [
        ("17.6", "ms"),
        ("3.30", "MB"),
        ("50.1", "%"),
        ("1,250", None),
        ("0.5", None),
    ]
