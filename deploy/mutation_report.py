"""Per-module summary of the last ``mutmut run`` (``make mutate``): mutants killed, survived, not reached.

mutmut keeps each mutated file's results next to it (``mutants/<path>.meta``: exit code by mutant); this reads
them, so the report covers whatever runs left there. ``--survivors`` lists the surviving mutants (``mutmut show
NAME`` prints one's diff).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

MUTANTS_DIR = Path("mutants")
"""Where mutmut writes (relative to the repository root)."""


def results(root: Path = MUTANTS_DIR) -> dict[str, dict[str, str]]:
    """Status (killed, survived, not checked, timeout, ...) of every mutant, by module."""
    by_module: dict[str, dict[str, str]] = {}
    for meta in sorted(root.rglob("*.py.meta")):
        module = ".".join(meta.relative_to(root).with_suffix("").with_suffix("").parts)
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        by_module[module] = {name: status_by_exit_code[code] for name, code in codes.items()}
    return by_module


def main(argv: list[str] | None = None) -> None:
    """Print the summary table (modules with at least one checked mutant)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    args = parser.parse_args(argv)
    print(f"{'module':40} {'killed':>7} {'survived':>8} {'timeout':>7} {'other':>6}")
    for module, statuses in results().items():
        counts = Counter(statuses.values())
        checked = len(statuses) - counts["not checked"]
        if checked == 0:
            continue
        other = checked - counts["killed"] - counts["survived"] - counts["timeout"]
        print(f"{module:40} {counts['killed']:7} {counts['survived']:8} {counts['timeout']:7} {other:6}")
        if args.survivors:
            for name, status in statuses.items():
                if status == "survived":
                    print(f"    {name}")


if __name__ == "__main__":
    main()
