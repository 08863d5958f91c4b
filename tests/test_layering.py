"""The package layering of ARCHITECTURE.md and the house rules of STYLE.md, read from every module's imports (ast,
lazy imports included). Each rule is a function over a source tree that returns its breaches; it is checked on this
repository and, on a small tree planted in a temporary folder, seen to catch the breach it names.

- the top-level packages are found, not listed (directories at the root with an ``__init__.py``), and each must be
  given a role here: a new one fails until it is;
- a process package (the worker, the aggregator, the phone, the gateway) imports only itself and the shared
  layer (``streaming`` outside ``streaming.gateway``); the shared layer imports no process package;
- no import cycle between first-party modules;
- the cloud aggregator never reaches torch;
- pure modules (:data:`PURE`: the computation the services wrap) import no asyncio, NATS or other I/O framework,
  nor reach a first-party module that does;
- only ``streaming.protocol`` (a module, or a package if it is ever split) imports msgpack;
- inside a package, a lower layer never imports the layer above it (:data:`LOWER_LAYERS`: ``edge_worker.model``,
  the models behind the ``Stylizer`` interface, imports no other ``edge_worker`` module: not the service, not
  training, not retraining).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from functools import cached_property
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROCESS_PACKAGES = ("streaming.gateway", "edge_worker", "aggregator", "mobile_sim")
SHARED = "streaming"
MAY_IMPORT_ANYTHING = ("deploy", "bench")
"""Tools around the services (launchers, manifests, benchmarks): they may import every package."""
TORCH_FREE = "aggregator"
PURE = (
    "edge_worker.model.*",
    "edge_worker.inference",
    "edge_worker.looks",
    "edge_worker.quality",
    "edge_worker.retrain",
    "edge_worker.training",
    "edge_worker.lite_training",
    "mobile_sim.affine",
    "mobile_sim.colormap",
    "mobile_sim.flow",
    "mobile_sim.keyframes",
    "mobile_sim.reconstruct",
    "mobile_sim.temporal",
    "mobile_sim.warp",
    "aggregator.strategies",
    "aggregator.validation",
    "streaming.protocol",
    "streaming.protocol.*",
    "streaming.tensors",
    "streaming.coefficients",
    "streaming.images",
    "streaming.clock",
    "streaming.gateway.frame_ids",
    "streaming.gateway.key_latency",
    "streaming.gateway.rate_limit",
)
"""Pure computation (STYLE.md: "never imports asyncio or NATS; services wrap it"): the models and their training, the
phone's flow, warp, key-frame policies and reconstruction, the aggregation rules, the wire codecs, frame-id mapping
and rate limiting. Patterns of dotted module names."""
IO_FRAMEWORKS = frozenset({"asyncio", "uvloop", "nats", "aiohttp", "aiortc", "aioice"})
"""What a pure module must not import (top-level distribution names)."""
WIRE_CODEC = "msgpack"
WIRE_OWNER = "streaming.protocol"
LOWER_LAYERS = (("edge_worker.model", "edge_worker"),)
"""(lower, package): modules of ``lower`` import nothing of ``package`` outside ``lower``."""


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


class Tree:
    """The first-party modules of a source tree and what each imports."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @cached_property
    def packages(self) -> tuple[str, ...]:
        """The top-level packages: directories at the root with an ``__init__.py``."""
        return tuple(sorted(p.parent.name for p in self.root.glob("*/__init__.py")))

    @cached_property
    def modules(self) -> dict[str, Path]:
        """Every first-party module by dotted name."""
        found = {}
        for package in self.packages:
            for path in (self.root / package).rglob("*.py"):
                parts = list(path.relative_to(self.root).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                found[".".join(parts)] = path
        return found

    def _resolve(self, name: str) -> str | None:
        """The first-party module an imported name lands in (``a.b.c`` may be a module or a name in ``a.b``)."""
        while name:
            if name in self.modules:
                return name
            name = name.rpartition(".")[0]
        return None

    def _imported_names(self, module: str) -> list[str]:
        """Every dotted name ``module`` imports, relative imports made absolute."""
        path = self.modules[module]
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        names: list[str] = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                names += [f"{base}.{alias.name}" for alias in node.names] + [base]
        return names

    def imports(self, module: str) -> frozenset[str]:
        """First-party modules ``module`` imports, anywhere in its body."""
        return self._graph[module]

    @cached_property
    def _graph(self) -> dict[str, frozenset[str]]:
        graph = {}
        for module in self.modules:
            targets = {self._resolve(name) for name in self._imported_names(module)}
            graph[module] = frozenset(t for t in targets if t is not None and t != module)
        return graph

    def external(self, module: str) -> frozenset[str]:
        """Top-level names of what ``module`` imports from outside this tree (stdlib and distributions)."""
        names = self._imported_names(module)
        return frozenset(n.split(".")[0] for n in names if n and self._resolve(n) is None)

    def reachable(self, starts: Iterable[str]) -> set[str]:
        """``starts`` and every first-party module they import, directly or not."""
        seen: set[str] = set()
        todo = list(starts)
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(self.imports(module))
        return seen


def owner(module: str) -> str:
    """The process package a module belongs to, the shared layer, or a package that may import anything."""
    for package in PROCESS_PACKAGES + MAY_IMPORT_ANYTHING:
        if _within(module, package):
            return package
    return SHARED


def unclassified_packages(tree: Tree) -> list[str]:
    """Top-level packages with no role here (each must be a process package, the shared layer or a tool)."""
    known = {p.split(".")[0] for p in PROCESS_PACKAGES + MAY_IMPORT_ANYTHING} | {SHARED}
    return [p for p in tree.packages if p not in known]


def imports_across_packages(tree: Tree) -> list[str]:
    """``module -> target`` for every import of a process package's module into another process package (the
    shared layer counts as one that may import only itself)."""
    wrong = []
    for module in sorted(tree.modules):
        mine = owner(module)
        if mine in MAY_IMPORT_ANYTHING:
            continue
        wrong += [f"{module} -> {t}" for t in sorted(tree.imports(module)) if owner(t) not in (mine, SHARED)]
    return wrong


def import_cycles(tree: Tree) -> list[str]:
    """Every import cycle found, as ``a -> b -> a``."""
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(tree.imports(module)):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(tree.modules):
        if module not in state:
            visit(module, [module])
    return cycles


def torch_from_the_aggregator(tree: Tree) -> list[str]:
    """Modules reachable from the aggregator that import torch."""
    starts = [m for m in tree.modules if _within(m, TORCH_FREE)]
    return sorted(m for m in tree.reachable(starts) if "torch" in tree.external(m))


def impure_modules(tree: Tree) -> list[str]:
    """``module (via reached): frameworks`` for each module a pure module reaches that imports an I/O framework."""
    wrong = []
    for module in sorted(m for m in tree.modules if any(fnmatchcase(m, p) for p in PURE)):
        for reached in sorted(tree.reachable([module])):
            if bad := sorted(tree.external(reached) & IO_FRAMEWORKS):
                wrong.append(f"{module} (via {reached}): {', '.join(bad)}")
    return wrong


def msgpack_users(tree: Tree) -> list[str]:
    """Modules outside :data:`WIRE_OWNER` that import msgpack."""
    return sorted(m for m in tree.modules if WIRE_CODEC in tree.external(m) and not _within(m, WIRE_OWNER))


def upward_imports(tree: Tree) -> list[str]:
    """``module -> target`` for every import of a lower layer into the rest of its package."""
    wrong = []
    for lower, package in LOWER_LAYERS:
        for module in sorted(m for m in tree.modules if _within(m, lower)):
            above = [t for t in sorted(tree.imports(module)) if _within(t, package) and not _within(t, lower)]
            wrong += [f"{module} -> {t}" for t in above]
    return wrong


REPO = Tree(ROOT)


def test_the_walker_sees_the_imports_it_must_judge() -> None:
    assert {"aggregator", "bench", "deploy", "edge_worker", "mobile_sim", "streaming"} <= set(REPO.packages)
    assert "streaming.protocol" in REPO.imports("streaming.gateway.server")
    assert "streaming.gateway.session" in REPO.imports("streaming.gateway.server")
    assert "torch" in REPO.external("edge_worker.model.stylizer") and "msgpack" in REPO.external("streaming.protocol")
    assert "asyncio" in REPO.external("edge_worker.service") and "asyncio" not in REPO.external("mobile_sim.warp")
    pure = [m for m in REPO.modules if any(fnmatchcase(m, p) for p in PURE)]
    assert "edge_worker.model.base" in pure and "mobile_sim.reconstruct" in pure and len(pure) > 30


def test_every_top_level_package_has_a_role() -> None:
    assert not unclassified_packages(REPO), "give each a role in tests/test_layering.py"


def test_no_import_across_process_packages() -> None:
    assert not imports_across_packages(REPO)


def test_no_import_cycles() -> None:
    assert not import_cycles(REPO)


def test_torch_is_unreachable_from_the_aggregator() -> None:
    assert not torch_from_the_aggregator(REPO)
    probe = "import sys, aggregator.__main__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_pure_modules_import_no_io_framework() -> None:
    assert not impure_modules(REPO)


def test_only_the_protocol_uses_msgpack() -> None:
    assert not msgpack_users(REPO)


def test_the_model_package_never_imports_upward() -> None:
    assert not upward_imports(REPO)


# --- each rule catches the breach it names, on a planted tree ---------------------------------------------------


def plant(root: Path, sources: dict[str, str]) -> Tree:
    """A tree under ``root`` of the given modules (``a/b.py``: source), packages' ``__init__.py`` added."""
    for name, source in sources.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        for package in path.relative_to(root).parents:
            if package != Path("."):
                (root / package / "__init__.py").touch()
    return Tree(root)


CLEAN = {
    "streaming/protocol.py": "import msgpack\n",
    "streaming/nats_connect.py": "import nats\n",
    "streaming/gateway/server.py": "import asyncio\nfrom streaming import protocol\n",
    "edge_worker/model/base.py": "import numpy\nfrom streaming.protocol import pack\n",
    "edge_worker/service.py": "import asyncio\nfrom edge_worker.model import base\n",
    "aggregator/strategies.py": "import numpy\n",
    "mobile_sim/warp.py": "from . import flow\n",
    "mobile_sim/flow.py": "import cv2\n",
    "bench/live.py": "from edge_worker import service\nfrom mobile_sim import warp\n",
}
"""A small tree that keeps every rule; each case below plants one breach in it."""
RULES = (
    unclassified_packages,
    imports_across_packages,
    import_cycles,
    torch_from_the_aggregator,
    impure_modules,
    msgpack_users,
    upward_imports,
)


def test_the_clean_planted_tree_keeps_every_rule(tmp_path: Path) -> None:
    tree = plant(tmp_path, CLEAN)
    assert tree.packages == ("aggregator", "bench", "edge_worker", "mobile_sim", "streaming")
    assert "mobile_sim.flow" in tree.imports("mobile_sim.warp")  # relative imports resolved
    assert {rule.__name__: rule(tree) for rule in RULES} == {rule.__name__: [] for rule in RULES}


@pytest.mark.parametrize(
    ("rule", "planted", "breach"),
    [
        (unclassified_packages, {"uploads/store.py": "import json\n"}, "uploads"),
        (imports_across_packages, {"edge_worker/sideways.py": "from aggregator import strategies\n"}, "aggregator"),
        (imports_across_packages, {"streaming/up.py": "import mobile_sim.flow\n"}, "streaming.up -> mobile_sim.flow"),
        (import_cycles, {"streaming/protocol.py": "import msgpack\nfrom streaming.gateway import server\n"}, "->"),
        (torch_from_the_aggregator, {"aggregator/strategies.py": "import torch.nn\n"}, "aggregator.strategies"),
        (
            torch_from_the_aggregator,
            {"aggregator/service.py": "from streaming import heavy\n", "streaming/heavy.py": "import torch\n"},
            "streaming.heavy",
        ),
        (impure_modules, {"mobile_sim/flow.py": "import asyncio\n"}, "mobile_sim.flow (via mobile_sim.flow): asyncio"),
        (impure_modules, {"mobile_sim/flow.py": "from streaming import nats_connect\n"}, "via streaming.nats_connect"),
        (impure_modules, {"edge_worker/model/base.py": "from nats.aio.client import Client\n"}, "nats"),
        (msgpack_users, {"streaming/tensors.py": "import msgpack\n"}, "streaming.tensors"),
        (upward_imports, {"edge_worker/model/base.py": "from edge_worker import service\n"}, "edge_worker.service"),
        (
            upward_imports,
            {
                "edge_worker/training.py": "x = 1\n",
                "edge_worker/model/reg.py": "def f():\n    from edge_worker.training import x\n",
            },
            "edge_worker.model.reg -> edge_worker.training",
        ),
    ],
)
def test_each_rule_catches_its_planted_breach(
    tmp_path: Path, rule: Callable[[Tree], list[str]], planted: dict[str, str], breach: str
) -> None:
    found = rule(plant(tmp_path, {**CLEAN, **planted}))
    assert any(breach in item for item in found), found
