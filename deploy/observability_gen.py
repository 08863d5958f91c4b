"""``python -m deploy.observability_gen``: what an operator opens to watch the regions, in ``deploy/observability/``.

- ``prometheus.yml``: a Prometheus scrape configuration with one job per service (gateway, worker, aggregator).
  Targets are found in Kubernetes (pod role, namespace ``mvs``): a pod is scraped when its template carries the
  ``prometheus.io/*`` annotations of :func:`scrape_annotations`, which ``deploy/k8s_manifests.py`` puts on every
  service pod; the job is chosen by the pod's ``app`` label (``mvs-gateway-<region>``, ...).
- ``alerts.yml``: alerting rules (:func:`alert_rules`): a region's round trip p95 over 250 ms, key frames failing
  (over 2 %), keys finding no worker, a service's NATS connection down. ``mvs local`` writes a static scrape
  configuration of its own processes that loads them (:func:`local_prometheus_config`).
- ``mvs-regions.json``: a Grafana dashboard: the round trip the phones measured (p50/p95/p99) per region, the
  site's own key time, the hop split, key frames ok/failed, worker inference, queue wait, queue depth and batch
  size, sessions per gateway. Region is a label of every series (the services label their metrics with it).

Both are JSON (JSON is YAML: Prometheus reads the file as is). ``--check`` fails when they are stale; the test
runs ``promtool check config`` on the scrape configuration and ``promtool check rules`` on every dashboard query.
The NATS servers are not scraped: they serve JSON monitoring (``/varz``), not Prometheus; the
prometheus-nats-exporter sidecar would turn it into metrics and is not part of these manifests.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploy.nats_config import NAMESPACE, write_generated
from mobile_sim.report import LIVE_KEYS_OK
from streaming.protocol import ErrorCode

DEFAULT_OUT = Path(__file__).with_name("observability")
SCRAPE_INTERVAL = "15s"
METRICS_PATH = "/metrics"
SCRAPE_ANNOTATION = "prometheus.io/scrape"
PORT_ANNOTATION = "prometheus.io/port"
PATH_ANNOTATION = "prometheus.io/path"
SERVICES = {"gateway": "mvs-gateway-", "worker": "mvs-worker-", "aggregator": "mvs-aggregator"}
"""Scrape job (``mvs-<service>``) -> prefix of the ``app`` label of its pods (``deploy/k8s_manifests.py``)."""
DASHBOARD_UID = "mvs-regions"
QUANTILES = (0.5, 0.95, 0.99)
RATE = "$__rate_interval"
REGION = 'region=~"$region"'

Json = dict[str, Any]


def scrape_annotations(port: int, path: str = METRICS_PATH) -> dict[str, str]:
    """Pod annotations that make :func:`prometheus_config`'s jobs scrape ``http://<pod>:<port><path>``."""
    return {SCRAPE_ANNOTATION: "true", PORT_ANNOTATION: str(port), PATH_ANNOTATION: path}


def _meta(annotation: str) -> str:
    """Prometheus' meta label of a pod annotation (non-alphanumerics become ``_``)."""
    return "__meta_kubernetes_pod_annotation_" + "".join(c if c.isalnum() else "_" for c in annotation)


def scrape_job(service: str, app_prefix: str) -> Json:
    """One service's job: annotated pods of the namespace whose ``app`` label starts with ``app_prefix``."""
    return {
        "job_name": f"mvs-{service}",
        "scrape_interval": SCRAPE_INTERVAL,
        "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [NAMESPACE]}}],
        "relabel_configs": [
            {"source_labels": [_meta(SCRAPE_ANNOTATION)], "action": "keep", "regex": "true"},
            {"source_labels": ["__meta_kubernetes_pod_label_app"], "action": "keep", "regex": f"{app_prefix}.*"},
            {
                "source_labels": [_meta(PATH_ANNOTATION)],
                "action": "replace",
                "regex": "(.+)",
                "target_label": "__metrics_path__",
            },
            {
                "source_labels": ["__address__", _meta(PORT_ANNOTATION)],
                "action": "replace",
                "regex": r"([^:]+)(?::\d+)?;(\d+)",
                "replacement": "$1:$2",
                "target_label": "__address__",
            },
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
        ],
    }


