"""The package layering of ARCHITECTURE.md, read from every module's imports (ast, lazy imports included).

- a process package (the worker, the aggregator, the phone, the gateway) imports only itself and the shared
  layer (``streaming`` outside ``streaming.gateway``); the shared layer imports no process package;
- no import cycle between first-party modules;
- the cloud aggregator never reaches torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("streaming", "edge_worker", "aggregator", "mobile_sim", "deploy", "bench")
PROCESS_PACKAGES = ("streaming.gateway", "edge_worker", "aggregator", "mobile_sim")
SHARED = "streaming"
MAY_IMPORT_ANYTHING = ("deploy", "bench")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every first-party module by dotted name."""
    found = {}
    for package in FIRST_PARTY:
        for path in (ROOT / package).rglob("*.py"):
            found[_module_name(path)] = path
    return found


def _resolve(name: str) -> str | None:
    """The first-party module an imported name lands in (``a.b.c`` may be a module or a name in ``a.b``)."""
    known = modules()
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def imports(module: str) -> frozenset[str]:
    """First-party modules ``module`` imports, anywhere in its body."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.add(target)
    return frozenset(found)


def imports_torch(module: str) -> bool:
    tree = ast.parse(modules()[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "torch" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            return True
    return False


def owner(module: str) -> str:
    """The process package a module belongs to, the shared layer, or a package that may import anything."""
    for package in PROCESS_PACKAGES + MAY_IMPORT_ANYTHING:
        if module == package or module.startswith(package + "."):
            return package
    assert module == SHARED or module.startswith(SHARED + "."), module
    return SHARED


def test_the_walker_sees_the_imports_it_must_judge() -> None:
    assert "streaming.protocol" in imports("streaming.gateway.server")
    assert "streaming.gateway.session" in imports("streaming.gateway.server")
    assert imports_torch("edge_worker.model.stylizer") and not imports_torch("streaming.protocol")


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_import_across_process_packages(module: str) -> None:
    mine = owner(module)
    if mine in MAY_IMPORT_ANYTHING:
        return
    allowed = {mine, SHARED}
    wrong = sorted(target for target in imports(module) if owner(target) not in allowed)
    assert not wrong, f"{module} ({mine}) imports {wrong}"


@pytest.mark.slow
def test_no_import_cycles() -> None:
    graph = {module: imports(module) for module in modules()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.slow
def test_torch_is_unreachable_from_the_aggregator() -> None:
    seen: set[str] = set()
    todo = [m for m in modules() if owner(m) == "aggregator"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imports(module))
    assert not [m for m in sorted(seen) if imports_torch(m)]
    probe = "import sys, aggregator.__main__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
