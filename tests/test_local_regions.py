"""deploy/regions.toml and ``mvs local``: the regions file parses, bad files are clear errors, and a
file's regions start (leaf and hub regions, permissions on) with every gateway able to stylize."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shlex
import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp
import nats
import numpy as np
import pytest

from deploy.local_deployment import LocalConfig, LocalDeployment, build_parser, config_from_args, federated_init
from deploy.nats_auth import AGGREGATOR_USER, password_env, worker_id, worker_user
from deploy.nats_servers import HUB_DOMAIN, NatsHubAndLeaves, NatsServer
from deploy.regions import DEFAULT_REGIONS_FILE, Region, RegionsError, load_regions, parse_regions
from deploy.worker_site import WorkerSite
from edge_worker.__main__ import build_parser as worker_parser
from edge_worker.__main__ import config_from_args as worker_config
from edge_worker.export_weights import learned_weights
from edge_worker.service import WorkerConfig
from mobile_sim.client import Phone, PhoneConfig
from mobile_sim.link_shim import LinkProfile
from streaming.ice import LOOPBACK
from streaming.model_store import DeltaStore, submit_delta

REGIONS = """
[[regions]]
name = "edge"
link = { delay_ms = 20, kbps = 8000 }

[[regions]]
name = "cloud"
nats = "hub"
workers = 1
"""


def test_the_deployment_regions_file_parses() -> None:
    regions = load_regions(DEFAULT_REGIONS_FILE)
    assert [r.name for r in regions] == ["eu", "us"] and {r.nats for r in regions} == {"leaf"}
    assert all(r.gateway_port > 0 and r.workers >= 1 and r.link is not None for r in regions)
    assert regions[1].phone_link_flags()[:2] == ["--link-delay-ms", "45"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[regions]]\nname = 'eu'\ngateway = 8080\n", "unknown key(s) ['gateway']"),
        ("[[regions]]\nname = 'eu'\n[[regions]]\nname = 'eu'\n", "distinct"),
        ("", "at least one"),
        ("[[regions]]\nname = 'eu'\nnats = 'cluster'\n", "nats must be one of"),
        ("[[regions]]\nname = 'e.u'\n", "region must be"),
        ("[[regions]]\nname = 'eu'\nworkers = '2'\n", "workers must be an integer"),
        ("[[regions]]\nname = 'eu'\nlink = { delay = 5 }\n", "link: unknown key(s) ['delay']"),
        ("[[regions]]\nname = 'eu'\nlink = { loss = 1.5 }\n", "invalid link profile"),
        ("[[regions]\nname = 'eu'\n", "test.toml"),
    ],
)
def test_bad_regions_files_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(RegionsError, match="test.toml") as error:
        parse_regions(text, "test.toml")
    assert message in str(error.value)


def test_region_flags_are_the_other_input() -> None:
    config = config_from_args(build_parser().parse_args(["--region", "a", "--region", "b", "--gateway-port", "9000"]))
    assert [(r.name, r.gateway_port, r.nats) for r in config.regions] == [("a", 9000, "leaf"), ("b", 9001, "leaf")]
    assert not config.secure  # permissions are opt-in
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--region", "a", "--regions", "deploy/regions.toml"])
    with pytest.raises(ValueError, match="trainable model"):  # before anything starts
        config_from_args(build_parser().parse_args(["--federated", "--model", "color-transfer"]))


def test_the_workers_model_flags_are_the_workers_own_and_reach_an_added_worker() -> None:
    argv = ["--region", "a", "--model", "dnn", "--work-size", "256", "--precision", "fp32", "--threads", "2"]
    config = config_from_args(build_parser().parse_args([*argv, "--federated"]))
    assert (config.worker.model, config.worker.work_size, config.worker.precision) == ("dnn", 256, "fp32")
    site = WorkerSite(
        "nats://127.0.0.1:4222",
        dataclasses.replace(config.worker, region="a", js_domain=HUB_DOMAIN),
        federated_dir=Path("/buffers"),
    )
    # What the summary prints after "more worker:" is what the site starts its workers with, the next id.
    worker = worker_config(worker_parser().parse_args(site.worker_flags(site.next_worker_id())))
    assert (worker.model, worker.work_size, worker.precision, worker.threads) == ("dnn", 256, "fp32", 2)
    assert worker.region == "a" and worker.worker_id == "a-worker-0" and worker.js_domain == HUB_DOMAIN
    assert worker.federated is not None and worker.federated.buffer_dir == Path("/buffers/a-worker-0")


@pytest.mark.slow
async def test_mvs_local_starts_the_regions_of_a_file_with_permissions(tmp_path: Path) -> None:
    path = tmp_path / "regions.toml"
    path.write_text(REGIONS)
    state = tmp_path / "state"
    flags = ["--regions", str(path), "--secure", "--state-dir", str(state)]
    config = config_from_args(build_parser().parse_args(flags))
    assert config.regions[0].link == LinkProfile(delay_ms=20, kbps=8000)
    deployment = LocalDeployment(config)
    await deployment.start()
    try:
        assert deployment.nats is not None and set(deployment.nats.leaves) == {"edge"}  # "cloud" is on the hub
        assert deployment.nats_ca is not None and deployment.secrets is not None
        assert deployment.gateway_ca == state / "ca.pem"  # the gateways' CA is the kept one
        https = ssl.create_default_context(cafile=str(deployment.gateway_ca))
        async with aiohttp.ClientSession() as http:
            for name, gateway in deployment.gateways.items():
                assert gateway.url.startswith("https://")
                async with http.get(f"{gateway.url}/healthz", ssl=https) as response:
                    assert response.status == 200 and (await response.json())["workers"] == [f"{name}-worker-0"]
                offer = {"Content-Type": "application/json"}
                async with http.post(f"{gateway.url}/offer", data=b"{}", headers=offer, ssl=https) as response:
                    assert response.status == 401  # no admission token
        summary = deployment.summary()
        # A static Prometheus configuration of exactly the printed metrics URLs, with the alert rules.
        assert f"prometheus --config.file={deployment.prometheus_config}" in summary
        scraped = json.loads(deployment.prometheus_config.read_text())
        printed = {url for name in deployment.gateways for url in deployment.metrics_urls(name)}
        targets = {
            f"{job['scheme']}://{target}{job['metrics_path']}"
            for job in scraped["scrape_configs"]
            for group in job["static_configs"]
            for target in group["targets"]
        }
        assert targets == printed
        if shutil.which("promtool") is not None or os.environ.get("CI", "").lower() == "true":
            done = subprocess.run(
                ["promtool", "check", "config", str(deployment.prometheus_config)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0 and "SUCCESS: 4 rules found" in done.stdout, done.stdout + done.stderr
        more = next(line for line in summary.splitlines() if "more worker:" in line and "--region edge" in line)
        added = worker_parser().parse_args(shlex.split(more.split("mvs worker", 1)[1].rstrip(")")))
        assert added.region == "edge" and added.worker_id == "edge-worker-1" and added.js_domain == HUB_DOMAIN
        assert str(deployment.secrets.worker_env_file("edge-worker-1")) in more  # the spare worker's own user
        assert "--region edge --ice-host 127.0.0.1 --link-delay-ms 20 --link-kbps 8000" in summary
        async with aiohttp.ClientSession() as http:
            for name in deployment.gateways:  # each region's metrics: its gateway's and each worker's, all live
                urls = deployment.metrics_urls(name)
                assert len(urls) == 2 and f"metrics:     {' '.join(urls)}" in summary
                for url, family in zip(urls, ("mvs_gateway_key_seconds", "mvs_worker_inference_seconds"), strict=True):
                    async with http.get(url, ssl=https) as response:  # the gateway's beside its HTTPS /offer
                        assert response.status == 200 and f"# TYPE {family} histogram" in await response.text()
        # No secret is printed: the summary names the files that hold them (mode 0600).
        passwords = deployment.nats.credentials.passwords.values()  # type: ignore[union-attr]
        assert not [p for p in passwords if p in summary] and deployment.secrets.token_secret not in summary
        for path in deployment.secrets.directory.iterdir():
            assert path.stat().st_mode & 0o777 == 0o600 and str(path) in summary, path
        assert "mvs token" in summary and str(deployment.secrets.phone_token_file) in summary
        # Every NATS link is TLS: a plain client is turned away.
        with pytest.raises(Exception):  # noqa: B017 - nats-py raises assorted errors for a TLS mismatch
            await nats.connect(deployment.nats.hub.url.replace("tls://", "nats://"), allow_reconnect=False)
        # Each server has only its own users' passwords in its environment.
        edge_env = _environment(deployment.nats.leaves["edge"])
        edge_worker, cloud_worker = worker_user(worker_id("edge", 0)), worker_user(worker_id("cloud", 0))
        assert password_env(edge_worker) in edge_env and password_env(cloud_worker) not in edge_env
        assert password_env(AGGREGATOR_USER) not in edge_env
        servers = [deployment.nats.hub, *deployment.nats.leaves.values()]
        assert not [line for s in servers for line in s.log_path.read_text().splitlines() if "Violation" in line]
        # A phone with the token and the CA streams through the secured edge region.
        token = deployment.secrets.phone_token_file.read_text().strip()
        phone = PhoneConfig(
            gateway_urls=(deployment.gateways["edge"].url,),
            gateway_ca=deployment.gateway_ca,
            gateway_token=token,
            frames=8,
            size=(160, 90),
            region="edge",
            ice_hosts=LOOPBACK,
        )
        report = (await Phone(phone).run()).report
        assert report["frames"]["output"] == 8 and report["key_frames"]["ok"] > 0, report["key_frames"]
    finally:
        await deployment.stop()
    assert not deployment.secrets.directory.exists()


def _environment(server: NatsServer) -> set[str]:
    """Names of the variables in a running server's environment."""
    assert server._proc is not None
    raw = Path(f"/proc/{server._proc.pid}/environ").read_bytes()
    return {item.split(b"=", 1)[0].decode() for item in raw.split(b"\0") if item}


