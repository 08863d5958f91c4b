"""requirements.lock pins every installed distribution, and pins what pyproject.toml asks for.

`make` installs the lock alone (then the project with ``--no-deps``), so an upstream release can change the build
only through `make lock`. These tests fail when the environment has a distribution the lock does not pin, at
another version, or when pyproject.toml asks for something the lock misses or does not satisfy (a dependency
edited without refreshing the lock).
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PROJECT = "mvstylizer"


def locked() -> dict[str, Version]:
    """Name -> pinned version of every ``name==version`` line of the lock."""
    pins: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"requirements.lock: not a pin: {line!r}"
        pins[canonicalize_name(requirement.name)] = Version(spec.version)
    return pins


def project_requirements() -> list[Requirement]:
    """The runtime and dev requirements of pyproject.toml (markers evaluated for this interpreter)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    requirements = [Requirement(spec) for spec in specs]
    return [r for r in requirements if r.marker is None or r.marker.evaluate()]


def test_every_installed_distribution_is_pinned_at_its_version() -> None:
    assert sys.prefix != sys.base_prefix, "run the tests in the project's virtual environment (make test)"
    pins = locked()
    unpinned, other_version = [], []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name == PROJECT:
            continue
        if name not in pins:
            unpinned.append(f"{name} {dist.version}")
        elif Version(dist.version) != pins[name]:
            other_version.append(f"{name} {dist.version} (lock: {pins[name]})")
    assert not unpinned, f"installed but not in requirements.lock (run make lock): {sorted(unpinned)}"
    assert not other_version, f"installed at another version than the lock's: {sorted(other_version)}"


def test_the_lock_satisfies_pyproject() -> None:
    pins = locked()
    missing, unsatisfied = [], []
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        if name not in pins:
            missing.append(str(requirement))
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            unsatisfied.append(f"{requirement} (lock: {pins[name]})")
    assert not missing, f"pyproject.toml asks for what requirements.lock lacks (run make lock): {missing}"
    assert not unsatisfied, f"requirements.lock pins outside pyproject.toml's ranges (run make lock): {unsatisfied}"


def test_the_hand_pins_hold_in_the_lock() -> None:
    """constraints.txt (torch's CPU build, the NATS server the manifests name, the schemas' release) wins."""
    pins = locked()
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            pinned = pins[canonicalize_name(requirement.name)]
            assert requirement.specifier.contains(pinned), f"{requirement}: lock has {pinned}"
