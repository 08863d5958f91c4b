import cv2
import numpy as np
import pytest

from edge_worker.quality import psnr as image_psnr
from mobile_sim.flow import FLOW_METHODS, FlowEstimator, resize_flow
from mobile_sim.sources import SyntheticCamera, sample_photo
from mobile_sim.warp import Warper, WarpMaps, image_size, resize_to

WIDTH, HEIGHT = 160, 96
MARGIN = 8
PSNR_MIN_DB = 40.0
PERIODS = ((23.0, 31.0), (17.0, 41.0), (37.0, 19.0))  # per BGR channel: x and y periods in px


def pattern(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A smooth colour image evaluated exactly at arbitrary (float) pixel coordinates."""
    channels = [
        127.5 + 100.0 * np.sin(2 * np.pi * xs / px + c) * np.cos(2 * np.pi * ys / py)
        for c, (px, py) in enumerate(PERIODS)
    ]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


def grid(width: int = WIDTH, height: int = HEIGHT) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return xs, ys


def psnr(a: np.ndarray, b: np.ndarray, margin: int = MARGIN) -> float:
    inner = (slice(margin, -margin), slice(margin, -margin))
    return image_psnr(a[inner], b[inner])


def warp_with(flow: np.ndarray, key: np.ndarray) -> np.ndarray:
    warper = Warper()
    return warper.warp(key, warper.maps_from_flow(flow.astype(np.float32), (key.shape[1], key.shape[0])))


def test_warp_of_known_translation_and_wrong_flow() -> None:
    xs, ys = grid()
    dx, dy = 3.25, -1.5
    key, frame = pattern(xs, ys), pattern(xs + dx, ys + dy)
    flow = np.dstack([np.full_like(xs, dx), np.full_like(ys, dy)])
    good, wrong = psnr(warp_with(flow, key), frame), psnr(warp_with(-flow, key), frame)
    assert good >= PSNR_MIN_DB, f"{good:.1f} dB"
    assert wrong < PSNR_MIN_DB, f"wrong flow still gives {wrong:.1f} dB"


def test_warp_of_known_zoom() -> None:
    xs, ys = grid()
    centre_x, centre_y, scale = (WIDTH - 1) / 2, (HEIGHT - 1) / 2, 0.85
    key = pattern(xs, ys)
    frame = pattern(centre_x + scale * (xs - centre_x), centre_y + scale * (ys - centre_y))
    flow = np.dstack([(scale - 1) * (xs - centre_x), (scale - 1) * (ys - centre_y)])
    good, no_zoom = psnr(warp_with(flow, key), frame), psnr(key, frame)
    assert good >= PSNR_MIN_DB, f"{good:.1f} dB"
    assert no_zoom < PSNR_MIN_DB, f"{no_zoom:.1f} dB"


def test_warp_scales_flow_to_a_larger_stylized_key() -> None:
    xs, ys = grid()
    dx, dy = -2.6, 1.3  # non-integer source positions in the big key too
    frame = pattern(xs + dx, ys + dy)
    big_xs, big_ys = grid(2 * WIDTH, 2 * HEIGHT)
    big_key = pattern((big_xs + 0.5) / 2 - 0.5, (big_ys + 0.5) / 2 - 0.5)  # same scene, twice the pixels
    flow = np.dstack([np.full_like(xs, dx), np.full_like(ys, dy)])
    warped = warp_with(flow, big_key)
    assert warped.shape == frame.shape
    assert psnr(warped, frame) >= PSNR_MIN_DB, f"{psnr(warped, frame):.1f} dB"


COORDINATE_TOLERANCE = 1 / 32 + 1e-3
"""The remap maps are fixed point with 1/32 px steps."""


def coordinate_key(width: int, height: int, scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """A float32 key whose pixels hold their own scene coordinates (x, y, 0): bilinear sampling of a linear ramp
    is exact, so a warped coordinate key shows exactly where each output pixel was sampled. ``scale``: key pixels
    per frame pixel in x and y (a key of ``scale`` times the frame's size, pixel centres aligned)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.dstack([(xs + 0.5) / scale[0] - 0.5, (ys + 0.5) / scale[1] - 0.5, np.zeros_like(xs)])


@pytest.mark.parametrize("scale", [(1.0, 1.0), (2.0, 2.0), (1.5, 1.5), (2.0, 1.25)])
def test_each_pixel_is_sampled_exactly_where_the_flow_points(scale: tuple[float, float]) -> None:
    """Eq. 1 to the 1/32 px: output pixel x is the key at x + f(x), also from a bigger stylized key (pixel centres
    aligned). A 0.1 px shift is 3 steps of the fixed-point maps."""
    rng = np.random.default_rng(4)
    flow = cv2.GaussianBlur(rng.normal(0, 4, (HEIGHT, WIDTH, 2)).astype(np.float32), (0, 0), 4)
    key = coordinate_key(round(WIDTH * scale[0]), round(HEIGHT * scale[1]), scale)
    warper = Warper()
    warped = warper.warp(key, warper.maps_from_flow(flow, image_size(key)))
    xs, ys = grid()
    expected_x, expected_y = xs + flow[..., 0], ys + flow[..., 1]
    inside = (expected_x > 1) & (expected_x < WIDTH - 2) & (expected_y > 1) & (expected_y < HEIGHT - 2)
    assert inside.mean() > 0.8 and np.abs(flow).max() > 1  # a real, non-integer motion field
    error = np.maximum(np.abs(warped[..., 0] - expected_x), np.abs(warped[..., 1] - expected_y))[inside]
    assert error.max() <= COORDINATE_TOLERANCE, f"{error.max():.4f} px"


def test_warp_rejects_mismatched_inputs() -> None:
    warper = Warper()
    maps = warper.maps_from_flow(np.zeros((HEIGHT, WIDTH, 2), np.float32), (WIDTH, HEIGHT))
    with pytest.raises(ValueError, match="maps were built for"):
        warper.warp(np.zeros((HEIGHT, WIDTH + 1, 3), np.uint8), maps)
    with pytest.raises(ValueError, match="HxWx2"):
        warper.maps_from_flow(np.zeros((HEIGHT, WIDTH), np.float32), (WIDTH, HEIGHT))


def endpoint_error(flow: np.ndarray, truth: np.ndarray, margin: int) -> np.ndarray:
    inner = (slice(margin, -margin), slice(margin, -margin))
    error: np.ndarray = np.linalg.norm(flow[inner] - truth[inner], axis=-1)
    return error


def mean_abs_error(a: np.ndarray, b: np.ndarray, margin: int) -> float:
    inner = (slice(margin, -margin), slice(margin, -margin))
    return float(np.abs(a[inner].astype(np.float64) - b[inner].astype(np.float64)).mean())


def test_dis_flow_matches_true_flow_and_warp_reconstructs() -> None:
    camera = SyntheticCamera(sample_photo(), size=(640, 360))
    i, j, margin = 30, 33, 32
    frame_i, frame_j = camera.render(i), camera.render(j)
    truth = camera.true_flow(i, j)
    flow = FlowEstimator().estimate(frame_i, frame_j)
    assert flow.shape == truth.shape and flow.dtype == np.float32
    median_epe = float(np.median(endpoint_error(flow, truth, margin)))
    assert np.median(np.linalg.norm(truth, axis=-1)) > 3, "the test needs real motion"
    assert median_epe < 0.5, f"median endpoint error {median_epe:.3f} px"
    warped = mean_abs_error(warp_with(flow, frame_j), frame_i, margin)
    unwarped = mean_abs_error(frame_j, frame_i, margin)
    assert warped < 0.25 * unwarped, f"warped {warped:.2f} vs not warped {unwarped:.2f} (mean abs error)"


@pytest.mark.parametrize("method", FLOW_METHODS)
def test_every_method_tracks_a_pan(method: str) -> None:
    camera = SyntheticCamera(sample_photo("coffee"), size=(320, 180), zoom_per_frame=0.0)
    flow = FlowEstimator(method).estimate(camera.render(20), camera.render(22))
    median_epe = float(np.median(endpoint_error(flow, camera.true_flow(20, 22), 16)))
    assert median_epe < 0.5, f"{method}: median endpoint error {median_epe:.3f} px"


def test_flow_rejects_bad_input() -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    with pytest.raises(ValueError, match="same shape"):
        FlowEstimator().estimate(image, resize_to(image, (WIDTH // 2, HEIGHT // 2)))
    with pytest.raises(ValueError, match="unknown flow method"):
        FlowEstimator("slow")


def test_flow_does_not_depend_on_earlier_calls() -> None:
    camera = SyntheticCamera(sample_photo(), size=(320, 180))
    estimator = FlowEstimator()
    first = estimator.estimate(camera.render(5), camera.render(8))
    estimator.estimate(camera.render(40), camera.render(30))
    assert np.array_equal(estimator.estimate(camera.render(5), camera.render(8)), first)


@pytest.mark.parametrize(("frame_size", "key_size"), [((320, 192), (320, 192)), ((333, 201), (500, 300))])
def test_maps_from_a_coarse_flow_match_maps_from_the_upsampled_flow(
    frame_size: tuple[int, int], key_size: tuple[int, int]
) -> None:
    rng = np.random.default_rng(0)
    coarse = cv2.GaussianBlur(rng.normal(0, 3, (HEIGHT, WIDTH, 2)).astype(np.float32), (0, 0), 3)
    warper = Warper()
    direct = warper.maps_from_flow(coarse, key_size, frame_size)
    upsampled = warper.maps_from_flow(resize_flow(coarse, frame_size), key_size)
    assert direct.frame_size == upsampled.frame_size == frame_size

    def coordinates(maps: WarpMaps) -> np.ndarray:
        return cv2.convertMaps(maps.map1, maps.map2, cv2.CV_32FC2)[0]  # type: ignore[call-overload,no-any-return]

    fixed_point_step = 1 / 32
    assert np.abs(coordinates(direct) - coordinates(upsampled)).max() <= fixed_point_step + 1e-6


def test_resize_to_averages_when_shrinking_and_interpolates_when_growing() -> None:
    image = pattern(*grid())
    for size in [(WIDTH // 2, HEIGHT // 2), (WIDTH // 2, HEIGHT), (WIDTH, HEIGHT // 3)]:  # either side shrinking
        np.testing.assert_array_equal(resize_to(image, size), cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    for size in [(2 * WIDTH, 2 * HEIGHT), (WIDTH + 1, HEIGHT)]:
        np.testing.assert_array_equal(resize_to(image, size), cv2.resize(image, size, interpolation=cv2.INTER_LINEAR))
    assert resize_to(image, (WIDTH, HEIGHT)) is image


def test_flow_pointing_outside_the_key_repeats_its_border() -> None:
    """Pixels whose source lies beyond the key's edge take the edge's colour (BORDER_REPLICATE), not black."""
    xs, _ = grid()
    key = pattern(*grid())
    flow = np.dstack([np.full_like(xs, -20.0), np.zeros_like(xs)])  # everything from 20 px to the left
    warped = warp_with(flow, key)
    np.testing.assert_array_equal(warped[:, :20], np.repeat(key[:, :1], 20, axis=1))
