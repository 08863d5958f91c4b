"""Phone -> WebRTC -> gateway -> NATS -> worker -> data channel -> warping, all real, on loopback."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from edge_worker.service import StylizerWorker
from mobile_sim.client import Phone, PhoneConfig, PhoneResult
from mobile_sim.link_shim import LinkProfile
from mobile_sim.sources import default_style_photo
from streaming.gateway.server import Gateway
from streaming.ice import LOOPBACK
from streaming.images import decode_image, encode_jpeg
from tests.oracles import colour_transfer_bgr

pytestmark = pytest.mark.slow  # phones streaming real WebRTC to a worker


SIZE = (320, 180)
FRAMES = 60
KEY_INTERVAL = 5


def _config(gateway: Gateway, region: str, **overrides: object) -> PhoneConfig:
    values: dict[str, object] = dict(
        gateway_urls=(gateway.url,),
        frames=FRAMES,
        size=SIZE,
        key_interval=KEY_INTERVAL,
        region=region,
        ice_hosts=LOOPBACK,
        keep_frames=True,
    )
    values.update(overrides)
    return PhoneConfig(**values)  # type: ignore[arg-type]


def _reference_style() -> np.ndarray:
    """The style exactly as the worker sees it (after the JPEG hop), BGR."""
    return decode_image(encode_jpeg(default_style_photo(), 95))


def _stylize(style: np.ndarray, bgr: np.ndarray) -> np.ndarray:
    """The expected stylization, from the closed form written out independently of the worker's model."""
    return colour_transfer_bgr(bgr, style)


def _check_keys_belong_to_their_frames(result: PhoneResult) -> int:
    """Each stylized key frame is closest to the stylization of the frame the phone marked."""
    style = _reference_style()
    reference = {i: _stylize(style, img) for i, img in result.originals.items()}
    checked = 0
    for key_id, stylized in result.stylized_keys.items():
        own = cv2.PSNR(stylized, reference[key_id])
        for other in (key_id - 2, key_id - 1, key_id + 1, key_id + 2):
            if other in reference:
                assert own > cv2.PSNR(stylized, reference[other]) + 1.0, (key_id, other)
        checked += 1
    return checked


def _video_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


async def test_every_frame_comes_back_stylized(
    worker: StylizerWorker, gateway: Gateway, region: str, tmp_path: Path
) -> None:
    result = await Phone(_config(gateway, region, out_dir=tmp_path)).run()
    report = result.report
    assert report["frames"]["captured"] == FRAMES and report["frames"]["output"] == FRAMES
    assert sorted(result.outputs) == list(range(FRAMES))
    # A loss-free loopback link: every key comes back, so nothing is rendered from an older key.
    assert report["key_frames"]["ok"] == report["key_frames"]["marked"] == FRAMES // KEY_INTERVAL
    kinds = report["frames"]["by_output"]
    assert kinds["key"] >= 1 and kinds["warped"] >= 1 and kinds["failed"] == 0 and kinds["fallback"] == 0
    assert _check_keys_belong_to_their_frames(result) == report["key_frames"]["ok"]
    # Output differs from input: the style's colours, not the camera's.
    diffs = [cv2.absdiff(result.outputs[i].image, result.originals[i]).mean() for i in range(FRAMES)]
    assert min(diffs) > 15
    latency = report["latency_ms"][region]
    assert latency["round_trip"]["p50"] > 0 and latency["inference"]["p50"] > 0
    parts = sum(latency[p]["p50"] for p in ("uplink", "queue", "inference", "downlink"))
    assert parts == pytest.approx(latency["round_trip"]["p50"], rel=0.5)
    assert report["per_frame"][0]["key"] and report["per_frame"][0]["reason"] == "first"
    # The recording holds every output frame, in frame order.
    recorded = _video_frames(tmp_path / "stylized.mp4")
    assert len(recorded) == FRAMES
    for i in range(1, FRAMES - 1):
        own = cv2.PSNR(recorded[i], result.outputs[i].image)
        assert own > max(cv2.PSNR(recorded[i], result.outputs[j].image) for j in (i - 1, i + 1)), i


async def test_lost_frames_never_mislabel_key_frames(worker: StylizerWorker, gateway: Gateway, region: str) -> None:
    # The first frames (the RTP timestamp base), a key frame and scattered frames are lost on the way.
    lost = frozenset({0, 1, 10, 13, 22, 23, 24, 37, 41})
    result = await Phone(_config(gateway, region, lose_frames=lost)).run()
    report = result.report
    assert report["frames"]["output"] == FRAMES and report["frames"]["lost_emulated"] == len(lost)
    per_key = {k["frame_id"]: k for k in report["per_key"]}
    assert per_key[0]["error_code"] == "lost" and per_key[10]["error_code"] == "lost"
    assert _check_keys_belong_to_their_frames(result) == report["key_frames"]["ok"] >= 6
    # Frames of a lost key are warped from the previous good key; before any good key they are marked failed.
    outputs = result.outputs
    assert all(outputs[i].kind == "failed" for i in range(0, 5))
    assert all(outputs[i].kind == "fallback" and outputs[i].key_id == 5 for i in range(10, 15))