@pytest.mark.slow
async def test_mvs_local_federated_says_its_rounds_and_serves_the_aggregators_metrics() -> None:
    """The aggregator in ``mvs local --federated``: its metrics URL in the summary (its series only, the gateways
    export theirs) and a line per delta and per published version. Deltas here come from a stand-in edge (no
    retraining worker: that takes minutes), through the same store and stream a worker uses."""
    lines: asyncio.Queue[str] = asyncio.Queue()
    config = LocalConfig(regions=[Region("fl", gateway_port=0)], worker=WorkerConfig(model="dnn"), federated=True)
    deployment = LocalDeployment(config, say=lines.put_nowait)
    deployment.nats = NatsHubAndLeaves(["fl"]).start()
    try:
        await deployment._start_aggregator(federated_init("dnn"))  # noqa: SLF001 (alone: workers take minutes)
        assert deployment.aggregator_metrics_url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http, http.get(deployment.aggregator_metrics_url) as response:
            text = await response.text()
        assert "mvs_aggregator_version 0.0" in text and "mvs_gateway_" not in text
        nc = await nats.connect(deployment.url("fl", worker_user(worker_id("fl", 0))))
        try:
            js = nc.jetstream(domain=HUB_DOMAIN)
            weights = learned_weights(str(federated_init("dnn")))
            delta = {name: np.zeros_like(w, dtype=np.float16) for name, w in weights.items()}
            for worker in ("w0", "w1"):
                await submit_delta(js, DeltaStore(js, "fl"), worker_id=worker, base_version=0, samples=4, delta=delta)
                if worker == "w0":
                    assert (
                        await asyncio.wait_for(lines.get(), 30) == "aggregator: 1 of 2 delta(s) in for the next version"
                    )
            said = await asyncio.wait_for(lines.get(), 30)
        finally:
            await nc.close()
        assert said.startswith("aggregator: published v1 from 2 delta(s) (8 samples")
    finally:
        await deployment.stop()
