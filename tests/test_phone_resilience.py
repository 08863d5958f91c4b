"""The phone under faults (issue 14, items 9 and 10): it notices a dead gateway and offers again, to a restarted
one on the same port or to the next in its list, with frames flowing from the last good key in between; and it
always writes its report, exiting non-zero on its own failure and when it never streamed."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from deploy.faults import loopback_phone
from deploy.nats_servers import NatsServer, free_port
from edge_worker.service import StylizerWorker
from mobile_sim.__main__ import main as phone_main
from mobile_sim.client import Phone
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK
from tests.support import wait_until

SIZE = (320, 180)
FPS = 15.0
RECONNECT_WITHIN_S = 5.0
"""The issue's target: a restarted gateway serves the phone again within 5 s of coming up."""


def _gateway(nats_server: NatsServer, region: str, port: int) -> Gateway:
    return Gateway(GatewayConfig(port=port, nats_url=nats_server.url, region=region, ice_hosts=LOOPBACK))


def _phone(urls: tuple[str, ...], region: str, frames: int, out: Path | None = None, **extra: object) -> Phone:
    return Phone(loopback_phone(urls, region, frames, size=SIZE, fps=FPS, out_dir=out, **extra))


@pytest.mark.slow
async def test_phone_reconnects_to_a_restarted_gateway_on_the_same_port(
    worker: StylizerWorker, nats_server: NatsServer, region: str, tmp_path: Path
) -> None:
    port = free_port()
    first = _gateway(nats_server, region, port)
    await first.start()
    phone = _phone((first.url,), region, frames=int(9 * FPS), out=tmp_path)
    run = asyncio.create_task(phone.run())
    second: Gateway | None = None
    try:
        await wait_until(lambda: any(r.ok for r in phone._ledger.records.values()), 10.0, "a key frame served")
        await first.stop()  # the gateway goes away mid-stream
        await asyncio.sleep(1.0)
        second = _gateway(nats_server, region, port)
        await second.start()
        up_at = time.monotonic()
        await wait_until(
            lambda: phone._link.outages and phone._link.outages[0].reconnected is not None,
            10.0,
            "the phone reconnected",
        )
        outage = phone._link.outages[0]
        assert outage.reconnected is not None and outage.reconnected - up_at < RECONNECT_WITHIN_S
        result = await asyncio.wait_for(run, 30.0)
    finally:
        run.cancel()
        await first.stop()
        if second is not None:
            await second.stop()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["outcome"] == result.report["outcome"]
    frames, outages = report["frames"], report["network"]["outages"]
    assert frames["output"] == frames["captured"]  # every frame out: from its key, or the last good one
    assert outages["count"] == 1 and outages["reconnected"] == 1 and outages["reconnect_s"][0] > 0
    ok_after = [k for k in report["per_key"] if k["ok"] and k["worker_id"] and k["frame_id"] > int(5 * FPS)]
    assert ok_after, "no key frame was stylized after the reconnection"
    assert report["outcome"]["status"] == "partial" and "gateway lost" in report["outcome"]["reason"]


@pytest.mark.slow
async def test_phone_moves_to_the_next_gateway_when_its_first_is_gone(
    worker: StylizerWorker, nats_server: NatsServer, region: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = _gateway(nats_server, region, 0)
    await gateway.start()
    try:
        report = (await _phone((dead, gateway.url), region, frames=int(2 * FPS)).run()).report
    finally:
        await gateway.stop()
    assert report["key_frames"]["ok"] > 0 and report["network"]["gateway"] == gateway.url
    assert report["counters"]["connect_failures"] >= 1 and report["outcome"]["status"] == "complete"


@pytest.mark.slow
async def test_a_phone_without_any_gateway_still_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mobile_sim.client.CONNECT_TIMEOUT_S", 1.0)
    phone = _phone((f"http://127.0.0.1:{free_port()}",), "nowhere", frames=10, out=tmp_path, result_timeout_ms=500.0)
    report = (await phone.run()).report
    assert json.loads((tmp_path / "report.json").read_text())["outcome"] == report["outcome"]
    assert report["outcome"]["status"] == "partial" and "no gateway reached" in report["outcome"]["reason"]
    assert report["frames"]["captured"] == 10 and report["key_frames"]["ok"] == 0


@pytest.mark.slow
async def test_a_phone_whose_outputs_stall_writes_a_partial_report(
    worker: StylizerWorker, gateway: Gateway, region: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 phones on 2 cores: the phone's CPU falls behind and outputs stop coming in time. The run used to die with
    a TimeoutError and no report; now it reports what it output and why it stopped."""
    phone = _phone((gateway.url,), region, frames=20, out=tmp_path, result_timeout_ms=300.0)
    add_frame = phone._reconstructor.add_frame

    def stall(frame_id: int, *args: object) -> object:  # the phone CPU stops on frame 15 for a while
        if frame_id == 15:
            time.sleep(4.0)
        return add_frame(frame_id, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(phone._reconstructor, "add_frame", stall)
    report = (await asyncio.wait_for(phone.run(), 30.0)).report
    assert report["outcome"]["status"] == "partial" and "not output" in report["outcome"]["reason"]
    assert json.loads((tmp_path / "report.json").read_text())["outcome"]["status"] == "partial"


@pytest.mark.slow
def test_the_phone_exits_non_zero_on_its_own_failure_and_when_it_never_streamed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mobile_sim.client.CONNECT_TIMEOUT_S", 1.0)  # the phone waited 15 s for a refused gateway
    dead = f"http://127.0.0.1:{free_port()}"
    common = ["--gateway", dead, "--frames", "3", "--size", "64x36", "--result-timeout-ms", "200"]
    # Its own failure: a style that does not exist is refused in one line before anything runs (nothing to report).
    with pytest.raises(SystemExit) as own:
        phone_main([*common, "--style", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "own")])
    assert own.value.code == 2 and "missing.jpg" in capsys.readouterr().err
    assert not (tmp_path / "own").exists()
    # No gateway answers: the phone reports why and exits non-zero, the cause in one line (it never streamed).
    with pytest.raises(SystemExit) as never:
        phone_main([*common, "--out", str(tmp_path / "theirs")])
    assert never.value.code == f"mvs phone: never streamed: no gateway reached: {dead} unreachable: Connection refused"
    report = json.loads((tmp_path / "theirs" / "report.json").read_text())
    assert report["outcome"]["status"] == "partial" and "no gateway reached" in report["outcome"]["reason"]
