"""deploy/k8s/ and deploy/nats/: up to date with deploy/regions.toml, and consistent with the real code.

PyYAML is not a dependency, so the manifests are written as JSON (which YAML includes; kubectl reads
them) and read here with the standard library. Container args are parsed by the real CLIs' parsers;
the NATS configs are checked by the real nats-server."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy import k8s_manifests, nats_config
from deploy.cli import COMMANDS
from deploy.nats import HUB_DOMAIN, nats_server_binary
from deploy.nats_auth import LEAF_URL_ENV, new_password
from deploy.regions import DEFAULT_REGIONS_FILE, load_regions

K8S = k8s_manifests.DEFAULT_OUT
NATS = nats_config.DEFAULT_OUT
VARIABLE = re.compile(r":\s*\$([A-Z0-9_]+)\b")
"""A config value read from the environment (``password: $MVS_NATS_PASSWORD_...``); quoted "$JS..." are subjects."""
EXPANSION = re.compile(r"\$\(([A-Za-z0-9_]+)\)")
"""Kubernetes' $(VAR) expansion in env values and args."""


def _objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        manifest = json.loads(path.read_text())
        for item in manifest["items"] if manifest["kind"] == "List" else [manifest]:
            yield path.name, item


def _pods() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(file, workload, pod template) of every Deployment and StatefulSet."""
    for name, obj in _objects():
        if obj["kind"] in ("Deployment", "StatefulSet"):
            yield name, obj, obj["spec"]["template"]


def _containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name, obj, template in _pods():
        for container in template["spec"]["containers"]:
            yield name, obj, container


def test_manifests_and_configs_are_generated_from_the_regions_file() -> None:
    regions = load_regions(DEFAULT_REGIONS_FILE)
    configs = nats_config.deployment_configs(regions, DEFAULT_REGIONS_FILE.name)
    assert nats_config.stale_files(configs, NATS, ".conf") == []
    files = {n: k8s_manifests.render(m) for n, m in k8s_manifests.manifests(regions, DEFAULT_REGIONS_FILE.name).items()}
    assert nats_config.stale_files(files, K8S, ".yaml") == []
    names = {n for n, _ in _objects()}
    for region in regions:
        assert {f"workers-{region.name}.yaml", f"gateway-{region.name}.yaml", f"nats-leaf-{region.name}.yaml"} <= names


def _parse(container: dict[str, Any]) -> tuple[str, argparse.Namespace]:
    command = container["command"]
    assert command[0] == "mvs" and command[1] in COMMANDS, command
    parser: argparse.ArgumentParser = importlib.import_module(COMMANDS[command[1]][0]).build_parser()
    flags = {flag for action in parser._actions for flag in action.option_strings}
    given = {arg for arg in container["args"] if arg.startswith("--")}
    assert given <= flags, f"`mvs {command[1]}` has no flag(s) {given - flags} (abbreviations do not count)"
    try:
        return command[1], parser.parse_args(container["args"])
    except SystemExit:
        pytest.fail(f"`mvs {command[1]}` rejects the args {container['args']}")


def test_service_containers_use_only_flags_the_real_clis_accept() -> None:
    seen = set()
    for _, obj, container in _containers():
        if container["image"] != k8s_manifests.IMAGE:
            continue
        command, args = _parse(container)
        seen.add(command)
        module = importlib.import_module(COMMANDS[command][0])
        module.config_from_args(args)  # the flags also make a valid service config
        region = obj["metadata"]["labels"].get(k8s_manifests.REGION_LABEL)
        if command in ("worker", "gateway"):
            assert args.region == region and args.js_domain == HUB_DOMAIN  # on the region's leaf node
        if command == "gateway":
            assert args.host == "0.0.0.0" and obj["spec"]["template"]["spec"]["hostNetwork"]
            probe_ports = {
                container["readinessProbe"]["httpGet"]["port"],
                container["livenessProbe"]["httpGet"]["port"],
            }
            assert probe_ports == {args.port} == {p["containerPort"] for p in container["ports"]}
        else:  # metrics listen on the pod's address and are probed on the port the flags give
            assert args.metrics_host == "0.0.0.0"
            probes = [
                container[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container
            ]
            assert probes and all(p == {"path": "/metrics", "port": args.metrics_port} for p in probes)
    assert seen == {"worker", "gateway", "aggregator"}


def test_every_variable_is_defined_before_it_is_used() -> None:
    """Kubernetes expands $(VAR) only from env entries defined earlier in the same container."""
    for name, _, container in _containers():
        defined: set[str] = set()
        for entry in container.get("env", []):
            for used in EXPANSION.findall(entry.get("value", "")):
                assert used in defined, f"{name}: {entry['name']} uses $({used}) before it is defined"
            defined.add(entry["name"])
        for used in EXPANSION.findall(" ".join(container.get("args", []))):
            assert used in defined, f"{name}: args use $({used}), which the env does not define"


def test_nats_servers_get_every_variable_their_config_reads_from_the_secret() -> None:
    regions = load_regions(DEFAULT_REGIONS_FILE)
    secret_keys = set(nats_config.secret_manifest(regions)["stringData"])  # type: ignore[arg-type]
    for name, _, container in _containers():
        refs = [
            e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
        ]
        assert all(ref["name"] == nats_config.SECRET_NAME and ref["key"] in secret_keys for ref in refs), name
        if container["image"] != k8s_manifests.NATS_IMAGE:
            continue
        config = (NATS / Path(container["args"][1]).name).read_text()
        assert set(VARIABLE.findall(config)) <= {e["name"] for e in container["env"]}, name


@pytest.mark.parametrize("config", sorted(p.name for p in NATS.glob("*.conf")))
def test_nats_server_accepts_the_deployment_configs(config: str) -> None:
    text = (NATS / config).read_text()
    env = {var: new_password() for var in VARIABLE.findall(text)}
    if LEAF_URL_ENV in env:
        env[LEAF_URL_ENV] = f"nats-leaf://leaf:{new_password()}@{nats_config.HUB_SERVICE}:{nats_config.LEAF_PORT}"
    done = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(NATS / config)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_services_reach_their_pods() -> None:
    pods = {
        (obj["metadata"]["namespace"], json.dumps(t["metadata"]["labels"], sort_keys=True)): t for _, obj, t in _pods()
    }
    for name, obj in _objects():
        if obj["kind"] != "Service":
            continue
        key = (obj["metadata"]["namespace"], json.dumps(obj["spec"]["selector"], sort_keys=True))
        assert key in pods, f"{name}: service {obj['metadata']['name']} selects no pod"
        container_ports = {p["containerPort"] for c in pods[key]["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in obj["spec"]["ports"]} <= container_ports, name
