from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from mobile_sim.sources import (
    PHOTO_NAMES,
    FrameSource,
    SourceError,
    SyntheticCamera,
    VideoFileSource,
    default_style_photo,
    open_source,
    sample_photo,
)

SMALL = (160, 96)


def mean_lab(image: np.ndarray) -> np.ndarray:
    lab: np.ndarray = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).reshape(-1, 3).mean(axis=0)
    return lab


def read_all(source: FrameSource) -> list[np.ndarray]:
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    source.close()
    return frames


@pytest.mark.slow
def test_sample_photos_are_bgr_uint8_offline() -> None:
    for name in PHOTO_NAMES:
        photo = sample_photo(name)
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3, name
    assert np.array_equal(sample_photo("astronaut"), data.astronaut()[..., ::-1])
    assert np.array_equal(sample_photo("camera")[..., 1], data.camera())


def test_unknown_or_download_only_photo_is_rejected() -> None:
    for name in ("nope", "eagle"):
        with pytest.raises(SourceError, match="astronaut"):
            sample_photo(name)


def test_default_style_colours_differ_from_default_content() -> None:
    distance = np.linalg.norm(mean_lab(default_style_photo()) - mean_lab(sample_photo()))
    assert distance > 30, f"mean Lab distance {distance:.1f}"


def test_synthetic_camera_size_count_and_end() -> None:
    camera = SyntheticCamera(sample_photo(), size=SMALL, frames=5)
    frames = read_all(camera)
    assert len(frames) == 5 and camera.read() is None
    assert all(f.shape == (96, 160, 3) and f.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0], frames[4])


def test_synthetic_camera_never_leaves_the_photo() -> None:
    for size in (SMALL, (1920, 1080)):
        camera = SyntheticCamera(sample_photo("coffee"), size=size, pan_px_per_frame=8.0, zoom_per_frame=0.01)
        width, height = size
        corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]])
        photo_height, photo_width = camera.photo.shape[:2]
        for i in range(0, 600, 7):
            points = corners @ camera.camera_matrix(i).T
            assert points.min() >= -1e-9, (size, i)
            assert (points[:, 0] <= photo_width - 1 + 1e-9).all() and (points[:, 1] <= photo_height - 1 + 1e-9).all()
    assert camera.render(3).shape == (1080, 1920, 3)


def test_true_flow_maps_to_the_same_photo_point() -> None:
    camera = SyntheticCamera(sample_photo(), size=SMALL)
    i, j = 10, 14
    flow = camera.true_flow(i, j)
    assert flow.shape == (96, 160, 2) and flow.dtype == np.float32
    assert np.abs(camera.true_flow(i, i)).max() == 0
    ys, xs = np.mgrid[0:96:10, 0:160:10]
    points_i = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], axis=1)
    moved = points_i[:, :2] + flow[ys.ravel(), xs.ravel()]
    points_j = np.column_stack([moved, np.ones(xs.size)])
    photo_i = points_i @ camera.camera_matrix(i).T
    photo_j = points_j @ camera.camera_matrix(j).T
    assert np.abs(photo_i - photo_j).max() < 1e-3
    assert np.abs(flow).max() > 1  # the camera did move


def write_video(path: Path, levels: list[int], size: tuple[int, int] = SMALL, fps: float = 25.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for level in levels:
        writer.write(np.full((size[1], size[0], 3), level, np.uint8))
    writer.release()


def test_video_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    levels = [20 * i for i in range(12)]
    write_video(path, levels)
    source = VideoFileSource(path)
    read = read_all(source)
    assert source.size == SMALL and source.fps == pytest.approx(25.0)
    assert len(read) == len(levels)
    assert [round(float(f.mean())) for f in read] == pytest.approx(levels, abs=4)


def test_video_file_resize_and_frame_limit(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, [100] * 8)
    source = open_source(str(path), size=(80, 48), frames=5)
    read = read_all(source)
    assert isinstance(source, VideoFileSource)
    assert len(read) == 5 and all(f.shape == (48, 80, 3) for f in read)


def test_bad_video_paths_raise_source_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.mp4"
    with pytest.raises(SourceError, match="missing.mp4"):
        VideoFileSource(missing)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video")
    with pytest.raises(SourceError, match="garbage.mp4"):
        open_source(str(garbage))


def test_open_source_specs() -> None:
    camera = open_source("synthetic", size=SMALL, fps=15.0, frames=3)
    assert isinstance(camera, SyntheticCamera)
    assert (camera.size, camera.fps, camera.frames) == (SMALL, 15.0, 3)
    coffee = open_source("synthetic:coffee", size=SMALL, frames=1)
    assert isinstance(coffee, SyntheticCamera)
    assert coffee.photo.mean(axis=(0, 1)) == pytest.approx(
        cv2.resize(sample_photo("coffee"), coffee.photo.shape[1::-1]).mean(axis=(0, 1)), abs=2
    )
    for bad in ("synthetic:nope", "device:front"):
        with pytest.raises(SourceError):
            open_source(bad)
