"""deploy/observability/: the scrape configuration and the dashboard are current, valid for Prometheus (promtool)
and about metrics the services really export, and the Kubernetes pods carry the annotations the jobs look for."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import aggregator.service  # noqa: F401  (registers the aggregator's metrics)
import edge_worker.service  # noqa: F401  (the worker's)
import streaming.gateway.server  # noqa: F401  (the gateway's)
from deploy import k8s_manifests, observability_gen
from deploy.nats_config import NAMESPACE

OUT = observability_gen.DEFAULT_OUT
PROMTOOL_MISSING = "promtool not installed: apt-get install -y prometheus (Debian's package ships promtool)"
METRIC = re.compile(r"\b(mvs_[a-z_]+)")
BY = re.compile(r"by \(([^)]*)\)")
TARGET_LABELS = {"le", "pod", "node", "instance", "job"}
"""Labels a query may group by besides the metric's own: histogram buckets' and those the scrape adds."""


def _exported() -> dict[str, set[str]]:
    """Every sample name the services can export -> its label names."""
    names: dict[str, set[str]] = {}
    for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001  (the registry's collectors, even unobserved)
        for family in collector.describe() if hasattr(collector, "describe") else []:
            labels = set(getattr(collector, "_labelnames", ()))
            suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}.get(family.type, ("",))
            for suffix in suffixes:
                names[family.name + suffix] = labels
    return names


def _dashboard() -> dict[str, Any]:
    return json.loads((OUT / "mvs-regions.json").read_text())


def _config() -> dict[str, Any]:
    return json.loads((OUT / "prometheus.yml").read_text())  # JSON is YAML


def test_the_files_are_generated_and_current() -> None:
    observability_gen.main(["--check"])
    assert {p.name for p in OUT.iterdir()} == set(observability_gen.files())


def test_every_dashboard_query_is_about_metrics_and_labels_the_services_export() -> None:
    exported = _exported()
    queries = observability_gen.queries(_dashboard())
    used: set[str] = set()
    for expr in queries:
        metrics = METRIC.findall(expr)
        assert metrics, expr
        unknown = [m for m in metrics if m not in exported]
        assert not unknown, f"{expr}: {unknown} is exported by no service"
        labels = set().union(*(exported[m] for m in metrics)) | TARGET_LABELS
        for group in BY.findall(expr):
            assert {label.strip() for label in group.split(",")} <= labels, expr
        used |= {m.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for m in metrics}
    # What the issue asks an operator to see: user round trip, hops, outcomes, worker load, batches, sessions.
    wanted = {
        "mvs_gateway_phone_key_seconds",
        "mvs_gateway_key_seconds",
        "mvs_gateway_key_hop_seconds",
        "mvs_gateway_key_frames_total",
        "mvs_worker_inference_seconds",
        "mvs_worker_queue_wait_seconds",
        "mvs_worker_queue_depth",
        "mvs_worker_batch_size",
        "mvs_gateway_sessions",
    }
    assert wanted <= used, wanted - used
    panels = _dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels) and all(p["targets"] for p in panels)


@pytest.mark.skipif(shutil.which("promtool") is None, reason=PROMTOOL_MISSING)
def test_promtool_accepts_every_dashboard_query(tmp_path: Path) -> None:
    """Each query as a recording rule (Grafana's variables replaced by what they expand to)."""
    rules = [
        {"record": f"mvs:dashboard:{i}", "expr": expr.replace("$__rate_interval", "1m").replace("$region", ".*")}
        for i, expr in enumerate(observability_gen.queries(_dashboard()))
    ]
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason=PROMTOOL_MISSING)
def test_promtool_accepts_the_scrape_configuration(tmp_path: Path) -> None:
    """Debian's Prometheus is built without Kubernetes discovery, so its promtool rejects ``kubernetes_sd_configs``:
    the check runs on the same jobs with a static target instead (relabelling, regexes, intervals all checked),
    and the discovery block is checked by hand."""
    config = _config()
    for job in config["scrape_configs"]:
        (sd,) = job["kubernetes_sd_configs"]
        assert sd == {"role": "pod", "namespaces": {"names": [NAMESPACE]}}
    static = copy.deepcopy(config)
    for job in static["scrape_configs"]:
        job["static_configs"] = [{"targets": ["127.0.0.1:9100"]}]
        del job["kubernetes_sd_configs"]
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(static))
    done = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def _relabel(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus' keep/replace relabelling (anchored regexes, ``;``-joined sources): the target, or None if dropped."""
    labels = dict(labels)
    for rule in rules:
        value = ";".join(labels.get(name, "") for name in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if rule.get("action", "replace") == "keep":
            if match is None:
                return None
        elif match is not None:
            labels[rule["target_label"]] = match.expand(re.sub(r"\$(\d+)", r"\\\1", rule.get("replacement", "$1")))
    return labels


def _pod_targets(job: dict[str, Any]) -> dict[str, str]:
    """app label -> scraped address:path of every generated pod the job keeps (pod IP 10.0.0.1, port-less)."""
    kept = {}
    for path in sorted(k8s_manifests.DEFAULT_OUT.glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj["kind"] not in ("Deployment", "StatefulSet"):
                continue
            meta = obj["spec"]["template"]["metadata"]
            labels = {"__address__": "10.0.0.1", "__metrics_path__": "/metrics", "__meta_kubernetes_pod_name": "p"}
            labels["__meta_kubernetes_pod_label_app"] = meta["labels"]["app"]
            for key, value in meta.get("annotations", {}).items():
                labels[observability_gen._meta(key)] = value  # noqa: SLF001
            target = _relabel(job["relabel_configs"], labels)
            if target is not None:
                kept[meta["labels"]["app"]] = target["__address__"] + target["__metrics_path__"]
    return kept


def _metrics_port(container: dict[str, Any]) -> int:
    args = container["args"]
    return int(args[args.index("--metrics-port") + 1]) if "--metrics-port" in args else k8s_manifests.DEFAULT_HTTP_PORT


@pytest.mark.slow
def test_each_job_scrapes_its_services_pods_on_the_port_their_metrics_listen_on() -> None:
    jobs = {job["job_name"]: job for job in _config()["scrape_configs"]}
    assert set(jobs) == {f"mvs-{service}" for service in observability_gen.SERVICES}
    ports = {}
    for path in sorted(k8s_manifests.DEFAULT_OUT.glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj["kind"] in ("Deployment", "StatefulSet"):
                (container,) = obj["spec"]["template"]["spec"]["containers"]
                if container["name"] != "nats":
                    ports[obj["spec"]["template"]["metadata"]["labels"]["app"]] = _metrics_port(container)
    scraped: dict[str, str] = {}
    for service, job in jobs.items():
        targets = _pod_targets(job)
        assert targets and not set(targets) & set(scraped), (service, targets)  # each pod in exactly one job
        scraped.update(targets)
    assert set(scraped) == set(ports)  # every service pod, and no NATS pod (they serve no Prometheus metrics)
    for app, target in scraped.items():
        assert target == f"10.0.0.1:{ports[app]}/metrics", app


def _series(labels: dict[str, str], values: str, name: str = "mvs_gateway_key_frames_total") -> dict[str, str]:
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


def _round_trip(region: str, counts: dict[str, str]) -> list[dict[str, str]]:
    """Cumulative round-trip buckets of ``region``: le -> promtool's expanding values."""
    name = "mvs_gateway_phone_key_seconds_bucket"
    return [_series({"region": region, "part": "round_trip", "le": le}, v, name) for le, v in counts.items()]


ALERT_CASES: dict[str, tuple[list[dict[str, str]], list[dict[str, Any]]]] = {
    # eu: every key between 100 and 500 ms (p95 ~480 ms); us: all under 100 ms. Only eu fires.
    "MvsRoundTripP95OverTarget": (
        _round_trip("eu", {"0.1": "0+0x20", "0.5": "0+10x20", "+Inf": "0+10x20"})
        + _round_trip("us", {"0.1": "0+10x20", "0.5": "0+10x20", "+Inf": "0+10x20"}),
        [
            {
                "exp_labels": {"region": "eu"},
                "exp_annotations": {"summary": "key round trip p95 of region eu over 250 ms"},
            }
        ],
    ),
    # eu: 10 % of keys time out; us: none fail.
    "MvsKeyFramesFailing": (
        [
            _series({"region": "eu", "outcome": "ok"}, "0+90x20"),
            _series({"region": "eu", "outcome": "timeout"}, "0+10x20"),
            _series({"region": "us", "outcome": "ok"}, "0+100x20"),
        ],
        [{"exp_labels": {"region": "eu"}, "exp_annotations": {"summary": "over 2% of region eu's key frames fail"}}],
    ),
    "MvsNoWorkers": (
        [
            _series({"region": "eu", "outcome": "no_workers"}, "0+5x20"),
            _series({"region": "us", "outcome": "ok"}, "0+100x20"),
        ],
        [
            {
                "exp_labels": {"region": "eu"},
                "exp_annotations": {"summary": "key frames of region eu find no stylizer worker"},
            }
        ],
    ),
    # The gateway loses NATS after 2 minutes; the worker keeps it.
    "MvsNatsDisconnected": (
        [
            _series(
                {"service": "gateway", "job": "mvs-gateway", "instance": "gw:8080"}, "1 1 0x20", "mvs_nats_connected"
            ),
            _series({"service": "worker", "job": "mvs-worker", "instance": "w:9100"}, "1x20", "mvs_nats_connected"),
        ],
        [
            {
                "exp_labels": {"service": "gateway", "job": "mvs-gateway", "instance": "gw:8080"},
                "exp_annotations": {"summary": "mvs-gateway gw:8080 has lost its NATS server"},
            }
        ],
    ),
}


@pytest.mark.skipif(shutil.which("promtool") is None, reason=PROMTOOL_MISSING)
def test_promtool_accepts_the_alert_rules_and_each_fires_when_it_should(tmp_path: Path) -> None:
    rules = observability_gen.DEFAULT_OUT / observability_gen.ALERTS_FILE
    done = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "SUCCESS: 4 rules found" in done.stdout, done.stdout + done.stderr
    names = [rule["alert"] for group in observability_gen.alert_rules()["groups"] for rule in group["rules"]]
    assert sorted(names) == sorted(ALERT_CASES)
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [{"eval_time": "10m", "alertname": name, "exp_alerts": expected}],
        }
        for name, (series, expected) in ALERT_CASES.items()
    ]
    case = tmp_path / "alerts_test.yml"
    case.write_text(json.dumps({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}))
    done = subprocess.run(["promtool", "test", "rules", str(case)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
