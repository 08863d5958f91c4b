import gc
import weakref

import cv2
import numpy as np
import pytest

from mobile_sim.flow import FlowEstimator
from mobile_sim.reconstruct import OutputFrame, Reconstructor
from mobile_sim.sources import SyntheticCamera, sample_photo
from mobile_sim.warp import Warper

SIZE = (160, 96)
INTERVAL = 3
CAMERA = SyntheticCamera(sample_photo(), size=SIZE, pan_px_per_frame=3.0)
FRAMES = [CAMERA.render(i) for i in range(12)]


def stylize(image: np.ndarray) -> np.ndarray:
    """A stand-in for the edge DNN: a per-pixel colour transform, so warping commutes with it."""
    return np.ascontiguousarray(255 - image[..., ::-1])


def key_of(frame_id: int) -> int:
    return frame_id - frame_id % INTERVAL


def reconstructor(max_frames: int = 256) -> Reconstructor:
    return Reconstructor(FlowEstimator(), Warper(), max_frames=max_frames)


def add_frames(rec: Reconstructor, frame_ids: range) -> None:
    for i in frame_ids:
        rec.add_frame(i, FRAMES[i], key_of(i))


def summary(outputs: list[OutputFrame]) -> list[tuple[int, str, int | None]]:
    return [(out.frame_id, out.kind, out.key_id) for out in outputs]


def error(a: np.ndarray, b: np.ndarray) -> float:
    inner = (slice(8, -8), slice(8, -8))
    return float(np.abs(a[inner].astype(np.float64) - b[inner].astype(np.float64)).mean())


def assert_like_stylized_frame(out: OutputFrame) -> None:
    """The output is close to the stylized frame itself, much closer than its stylized key is."""
    assert out.image.shape == FRAMES[out.frame_id].shape
    assert out.key_id is not None
    target = stylize(FRAMES[out.frame_id])
    got, unwarped = error(out.image, target), error(stylize(FRAMES[out.key_id]), target)
    assert got < 0.3 * unwarped, f"frame {out.frame_id}: {got:.2f} vs unwarped key {unwarped:.2f}"


def test_frames_come_out_in_order_as_soon_as_their_key_is_stylized() -> None:
    rec = reconstructor()
    add_frames(rec, range(9))
    assert rec.pop_ready() == []
    rec.add_stylized(6, stylize(FRAMES[6]))
    assert rec.pop_ready() == []  # frames 6-8 wait for the earlier frames
    rec.add_stylized(0, stylize(FRAMES[0]))
    first = rec.pop_ready()
    assert summary(first) == [(0, "key", 0), (1, "warped", 0), (2, "warped", 0)]  # no wait for key 3
    assert np.array_equal(first[0].image, stylize(FRAMES[0]))
    for out in first[1:]:
        assert_like_stylized_frame(out)
    rec.add_stylized(3, stylize(FRAMES[3]))
    rest = rec.pop_ready()
    assert [out.frame_id for out in rest] == list(range(3, 9))
    assert [out.kind for out in rest] == ["key", "warped", "warped"] * 2
    add_frames(rec, range(9, 11))
    rec.add_stylized(9, stylize(FRAMES[9]))
    add_frames(rec, range(11, 12))
    assert summary(rec.pop_ready()) == [(9, "key", 9), (10, "warped", 9), (11, "warped", 9)]
    expected_stats = {"key": 4, "warped": 8, "affine": 0, "fallback": 0, "failed": 0, "evicted": 0, "stale_results": 0}
    assert rec.stats == expected_stats


def test_key_output_is_the_stylized_frame_resized_to_frame_size() -> None:
    rec = reconstructor()
    add_frames(rec, range(3))
    big = cv2.resize(stylize(FRAMES[0]), (2 * SIZE[0], 2 * SIZE[1]), interpolation=cv2.INTER_CUBIC)
    rec.add_stylized(0, big)
    key, *warped = rec.pop_ready()
    assert key.kind == "key" and key.image.shape == FRAMES[0].shape
    assert error(key.image, stylize(FRAMES[0])) < 2.0
    for out in warped:
        assert_like_stylized_frame(out)


