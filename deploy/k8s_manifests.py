"""``python -m deploy.k8s_manifests``: the Kubernetes manifests of ``deploy/k8s/``, from the regions file.

The manifests are JSON (a subset of YAML: ``kubectl apply -f`` reads them, and so does the standard
library in the tests). Per edge region: a NATS leaf node, stylizer workers and a gateway pinned to the
region's nodes (label ``mvs/region=<name>``); in the cloud: the NATS hub (JetStream on a volume) and
the aggregator. Passwords come from the Secret ``mvs-nats-users`` (``python -m deploy.nats_config
--secret``). ``--check`` fails when the files are stale. deploy/k8s/README.md explains the choices.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploy.nats import HUB_DOMAIN
from deploy.nats_auth import AGGREGATOR_USER, gateway_user, leaf_user, password_env, worker_user
from deploy.nats_config import (
    CLIENT_PORT,
    HUB_SERVICE,
    LEAF_PORT,
    MONITOR_PORT,
    NAMESPACE,
    SECRET_NAME,
    STORE_DIR,
    deployment_configs,
    hub_auth,
    write_generated,
)
from deploy.regions import DEFAULT_REGIONS_FILE, Region, load_regions
from streaming.gateway.server import DEFAULT_HTTP_PORT

DEFAULT_OUT = Path(__file__).with_name("k8s")
IMAGE = "mvstylizer:0.1.0"
"""Built from deploy/k8s/Dockerfile."""
NATS_IMAGE = "nats:2.10-alpine"
NATS_CONFIG_MAP = "mvs-nats"
NATS_CONFIG_DIR = "/etc/nats"
METRICS_PORT = 9100
BUFFER_DIR = "/var/lib/mvs/buffer"
INIT_WEIGHTS = "/app/edge_worker/model/weights/mvstylizer-small.pt"
REGION_LABEL = "mvs/region"
WORKER_REPLICAS = 2

Manifest = dict[str, Any]


def _meta(name: str, component: str, region: str | None = None) -> Manifest:
    labels = {"app.kubernetes.io/name": "mvstylizer", "app.kubernetes.io/component": component}
    if region is not None:
        labels[REGION_LABEL] = region
    return {"name": name, "namespace": NAMESPACE, "labels": labels}


def _pod_labels(name: str) -> dict[str, str]:
    return {"app": name}


def _password(user: str) -> Manifest:
    return {"name": password_env(user), "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": password_env(user)}}}


def _nats_url(user: str, service: str) -> list[Manifest]:
    """MVS_NATS_URL (read by every service) with ``user``'s password, expanded by Kubernetes from the Secret."""
    url = f"nats://{user}:$({password_env(user)})@{service}:{CLIENT_PORT}"
    return [_password(user), {"name": "MVS_NATS_URL", "value": url}]


def _metrics_probe() -> Manifest:
    """Metrics listen on the pod's address (``--metrics-host 0.0.0.0``); a worker's come up once it serves."""
    return {**_http_probe("/metrics", METRICS_PORT), "failureThreshold": 6}


def _http_probe(path: str, port: int) -> Manifest:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": 10, "timeoutSeconds": 3}


def _deployment(name: str, component: str, region: str | None, replicas: int, pod: Manifest) -> Manifest:
    if region is not None:
        pod["nodeSelector"] = {REGION_LABEL: region}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, component, region),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _pod_labels(name)},
            "template": {"metadata": {"labels": _pod_labels(name)}, "spec": pod},
        },
    }


def _service(name: str, component: str, region: str | None, ports: dict[str, int]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, component, region),
        "spec": {
            "selector": _pod_labels(name),
            "ports": [{"name": port_name, "port": port, "targetPort": port} for port_name, port in ports.items()],
        },
    }