def prometheus_config() -> Json:
    """The scrape configuration: one job per service of :data:`SERVICES`."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [scrape_job(service, prefix) for service, prefix in SERVICES.items()],
    }


ALERTS_FILE = "alerts.yml"
ROUND_TRIP_P95_TARGET_S = 0.25
"""A region's key round trip p95 bound (issue 13's live target, bench.live)."""
KEY_FAILURE_TARGET = round(1 - LIVE_KEYS_OK, 4)
"""Share of key frames that may fail (the live rate's keys-ok bound, mobile_sim.report)."""
ALERT_WINDOW = "5m"


def alert_rules() -> Json:
    """Alerting rules: a region's round trip p95 over its target, key frames failing, keys finding no worker, a
    service's NATS connection down (each has a ``promtool test rules`` case in tests/test_observability.py)."""
    keys = "mvs_gateway_key_frames_total"
    round_trip = f'mvs_gateway_phone_key_seconds_bucket{{part="round_trip"}}[{ALERT_WINDOW}]'
    rules = [
        (
            "MvsRoundTripP95OverTarget",
            f"histogram_quantile(0.95, sum by (le, region) (rate({round_trip}))) > {ROUND_TRIP_P95_TARGET_S}",
            ALERT_WINDOW,
            f"key round trip p95 of region {{{{ $labels.region }}}} over {ROUND_TRIP_P95_TARGET_S * 1000:g} ms",
        ),
        (
            "MvsKeyFramesFailing",
            f'sum by (region) (rate({keys}{{outcome!="ok"}}[{ALERT_WINDOW}])) / sum by (region) '
            f"(rate({keys}[{ALERT_WINDOW}])) > {KEY_FAILURE_TARGET}",
            ALERT_WINDOW,
            f"over {KEY_FAILURE_TARGET:.0%} of region {{{{ $labels.region }}}}'s key frames fail",
        ),
        (
            "MvsNoWorkers",
            f'sum by (region) (rate({keys}{{outcome="{ErrorCode.NO_WORKERS}"}}[1m])) > 0',
            "1m",
            "key frames of region {{ $labels.region }} find no stylizer worker",
        ),
        (
            "MvsNatsDisconnected",
            "mvs_nats_connected == 0",
            "1m",
            "{{ $labels.job }} {{ $labels.instance }} has lost its NATS server",
        ),
    ]
    return {
        "groups": [
            {
                "name": "mvs",
                "rules": [
                    {"alert": name, "expr": expr, "for": wait, "annotations": {"summary": summary}}
                    for name, expr, wait, summary in rules
                ],
            }
        ]
    }


def local_prometheus_config(targets: dict[str, list[str]], rules: str | None = None, ca: str | None = None) -> Json:
    """A scrape configuration with static targets (``mvs local``): ``targets`` maps a service of :data:`SERVICES`
    to its metrics URLs; ``rules``: an alert rules file to load; ``ca``: the CA of https targets' certificates."""
    jobs = []
    for service, urls in targets.items():
        if not urls:
            continue
        schemes = {url.split("://", 1)[0] for url in urls}
        assert len(schemes) == 1, f"one scheme per job: {urls}"
        job: Json = {
            "job_name": f"mvs-{service}",
            "scrape_interval": SCRAPE_INTERVAL,
            "scheme": schemes.pop(),
            "metrics_path": METRICS_PATH,
            "static_configs": [{"targets": [url.split("://", 1)[1].split("/", 1)[0] for url in urls]}],
        }
        if job["scheme"] == "https" and ca is not None:
            job["tls_config"] = {"ca_file": ca}
        jobs.append(job)
    config: Json = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": jobs,
    }
    if rules is not None:
        config["rule_files"] = [rules]
    return config


def _quantile(q: float, metric: str, by: str = "region", match: str = REGION) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{match}}}[{RATE}])))"


def _mean(metric: str, by: str, match: str = REGION) -> str:
    total, count = (f"sum by ({by}) (rate({metric}_{kind}{{{match}}}[{RATE}]))" for kind in ("sum", "count"))
    return f"{total} / {count}"


def _target(expr: str, legend: str, ref: int) -> Json:
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    return {"datasource": datasource, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + ref)}


def _panel(title: str, description: str, targets: list[tuple[str, str]], unit: str, *, stacked: bool = False) -> Json:
    custom: Json = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 40 if stacked else 0}
    if stacked:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}},
        "targets": [_target(expr, legend, i) for i, (expr, legend) in enumerate(targets)],
    }


def _quantiles(metric: str, match: str = REGION) -> list[tuple[str, str]]:
    return [(_quantile(q, metric, match=match), f"{{{{region}}}} p{round(q * 100)}") for q in QUANTILES]