def test_failed_key_falls_back_to_the_newest_earlier_good_key() -> None:
    rec = reconstructor()
    add_frames(rec, range(12))
    rec.key_failed(9, "deadline")
    rec.add_stylized(6, stylize(FRAMES[6]))
    rec.add_stylized(0, stylize(FRAMES[0]))
    rec.key_failed(3, "deadline")
    outputs = rec.pop_ready()
    assert summary(outputs) == [
        (0, "key", 0),
        (1, "warped", 0),
        (2, "warped", 0),
        (3, "fallback", 0),
        (4, "fallback", 0),
        (5, "fallback", 0),
        (6, "key", 6),
        (7, "warped", 6),
        (8, "warped", 6),
        (9, "fallback", 6),
        (10, "fallback", 6),
        (11, "fallback", 6),
    ]
    for out in outputs[3:6] + outputs[9:]:
        assert_like_stylized_frame(out)
    assert rec.stats["fallback"] == 6


def test_failed_key_without_earlier_good_key_gives_the_originals() -> None:
    rec = reconstructor()
    add_frames(rec, range(4))
    rec.key_failed(0, "no worker")
    outputs = rec.pop_ready()
    assert summary(outputs) == [(0, "failed", None), (1, "failed", None), (2, "failed", None)]
    assert all(np.array_equal(out.image, FRAMES[out.frame_id]) for out in outputs)
    rec.add_stylized(0, stylize(FRAMES[0]))  # too late: ignored
    rec.add_stylized(3, stylize(FRAMES[3]))
    assert summary(rec.pop_ready()) == [(3, "key", 3)]
    assert rec.stats["stale_results"] == 1


def test_memory_is_bounded_by_emitting_the_oldest_waiting_frames_as_failed() -> None:
    max_frames = 4
    rec = reconstructor(max_frames)
    for i in range(10):
        rec.add_frame(i, FRAMES[i], 0)
        evicted = [(i - max_frames, "failed", None)] if i >= max_frames else []
        assert summary(rec.pop_ready()) == evicted
    rec.add_stylized(0, stylize(FRAMES[0]))
    late = rec.pop_ready()
    assert summary(late) == [(i, "warped", 0) for i in range(6, 10)]
    assert rec.stats["evicted"] == 6 and rec.stats["failed"] == 6


@pytest.mark.slow
def test_originals_are_released_once_no_longer_needed() -> None:
    rec = reconstructor()
    originals = [frame.copy() for frame in FRAMES[:8]]
    refs = [weakref.ref(original) for original in originals]
    for i, original in enumerate(originals):
        rec.add_frame(i, original, key_of(i))
    del originals, original
    for key_id in (0, 3, 6):
        rec.add_stylized(key_id, stylize(FRAMES[key_id]))
    assert len(rec.pop_ready()) == 8
    gc.collect()
    assert [i for i, ref in enumerate(refs) if ref() is not None] == [6]  # the newest key, for later frames


def test_released_key_results_are_stale() -> None:
    rec = reconstructor()
    add_frames(rec, range(4))
    rec.add_stylized(0, stylize(FRAMES[0]))
    rec.add_stylized(3, stylize(FRAMES[3]))
    rec.add_stylized(0, stylize(FRAMES[0]))
    assert [out.frame_id for out in rec.pop_ready()] == [0, 1, 2, 3]
    assert rec.stats["stale_results"] == 1


def test_rejects_bad_frame_ids_and_keys() -> None:
    rec = reconstructor()
    with pytest.raises(ValueError, match="first frame must be a key"):
        rec.add_frame(0, FRAMES[0], key_id=-1)
    add_frames(rec, range(5))
    with pytest.raises(ValueError, match="strictly increase"):
        rec.add_frame(4, FRAMES[4], 3)
    with pytest.raises(ValueError, match="strictly increase"):
        rec.add_frame(2, FRAMES[2], 0)
    with pytest.raises(ValueError, match="newest key frame"):
        rec.add_frame(5, FRAMES[5], 0)
    with pytest.raises(ValueError, match="differs from earlier frames"):
        rec.add_frame(5, FRAMES[5][:-1], 3)
    with pytest.raises(ValueError, match="never added"):
        rec.add_stylized(9, stylize(FRAMES[9]))
    with pytest.raises(ValueError, match="max_frames"):
        reconstructor(max_frames=0)


