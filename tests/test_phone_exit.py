"""``mvs phone`` ends with a summary and an exit status that say how the run went (issue 23, items 3 and 4): a run that
never streamed exits non-zero with its cause in one line (a 401 with the gateway's reason, a TLS failure naming the
CA it used, no workers; refused: tests/test_phone_resilience.py); a 401 is not retried; a run that missed the live
rate says so (``degraded``) and exits non-zero under ``--strict``. The phone runs as the user runs it, a process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deploy.certs import generate
from deploy.nats_servers import NatsServer
from edge_worker.service import StylizerWorker
from mobile_sim.__main__ import finish
from mobile_sim.client import Phone, PhoneConfig
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK
from streaming.tokens import new_secret
from tests.support import run_module

pytestmark = pytest.mark.slow  # mvs phone processes


COMMON = ("--frames", "6", "--size", "64x36", "--fps", "15", "--result-timeout-ms", "500", "--ice-host", "127.0.0.1")


async def _phone(out: Path, *argv: str) -> tuple[int, list[str], dict[str, Any]]:
    """Run ``mvs phone`` to its end: exit status, stderr lines, the report."""
    code, err = await run_module("mobile_sim", *COMMON, "--out", str(out), *argv)
    return code, err, json.loads((out / "report.json").read_text())


async def test_a_401_is_not_retried_and_its_reason_is_said(
    nats_server: NatsServer, region: str, tmp_path: Path
) -> None:
    secret = new_secret()
    config = GatewayConfig(port=0, nats_url=nats_server.url, region=region, require_token=True, token_secret=secret)
    gateway = Gateway(config)
    await gateway.start()
    try:
        code, err, report = await _phone(tmp_path, "--gateway", gateway.url)
    finally:
        await gateway.stop()
    assert code == 1, err
    refused = "gateway refused the offer (401): a bearer token is required"
    assert err[-1] == f"mvs phone: never streamed: no gateway reached: {gateway.url}: {refused}"
    assert report["counters"] == {**report["counters"], "connect_attempts": 1, "connect_failures": 1}  # not retried
    assert report["frames"]["captured"] == 0  # nothing streamed into the void


async def test_a_tls_failure_names_the_ca_it_used(nats_server: NatsServer, region: str, tmp_path: Path) -> None:
    served, other = generate(tmp_path / "served"), generate(tmp_path / "other")
    gateway = Gateway(
        GatewayConfig(
            port=0,
            nats_url=nats_server.url,
            region=region,
            tls_cert=Path(served.cert),
            tls_key=Path(served.key),
        )
    )
    await gateway.start()
    try:
        code, err, report = await _phone(tmp_path / "out", "--gateway", gateway.url, "--gateway-ca", other.ca)
    finally:
        await gateway.stop()
    prefix = f"mvs phone: never streamed: no gateway reached: TLS verification of {gateway.url} failed against "
    assert code == 1 and err[-1].startswith(prefix + f"the CA {other.ca}: "), err
    assert report["counters"]["connect_attempts"] == 1  # the same certificate fails the same way: not retried


async def test_no_workers_is_said(gateway: Gateway, tmp_path: Path) -> None:
    code, err, report = await _phone(tmp_path, "--gateway", gateway.url, "--region", gateway.config.region)
    assert code == 1, err
    assert err[-1].startswith("mvs phone: never streamed: no key frame was stylized (failed: ")
    assert "no_workers" in err[-1]
    assert report["outcome"]["status"] == "partial"


async def test_a_run_that_missed_the_live_rate_is_degraded_and_strict_exits_non_zero(
    worker: StylizerWorker, gateway: Gateway, region: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = PhoneConfig(
        gateway_urls=(gateway.url,),
        frames=30,
        size=(160, 90),
        fps=15.0,
        key_interval=5,
        region=region,
        ice_hosts=LOOPBACK,
        out_dir=tmp_path,
        lose_frames=frozenset({10}),  # one of 6 keys lost on the way: 83 % of keys ok, below 98 %
    )
    report = (await Phone(config).run()).report
    assert report["outcome"]["status"] == "degraded"
    assert "live rate missed: 5 of 6 key frames ok (target >= 98%)" in report["outcome"]["reason"]
    assert json.loads((tmp_path / "report.json").read_text())["outcome"] == report["outcome"]
    finish("mvs phone", report, tmp_path, strict=False)  # said, exit 0
    summary = capsys.readouterr().out.splitlines()
    assert summary[0] == f"outcome: degraded: {report['outcome']['reason']}"
    files = ", ".join(str(tmp_path / name) for name in ("stylized.mp4", "side_by_side.mp4", "report.json"))
    assert summary[-1] == f"wrote {files}"
    with pytest.raises(SystemExit, match=r"live rate missed: .* \(--strict\)$"):
        finish("mvs phone", report, tmp_path, strict=True)
