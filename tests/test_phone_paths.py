"""The phone's failure paths and its style option, through the real gateway and NATS: a key past its timeout,
a key dropped before it is sent, a result it cannot decode, and a style image of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from nats.aio.msg import Msg

from deploy.nats_servers import NatsServer
from edge_worker.model.emulated import EmulatedAccelerator, ServiceTimeProfile
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.client import Phone, PhoneConfig, load_style
from mobile_sim.sources import default_style_photo
from streaming.gateway.server import Gateway
from streaming.ice import LOOPBACK
from streaming.images import ImageDecodeError
from streaming.nats_connect import connect_nats
from streaming.protocol import (
    STYLIZE_QUEUE_GROUP,
    ErrorCode,
    ResultKind,
    StylizeReply,
    StylizeRequest,
    decode,
    encode,
    stylize_subject,
)

SIZE = (160, 96)


def _config(gateway: Gateway, region: str, **overrides: object) -> PhoneConfig:
    values: dict[str, object] = dict(
        gateway_urls=(gateway.url,), frames=20, size=SIZE, key_interval=5, region=region, ice_hosts=LOOPBACK
    )
    values.update(overrides)
    return PhoneConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
async def slow_worker(nats_server: NatsServer, region: str) -> AsyncIterator[StylizerWorker]:
    """A worker taking 600 ms a key frame (an emulated accelerator's service time)."""
    model = EmulatedAccelerator(ServiceTimeProfile(fixed_ms=600.0, per_item_ms=0.0))
    worker = StylizerWorker(WorkerConfig(nats_url=nats_server.url, region=region, warmup=False), model)
    await worker.start()
    yield worker
    await worker.stop()


@pytest.mark.slow
async def test_a_key_with_no_result_in_time_fails_on_the_phone(slow_worker: StylizerWorker, gateway: Gateway) -> None:
    """Results come 600 ms after a key is sent, the phone waits 200 ms: every key times out on the phone, its
    frames are marked failed, and the results that come later are counted as late, not used."""
    frames = 45  # 1.5 s: the first results come while the phone still runs
    config = _config(gateway, gateway.config.region, frames=frames, result_timeout_ms=200.0)
    result = await Phone(config).run()
    report = result.report
    assert report["frames"]["output"] == frames and report["key_frames"]["ok"] == 0
    assert {k["error_code"] for k in report["per_key"]} == {ErrorCode.TIMEOUT}
    assert report["frames"]["by_output"]["failed"] == frames
    assert report["counters"].get("late_or_unknown_results", 0) >= 1


@pytest.mark.slow
async def test_a_key_dropped_before_sending_fails_at_once(worker: StylizerWorker, gateway: Gateway) -> None:
    """Every frame a key, captured far faster than the encoder takes them: keys are precious in the send queue,
    but when it holds only keys the oldest goes, and it fails as dropped (never sent, so never timed out)."""
    config = _config(gateway, gateway.config.region, frames=60, size=(1280, 720), fps=500.0, key_interval=1)
    report = (await Phone(config).run()).report
    fates = {f["id"]: f["fate"] for f in report["per_frame"]}
    dropped = [k for k in report["per_key"] if fates[k["frame_id"]] == "dropped_before_send"]
    assert dropped and report["counters"]["send_queue_dropped"] >= len(dropped)
    assert all(k["error_code"] == ErrorCode.DROPPED and "before send" in k["error"] for k in dropped)
    assert report["frames"]["output"] == 60


@pytest.mark.slow
async def test_an_undecodable_result_is_a_failed_key(nats_server: NatsServer, gateway: Gateway) -> None:
    """A worker (here a stand-in: no real one sends junk) answers ok with bytes that are no image: the phone
    fails that key as invalid and renders its frames from the previous good key, when there is one."""
    region = gateway.config.region
    nc = await connect_nats(nats_server.url, "junk-worker")

    async def answer(msg: Msg) -> None:
        request = decode(msg.data, StylizeRequest)
        image = b"not a jpeg" if request.frame_id == 10 else _stylized(request)
        await msg.respond(
            encode(StylizeReply(stream_id=request.stream_id, frame_id=request.frame_id, worker_id="junk", ok=True,
                                image=image, kind=ResultKind.FRAME))
        )  # fmt: skip

    await nc.subscribe(stylize_subject(region), queue=STYLIZE_QUEUE_GROUP, cb=answer)
    try:
        report = (await Phone(_config(gateway, region)).run()).report
    finally:
        await nc.close()
    per_key = {k["frame_id"]: k for k in report["per_key"]}
    assert per_key[10]["error_code"] == ErrorCode.INVALID and "undecodable" in per_key[10]["error"]
    assert all(per_key[k]["ok"] for k in (0, 5, 15))
    outputs = {f["id"]: f for f in report["per_frame"]}
    assert all(outputs[i]["output"] == "fallback" for i in range(10, 15))


def _stylized(request: StylizeRequest) -> bytes:
    """The request's own frame (decoded and re-encoded at its output size): a valid, if unstyled, result."""
    image = cv2.imdecode(np.frombuffer(request.image, np.uint8), cv2.IMREAD_COLOR)
    ok, jpeg = cv2.imencode(".jpg", cv2.resize(image, (request.out_width, request.out_height)))
    assert ok
    return jpeg.tobytes()


@pytest.mark.slow
async def test_a_style_file_of_its_own_is_the_style_applied(
    worker: StylizerWorker, gateway: Gateway, tmp_path: Path
) -> None:
    """A blue-green style image (PNG): the outputs take its colours, not the bundled default's."""
    rng = np.random.default_rng(0)
    style = np.clip(rng.normal((200, 140, 40), 20, (120, 160, 3)), 0, 255).astype(np.uint8)  # BGR
    path = tmp_path / "style.png"
    assert cv2.imwrite(str(path), style)
    assert load_style(str(path)) == path.read_bytes()
    result = await Phone(_config(gateway, gateway.config.region, style=str(path), keep_frames=True)).run()
    means = np.array([out.image.reshape(-1, 3).mean(0) for out in result.outputs.values()])
    default_mean = default_style_photo().reshape(-1, 3).mean(0)
    assert np.abs(np.median(means, 0) - style.reshape(-1, 3).mean(0)).max() < 15
    assert np.abs(np.median(means, 0) - default_mean).max() > 30


def test_a_style_file_must_exist_and_be_an_image(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_style(str(tmp_path / "missing.png"))
    text = tmp_path / "style.png"
    text.write_text("not an image")
    with pytest.raises(ImageDecodeError):
        load_style(str(text))