def stylize_coefficients() -> np.ndarray:
    """`stylize` as the model's colour maps (RGB in [0, 1]): out R, G, B = 1 - in B, G, R; on a 4x6 grid."""
    matrix = -np.eye(3, dtype=np.float32)[::-1]
    return np.tile(np.concatenate([matrix.ravel(), np.ones(3, np.float32)]), (4, 6, 1))


@pytest.mark.parametrize("render", ["affine", "affine-flow"])
def test_affine_render_applies_the_keys_colour_maps_to_each_frame(render: str) -> None:
    rec = Reconstructor(FlowEstimator(), Warper(), render=render)  # type: ignore[arg-type]
    add_frames(rec, range(6))
    rec.add_stylized(0, stylize(FRAMES[0]), stylize_coefficients())
    rec.add_stylized(3, stylize(FRAMES[3]))  # no coefficients: its frames are warped
    outputs = rec.pop_ready()
    assert summary(outputs) == [
        (i, "key" if i % INTERVAL == 0 else "affine" if i < 3 else "warped", key_of(i)) for i in range(6)
    ]
    for out in outputs[1:3]:
        np.testing.assert_array_equal(out.image, stylize(FRAMES[out.frame_id]))
    for out in outputs[4:]:
        assert_like_stylized_frame(out)


def offset_coefficients(offset: float) -> np.ndarray:
    """Colour maps that add `offset` (in [0, 1] units) to every channel, on a 4x6 grid."""
    return np.tile(np.concatenate([np.eye(3, dtype=np.float32).ravel(), np.full(3, offset, np.float32)]), (4, 6, 1))


@pytest.mark.parametrize("render", ["affine", "affine-flow"])
def test_buffered_affine_renders_blend_both_keys_maps_by_time_distance(render: str) -> None:
    """Uniform maps stay the same when moved along any flow (``affine-flow``): the blend by time distance is all
    that shows."""
    rec = Reconstructor(FlowEstimator(), Warper(), mode="buffered", render=render)  # type: ignore[arg-type]
    add_frames(rec, range(4))
    rec.add_stylized(0, FRAMES[0], offset_coefficients(0.0))
    assert summary(rec.pop_ready()) == [(0, "key", 0)]  # frames 1, 2 wait for key 3
    rec.add_stylized(3, FRAMES[3], offset_coefficients(0.3))
    outputs = rec.pop_ready()
    assert summary(outputs) == [(1, "affine", 0), (2, "affine", 0), (3, "key", 3)]
    for out in outputs[:2]:
        t = out.frame_id / INTERVAL
        expected = np.clip(FRAMES[out.frame_id].astype(np.float64) + t * 0.3 * 255, 0, 255)
        assert np.abs(out.image - expected).max() <= 1.0


def test_buffered_frames_of_a_failed_key_do_not_wait_for_the_next_key() -> None:
    rec = Reconstructor(FlowEstimator(), Warper(), mode="buffered")
    add_frames(rec, range(6))
    rec.add_stylized(0, stylize(FRAMES[0]))
    rec.add_stylized(3, stylize(FRAMES[3]))
    rec.pop_ready()
    rec.add_frame(6, FRAMES[6], 6)
    rec.add_frame(7, FRAMES[7], 6)
    rec.key_failed(6, "timeout")
    assert summary(rec.pop_ready()) == [(4, "warped", 3), (5, "warped", 3), (6, "fallback", 3), (7, "fallback", 3)]


@pytest.mark.parametrize("render", ["affine", "affine-flow"])
def test_frames_of_a_failed_key_fall_back_to_the_previous_keys_colour_maps(render: str) -> None:
    """The fallback key's maps applied to each frame itself: exactly the stylized frame, the failed key's own
    frame included, not a warp of an older picture."""
    rec = Reconstructor(FlowEstimator(), Warper(), render=render)  # type: ignore[arg-type]
    add_frames(rec, range(6))
    rec.add_stylized(0, stylize(FRAMES[0]), stylize_coefficients())
    rec.key_failed(3, "timeout")
    outputs = rec.pop_ready()
    assert summary(outputs) == [(0, "key", 0), (1, "affine", 0), (2, "affine", 0)] + [
        (i, "fallback", 0) for i in range(3, 6)
    ]
    for out in outputs[1:]:
        np.testing.assert_array_equal(out.image, stylize(FRAMES[out.frame_id]))