async def test_warped_frames_match_the_stylization_of_the_same_frame(
    worker: StylizerWorker, gateway: Gateway, region: str
) -> None:
    """Algorithm 1 on a camera pan: warping the stylized key by the flow reproduces the stylized frame."""
    result = await Phone(_config(gateway, region, frames=40, key_interval=10)).run()
    style = _reference_style()
    warped, unwarped = [], []
    for i, out in result.outputs.items():
        if out.kind != "warped":
            continue
        truth = _stylize(style, result.originals[i])
        margin = 16  # new content enters at the borders during a pan; compare the interior
        inner = (slice(margin, -margin), slice(margin, -margin))
        warped.append(cv2.PSNR(out.image[inner], truth[inner]))
        key = result.stylized_keys[out.key_id]
        unwarped.append(cv2.PSNR(key[inner], truth[inner]))  # what a broken (identity) warp would show
    assert len(warped) >= 20
    assert np.median(warped) >= 30.0, np.median(warped)
    assert np.median(unwarped) < 30.0 - 5.0, np.median(unwarped)


@pytest.mark.parametrize("mode", ["live", "buffered"])
async def test_affine_render_restyles_each_frame_from_its_keys_colour_map(
    worker: StylizerWorker, gateway: Gateway, region: str, mode: str
) -> None:
    """render="affine": the edge sends the stylizer's colour map instead of the stylized key, and the phone
    applies it (buffered: blended with the next key's) to every frame, so each output is (nearly) the
    stylization of that very frame."""
    frames = 30
    affine = await Phone(_config(gateway, region, frames=frames, render="affine", mode=mode)).run()
    warped = await Phone(_config(gateway, region, frames=frames)).run()
    report = affine.report
    assert report["frames"]["output"] == frames and report["frames"]["by_output"]["failed"] == 0
    assert report["frames"]["by_output"]["affine"] >= frames // 2
    assert report["frames"]["by_output"]["fallback"] == 0  # loss-free: every key ok
    assert report["key_frames"]["ok"] == report["key_frames"]["marked"] == frames // KEY_INTERVAL
    assert _check_keys_belong_to_their_frames(affine) == report["key_frames"]["ok"]
    style = _reference_style()
    scores = [
        cv2.PSNR(out.image, _stylize(style, affine.originals[i]))
        for i, out in affine.outputs.items()
        if out.kind == "affine"
    ]
    assert np.median(scores) >= 30.0, np.median(scores)
    # Colour transfer is one global map: a 1x1 grid on the downlink instead of a JPEG per key.
    per_key = report["key_frames"]["downlink_bytes"] / report["key_frames"]["ok"]
    frame_keys = warped.report["key_frames"]
    assert per_key * 20 < frame_keys["downlink_bytes"] / frame_keys["ok"], per_key


async def test_adaptive_policy_in_buffered_mode_end_to_end(
    worker: StylizerWorker, gateway: Gateway, region: str
) -> None:
    """The warp-confidence policy and buffered blending over the real pipeline: every frame out, in order."""
    config = _config(gateway, region, frames=40, key_policy="adaptive", max_key_interval=8, mode="buffered")
    result = await Phone(config).run()
    report = result.report
    assert report["frames"]["output"] == 40
    reasons = report["key_frames"]["by_reason"]
    assert sum(reasons.values()) == report["key_frames"]["marked"] >= 40 // 8
    keys = [f["id"] for f in report["per_frame"] if f["key"]]
    assert max(b - a for a, b in zip(keys, keys[1:], strict=False)) <= 8
    warped = [out for out in result.outputs.values() if out.kind == "warped"]
    assert len(warped) >= 20


async def test_a_far_region_pays_its_link_delay_and_the_split_stays_consistent(
    worker: StylizerWorker, gateway: Gateway, region: str
) -> None:
    """An emulated 40 ms one-way link: uplink and downlink each carry it, queue and inference do not."""
    delay_ms = 40.0
    result = await Phone(_config(gateway, region, frames=30, link=LinkProfile(delay_ms=delay_ms))).run()
    report = result.report
    assert report["frames"]["output"] == 30 and report["key_frames"]["ok"] >= 5
    latency = report["latency_ms"][region]
    assert latency["uplink"]["p50"] >= delay_ms and latency["downlink"]["p50"] >= delay_ms
    assert latency["round_trip"]["p50"] >= 2 * delay_ms
    assert latency["queue"]["p50"] < delay_ms  # the edge-side parts do not see the phone's link
    link = report["network"]["link"]
    assert link["delay_ms"] == delay_ms and link["forwarded"]["near"] > 0 and link["forwarded"]["far"] > 0
    clock = report["network"]["gateway_clock"]
    # One host, one monotonic clock: the estimate is ~0, within its own error bound (half the best probe's RTT).
    assert clock["offset_ms"] is not None and abs(clock["offset_ms"]) <= clock["error_bound_ms"] + 1.0