def _nats_container(config: str, env: list[Manifest], ports: dict[str, int]) -> Manifest:
    return {
        "name": "nats",
        "image": NATS_IMAGE,
        "args": ["-c", f"{NATS_CONFIG_DIR}/{config}"],
        "env": env,
        "ports": [{"name": name, "containerPort": port} for name, port in ports.items()],
        "volumeMounts": [{"name": "config", "mountPath": NATS_CONFIG_DIR}],
        "readinessProbe": _http_probe("/healthz", MONITOR_PORT),
        "livenessProbe": _http_probe("/healthz?js-enabled-only=true", MONITOR_PORT),
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
    }


def _config_volume(config: str) -> Manifest:
    return {"name": "config", "configMap": {"name": NATS_CONFIG_MAP, "items": [{"key": config, "path": config}]}}


def nats_config_map(configs: dict[str, str]) -> Manifest:
    """The servers' configs (the files of deploy/nats/)."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(NATS_CONFIG_MAP, "nats"), "data": configs}


def nats_hub(users: Sequence[str]) -> list[Manifest]:
    """The cloud hub: one replica, JetStream on a persistent volume; it authenticates every user."""
    ports = {"client": CLIENT_PORT, "leafnodes": LEAF_PORT, "monitor": MONITOR_PORT}
    container = _nats_container("hub.conf", [_password(user) for user in users], ports)
    container["volumeMounts"].append({"name": "data", "mountPath": STORE_DIR.rsplit("/", 1)[0]})
    container["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"}}
    stateful_set = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(HUB_SERVICE, "nats"),
        "spec": {
            "serviceName": HUB_SERVICE,
            "replicas": 1,
            "selector": {"matchLabels": _pod_labels(HUB_SERVICE)},
            "template": {
                "metadata": {"labels": _pod_labels(HUB_SERVICE)},
                "spec": {"containers": [container], "volumes": [_config_volume("hub.conf")]},
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
                }
            ],
        },
    }
    return [_service(HUB_SERVICE, "nats", None, ports), stateful_set]


def nats_leaf(region: str) -> list[Manifest]:
    """A region's leaf node: no JetStream; its remote URL carries the leaf user's password."""
    name = f"mvs-nats-leaf-{region}"
    remote = f"nats-leaf://{leaf_user(region)}:$({password_env(leaf_user(region))})@{HUB_SERVICE}:{LEAF_PORT}"
    env = [_password(user) for user in (gateway_user(region), worker_user(region), leaf_user(region))]
    env.append({"name": "MVS_NATS_LEAF_URL", "value": remote})
    ports = {"client": CLIENT_PORT, "monitor": MONITOR_PORT}
    container = _nats_container(f"leaf-{region}.conf", env, ports)
    container["livenessProbe"] = _http_probe("/healthz", MONITOR_PORT)  # no JetStream on a leaf
    pod = {"containers": [container], "volumes": [_config_volume(f"leaf-{region}.conf")]}
    return [_service(name, "nats", region, ports), _deployment(name, "nats", region, 1, pod)]


def workers(region: str) -> Manifest:
    """A region's stylizer workers: scale with ``replicas``; each retrains when idle (federated learning)."""
    name = f"mvs-worker-{region}"
    container = {
        "name": "worker",
        "image": IMAGE,
        "command": ["mvs", "worker"],
        "args": [
            "--region",
            region,
            "--js-domain",
            HUB_DOMAIN,
            "--model",
            "dnn",
            "--threads",
            "1",
            "--metrics-port",
            str(METRICS_PORT),
            "--metrics-host",
            "0.0.0.0",
            "--federated-dir",
            BUFFER_DIR,
            "--log-level",
            "info",
        ],
        "env": _nats_url(worker_user(region), f"mvs-nats-leaf-{region}"),
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "startupProbe": _metrics_probe(),
        "readinessProbe": _metrics_probe(),
        "livenessProbe": _metrics_probe(),
        "volumeMounts": [{"name": "buffer", "mountPath": BUFFER_DIR}],
    }
    pod = {"containers": [container], "volumes": [{"name": "buffer", "emptyDir": {}}]}
    return _deployment(name, "worker", region, WORKER_REPLICAS, pod)


