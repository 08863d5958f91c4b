"""Worker start-up warm-up, with the paper's DNN (tiny config) and a real nats-server: the warm-up runs before
the worker takes requests, and the first request (a coefficient one) gets the maps the stylizer gives with its frame."""

from __future__ import annotations

import logging

import cv2
import nats
import numpy as np
import pytest

from deploy.faults import key_request
from deploy.nats_servers import NatsServer
from edge_worker.__main__ import build_parser, config_from_args
from edge_worker.quality import gaussian_w2
from edge_worker.retrain import RetrainableStylizer
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.sources import default_style_photo, sample_photo
from streaming.coefficients import decode_coefficients, encode_coefficients
from streaming.images import decode_image, encode_jpeg
from streaming.protocol import ResultKind, StylizeReply, decode, encode, stylize_subject
from streaming.style_store import StyleStore
from tests.support import tiny_dnn

TIMEOUT_S = 10.0
COLOUR_W2_RATIO = 0.5


@pytest.mark.slow
async def test_worker_warms_up_before_serving_its_first_request(
    nats_server: NatsServer, region: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny_dnn()
    nc = await nats.connect(nats_server.url)
    style_jpeg = encode_jpeg(default_style_photo())
    style_id = await (await StyleStore.open(nc.jetstream())).put(style_jpeg)
    worker = StylizerWorker(
        WorkerConfig(nats_url=nats_server.url, region=region, threads=1), RetrainableStylizer(model)
    )
    caplog.set_level(logging.INFO, logger="edge_worker.service")
    try:
        await worker.start()
        image = encode_jpeg(cv2.resize(sample_photo(), (640, 360)))
        request = key_request(style_id, image, (1280, 720), 5000.0, result=ResultKind.COEFFICIENTS)
        msg = await nc.request(stylize_subject(region), encode(request), timeout=TIMEOUT_S)
        reply = decode(msg.data, StylizeReply)
    finally:
        await worker.stop()
        await nc.close()
    assert set(worker.warmup_seconds) == {"style", "frame", "coefficients"}
    assert all(s > 0 for s in worker.warmup_seconds.values())
    assert worker.warmed_up_ns is not None and worker.warmed_up_ns < reply.stamps["w_received"]
    messages = [r.getMessage() for r in caplog.records if r.name == "edge_worker.service"]
    assert messages.index("worker warmed up") < messages.index("worker serving")
    warmed = next(r for r in caplog.records if r.getMessage() == "worker warmed up")
    assert warmed.__dict__["size"] == "640x360" and warmed.__dict__["seconds"] >= 0
    # The first request, a coefficient one, gets exactly the maps of the model run here on the same inputs.
    assert reply.ok and reply.kind == ResultKind.COEFFICIENTS
    rgb = [cv2.cvtColor(decode_image(jpeg), cv2.COLOR_BGR2RGB) for jpeg in (image, style_jpeg)]
    expected = model.stylize_with_coefficients(rgb[0], model.prepare_style(rgb[1]), (1280, 720))[1]
    coeffs = decode_coefficients(reply.image)
    np.testing.assert_array_equal(coeffs, decode_coefficients(encode_coefficients(expected)))
    # Independently of the model's code: the network's grid (short side = tiny's work size 32, 640 * 32 / 360 =
    # 56.9 rounded to the encoder's step of 8) halved on the wire, and applied per pixel here the maps carry the
    # frame's colours most of the way to the style's.
    assert coeffs.shape == (16, 28, 12)
    maps = cv2.resize(coeffs, (640, 360), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    pixels = rgb[0].astype(np.float64) / 255
    applied = np.einsum("hwij,hwj->hwi", maps[..., :9].reshape(360, 640, 3, 3), pixels) + maps[..., 9:]
    restyled = (np.clip(applied, 0, 1) * 255).round().astype(np.uint8)
    assert gaussian_w2(restyled, rgb[1]) < COLOUR_W2_RATIO * gaussian_w2(rgb[0], rgb[1])


async def test_warmup_can_be_turned_off(nats_server: NatsServer, region: str) -> None:
    assert config_from_args(build_parser().parse_args([])).warmup
    config = config_from_args(build_parser().parse_args(["--no-warmup", "--nats", nats_server.url, "--region", region]))
    assert not config.warmup
    worker = StylizerWorker(config)
    await worker.start()
    await worker.stop()
    assert worker.warmup_seconds == {} and worker.warmed_up_ns is None