def panels() -> list[Json]:
    """The dashboard's panels, two per row, in reading order."""
    phone = "mvs_gateway_phone_key_seconds"
    found = [
        _panel(
            "Key-frame round trip the user sees, by region",
            "Capture on the phone -> stylized result decoded on the phone, as the phones measured and reported it "
            "(KeyLatency over the data channel).",
            _quantiles(phone, f'{REGION}, part="round_trip"'),
            "s",
        ),
        _panel(
            "Key-frame time at the site, by region",
            "Decoded at the gateway -> result handed to the data channel (gateway's own clock).",
            _quantiles("mvs_gateway_key_seconds"),
            "s",
        ),
        _panel(
            "Round trip split as the user sees it (mean per key, stacked)",
            "uplink (phone -> gateway), queue (gateway JPEG, NATS, worker queue), inference, downlink (worker -> "
            "phone decoded). Means add up to the mean round trip; quantiles would not.",
            [(_mean(phone, "region, part", f'{REGION}, part!="round_trip"'), "{{region}} {{part}}")],
            "s",
            stacked=True,
        ),
        _panel(
            "Gateway hops (mean per key, stacked)",
            "queue (waiting for a dispatcher, JPEG encode), nats (request -> reply, retry included), send (result "
            "paced onto the data channel).",
            [(_mean("mvs_gateway_key_hop_seconds", "region, hop"), "{{region}} {{hop}}")],
            "s",
            stacked=True,
        ),
        _panel(
            "Key frames ok / failed per region",
            "Outcomes at the gateway: ok, or the error code (timeout, no_workers, lost, dropped, ...).",
            [
                (
                    f'sum by (region) (rate(mvs_gateway_key_frames_total{{{REGION}, outcome="ok"}}[{RATE}]))',
                    "{{region}} ok",
                ),
                (
                    f'sum by (region, outcome) (rate(mvs_gateway_key_frames_total{{{REGION}, outcome!="ok"}}[{RATE}]))',
                    "{{region}} {{outcome}}",
                ),
            ],
            "ops",
        ),
        _panel(
            "Worker inference and queue wait p95, by region",
            "mvs_worker_inference_seconds: the stylizer per key; mvs_worker_queue_wait_seconds: arrival -> start of "
            "its batch.",
            [
                (_quantile(0.95, "mvs_worker_inference_seconds"), "{{region}} inference p95"),
                (_quantile(0.95, "mvs_worker_queue_wait_seconds"), "{{region}} queue wait p95"),
            ],
            "s",
        ),
        _panel(
            "Worker queue depth, by region",
            "Requests waiting for an inference thread, summed over the region's workers.",
            [(f"sum by (region) (mvs_worker_queue_depth{{{REGION}}})", "{{region}}")],
            "short",
        ),
        _panel(
            "Worker batch size (mean), by region",
            "Requests per stylizer run (1 unless workers run with --max-batch).",
            [(_mean("mvs_worker_batch_size", "region"), "{{region}}")],
            "short",
        ),
        _panel(
            "Sessions per gateway",
            "Phones connected to each gateway.",
            [(f"sum by (region, pod) (mvs_gateway_sessions{{{REGION}}})", "{{region}} {{pod}}")],
            "short",
        ),
    ]
    for i, panel in enumerate(found):
        panel["id"] = i + 1
        panel["gridPos"] = {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)}
    return found


def dashboard() -> Json:
    """The Grafana dashboard (import it, or provision it from this file)."""
    return {
        "uid": DASHBOARD_UID,
        "title": "MVStylizer: latency per region",
        "description": "Key-frame latency as users and sites see it, outcomes and worker load, per region "
        "(generated by python -m deploy.observability_gen).",
        "tags": ["mvstylizer"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "templating": {
            "list": [
                {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
                {
                    "name": "region",
                    "label": "region",
                    "type": "query",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": {"query": "label_values(mvs_gateway_key_frames_total, region)", "refId": "regions"},
                    "definition": "label_values(mvs_gateway_key_frames_total, region)",
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                },
            ]
        },
        "annotations": {"list": []},
        "panels": panels(),
    }


def files() -> dict[str, str]:
    """File name -> text of ``deploy/observability/``."""
    return {
        "prometheus.yml": json.dumps(prometheus_config(), indent=2) + "\n",
        "mvs-regions.json": json.dumps(dashboard(), indent=2) + "\n",
        ALERTS_FILE: json.dumps(alert_rules(), indent=2) + "\n",
    }


def queries(board: Json) -> list[str]:
    """Every PromQL expression of a dashboard: its panels' targets, and the series selector of each query variable
    (Grafana's ``label_values(<selector>, <label>)`` is not PromQL)."""
    exprs = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            selector, _label = variable["definition"].removeprefix("label_values(").removesuffix(")").rsplit(",", 1)
            exprs.append(selector.strip())
    return exprs


def build_parser() -> argparse.ArgumentParser:
    """CLI of the writer."""
    p = argparse.ArgumentParser(prog="python -m deploy.observability_gen", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory of the files")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the files are stale")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = build_parser().parse_args(argv)
    write_generated(files(), args.out, "", "python -m deploy.observability_gen", args.check)


if __name__ == "__main__":
    main()