def gateway(region: str) -> list[Manifest]:
    """A region's gateway on the node's network: WebRTC media reaches it on the node's address (no TURN)."""
    name = f"mvs-gateway-{region}"
    container = {
        "name": "gateway",
        "image": IMAGE,
        "command": ["mvs", "gateway"],
        "args": [
            "--region",
            region,
            "--js-domain",
            HUB_DOMAIN,
            "--host",
            "0.0.0.0",
            "--port",
            str(DEFAULT_HTTP_PORT),
            "--ice-host",
            "$(NODE_IP)",
            "--log-level",
            "info",
        ],
        "env": [
            {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            *_nats_url(gateway_user(region), f"mvs-nats-leaf-{region}"),
        ],
        "ports": [{"name": "signaling", "containerPort": DEFAULT_HTTP_PORT}],
        "readinessProbe": _http_probe("/healthz", DEFAULT_HTTP_PORT),
        "livenessProbe": _http_probe("/metrics", DEFAULT_HTTP_PORT),
        "resources": {"requests": {"cpu": "1", "memory": "512Mi"}},
    }
    pod = {"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet", "containers": [container]}
    deployment = _deployment(name, "gateway", region, 1, pod)
    # Two gateways cannot share a node's port: replace in place rather than surge.
    deployment["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return [_service(name, "gateway", region, {"signaling": DEFAULT_HTTP_PORT}), deployment]


def aggregator() -> Manifest:
    """The cloud aggregator: exactly one (Recreate), its state is in JetStream (round KV, model store)."""
    name = "mvs-aggregator"
    container = {
        "name": "aggregator",
        "image": IMAGE,
        "command": ["mvs", "aggregator"],
        "args": [
            "--init",
            INIT_WEIGHTS,
            "--min-updates",
            "2",
            "--metrics-port",
            str(METRICS_PORT),
            "--metrics-host",
            "0.0.0.0",
            "--log-level",
            "info",
        ],
        "env": _nats_url(AGGREGATOR_USER, HUB_SERVICE),
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "livenessProbe": _metrics_probe(),
    }
    deployment = _deployment(name, "aggregator", None, 1, {"containers": [container]})
    deployment["spec"]["strategy"] = {"type": "Recreate"}
    return deployment


def _list(items: list[Manifest]) -> Manifest:
    return {"apiVersion": "v1", "kind": "List", "items": items}


def manifests(regions: Sequence[Region], source: str) -> dict[str, Manifest]:
    """File name -> manifest, for every part of the deployment."""
    files: dict[str, Manifest] = {
        "00-namespace.yaml": {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        "nats-config.yaml": nats_config_map(deployment_configs(regions, source)),
        "nats-hub.yaml": _list(nats_hub(hub_auth(regions).user_names())),
        "aggregator.yaml": aggregator(),
    }
    for region in regions:
        if region.nats == "leaf":
            files[f"nats-leaf-{region.name}.yaml"] = _list(nats_leaf(region.name))
        files[f"workers-{region.name}.yaml"] = workers(region.name)
        files[f"gateway-{region.name}.yaml"] = _list(gateway(region.name))
    return files


def render(manifest: Manifest) -> str:
    """A manifest as file text (JSON, which YAML includes)."""
    return json.dumps(manifest, indent=2) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """CLI of the manifest writer."""
    p = argparse.ArgumentParser(prog="python -m deploy.k8s_manifests", description=__doc__.splitlines()[0])
    p.add_argument("--regions", type=Path, default=DEFAULT_REGIONS_FILE, help="regions file (TOML)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory of the manifests")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the manifests are stale")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = build_parser().parse_args(argv)
    files = {name: render(m) for name, m in manifests(load_regions(args.regions), args.regions.name).items()}
    write_generated(files, args.out, ".yaml", "python -m deploy.k8s_manifests", args.check)


if __name__ == "__main__":
    main()
