"""Frame sources for the phone: a synthetic camera over a photograph, a video file, a camera device."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from skimage import data

from mobile_sim.warp import image_size, resize_to

DEFAULT_SIZE = (640, 360)
DEFAULT_FPS = 30.0
DEFAULT_FRAMES = 90
DEFAULT_PAN_PX_PER_FRAME = 2.0
DEFAULT_ZOOM_PER_FRAME = 0.002
DEFAULT_PHOTO = "astronaut"
DEFAULT_STYLE_PHOTO = "rocket"

VIEW_FRACTION = 0.8  # the widest view spans this fraction of the photo's tighter side
MAX_ZOOM_IN = 1.15  # deepest zoom relative to the widest view
VERTICAL_PAN_RATIO = 0.5  # peak vertical pan speed relative to the horizontal one
RGB_CHANNELS, RGBA_CHANNELS = 3, 4
MIN_PHOTO_SIDE = 2

SPEC_SYNTHETIC = "synthetic"
SPEC_DEVICE = "device"

# Only photos bundled in the scikit-image wheel: others (eagle, lily, ...) would need a download.
_PHOTO_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": data.astronaut,
    "brick": data.brick,
    "camera": data.camera,
    "chelsea": data.chelsea,
    "coffee": data.coffee,
    "coins": data.coins,
    "colorwheel": data.colorwheel,
    "grass": data.grass,
    "gravel": data.gravel,
    "hubble_deep_field": data.hubble_deep_field,
    "immunohistochemistry": data.immunohistochemistry,
    "logo": data.logo,
    "moon": data.moon,
    "motorcycle_left": lambda: data.stereo_motorcycle()[0],
    "motorcycle_right": lambda: data.stereo_motorcycle()[1],
    "retina": data.retina,
    "rocket": data.rocket,
}
PHOTO_NAMES: tuple[str, ...] = tuple(sorted(_PHOTO_LOADERS))


class SourceError(ValueError):
    """A frame source cannot be opened or yields nothing."""


class FrameSource(Protocol):
    """Yields BGR uint8 frames of `size` (width, height) at `fps`."""

    size: tuple[int, int]
    fps: float

    def read(self) -> np.ndarray | None:
        """Next frame, or None at the end."""
        ...

    def close(self) -> None:
        """Release the underlying resource."""
        ...


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive (width, height), got {size}")
    return int(width), int(height)


def _check_frames(frames: int | None) -> None:
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")


def sample_photo(name: str = DEFAULT_PHOTO) -> np.ndarray:
    """A photo bundled with scikit-image (see PHOTO_NAMES) as BGR uint8, loaded offline."""
    loader = _PHOTO_LOADERS.get(name)
    if loader is None:
        raise SourceError(f"unknown sample photo {name!r}; choose one of {', '.join(PHOTO_NAMES)}")
    image = loader()
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == RGBA_CHANNELS:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGR)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def default_style_photo() -> np.ndarray:
    """The default style: "rocket", a launch pad at dusk (deep blue sky, warm lamps).

    Its colours differ clearly from the default content ("astronaut": bright, orange suit):
    mean CIELAB (8-bit) is L 66 / a 132 / b 114 against L 122 / a 142 / b 140, i.e. darker and
    bluer, a day-to-dusk transfer that is easy to see. "coffee" would be too close (warm, orange).
    """
    return sample_photo(DEFAULT_STYLE_PHOTO)


class SyntheticCamera:
    """A virtual camera panning and zooming smoothly over a photograph; its motion is known exactly.

    The photo is resized once (`self.photo`) so that the widest view spans VIEW_FRACTION of it at
    one photo pixel per output pixel. The view centre follows sinusoids (peak horizontal speed
    `pan_px_per_frame`, vertical VERTICAL_PAN_RATIO of it) and the zoom oscillates between 1 and
    MAX_ZOOM_IN (peak relative rate `zoom_per_frame`), so the view never leaves the photo however
    many frames are read.
    """

    def __init__(
        self,
        image: np.ndarray,
        size: tuple[int, int] = DEFAULT_SIZE,
        frames: int = DEFAULT_FRAMES,
        fps: float = DEFAULT_FPS,
        pan_px_per_frame: float = DEFAULT_PAN_PX_PER_FRAME,
        zoom_per_frame: float = DEFAULT_ZOOM_PER_FRAME,
    ) -> None:
        if image.ndim != 3 or image.shape[2] != RGB_CHANNELS or image.dtype != np.uint8:
            raise ValueError(f"image must be BGR uint8 HxWx3, got {image.shape} {image.dtype}")
        if min(image.shape[:2]) < MIN_PHOTO_SIDE:
            raise ValueError(f"photo must be at least {MIN_PHOTO_SIDE} px on each side, got {image.shape}")
        _check_frames(frames)
        if fps <= 0 or pan_px_per_frame < 0 or zoom_per_frame < 0:
            raise ValueError("fps must be > 0; pan_px_per_frame and zoom_per_frame must be >= 0")
        self.size = _check_size(size)
        self.fps = float(fps)
        self.frames = frames
        width, height = self.size
        photo_width, photo_height = image_size(image)
        scale = max(
            (width - 1) / (VIEW_FRACTION * (photo_width - 1)),
            (height - 1) / (VIEW_FRACTION * (photo_height - 1)),
        )
        resized = (max(width, math.ceil(photo_width * scale)), max(height, math.ceil(photo_height * scale)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        self.photo = cv2.resize(image, resized, interpolation=interpolation)
        slack_x, slack_y = resized[0] - width, resized[1] - height
        self._centre = ((resized[0] - 1) / 2, (resized[1] - 1) / 2)
        self._amplitude = (slack_x / 2, slack_y / 2)
        self._pan_rate = (
            pan_px_per_frame / self._amplitude[0] if self._amplitude[0] > 0 else 0.0,
            VERTICAL_PAN_RATIO * pan_px_per_frame / self._amplitude[1] if self._amplitude[1] > 0 else 0.0,
        )
        self._log_zoom = math.log(MAX_ZOOM_IN)
        self._zoom_rate = 2 * zoom_per_frame / self._log_zoom
        self._next = 0

    def camera_matrix(self, i: int) -> np.ndarray:
        """2x3 affine mapping output pixel coords of frame i to coords in `self.photo`."""
        width, height = self.size
        scale = math.exp(-self._log_zoom * (1 - math.cos(self._zoom_rate * i)) / 2)
        centre_x = self._centre[0] + self._amplitude[0] * math.sin(self._pan_rate[0] * i)
        centre_y = self._centre[1] + self._amplitude[1] * math.sin(self._pan_rate[1] * i)
        return np.array(
            [
                [scale, 0.0, centre_x - scale * (width - 1) / 2],
                [0.0, scale, centre_y - scale * (height - 1) / 2],
            ]
        )

    def render(self, i: int) -> np.ndarray:
        """Frame i (any i >= 0, independent of `read`)."""
        return cv2.warpAffine(
            self.photo,
            self.camera_matrix(i),
            self.size,
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )

    def true_flow(self, i: int, j: int) -> np.ndarray:
        """HxWx2 float32 f: pixel x of frame i shows the photo point that frame j shows at x + f(x)."""
        i_to_j = cv2.invertAffineTransform(self.camera_matrix(j)) @ np.vstack([self.camera_matrix(i), [0.0, 0.0, 1.0]])
        width, height = self.size
        xs = np.arange(width, dtype=np.float64)[np.newaxis, :]
        ys = np.arange(height, dtype=np.float64)[:, np.newaxis]
        flow = np.empty((height, width, 2), np.float32)
        flow[..., 0] = i_to_j[0, 0] * xs + i_to_j[0, 1] * ys + i_to_j[0, 2] - xs
        flow[..., 1] = i_to_j[1, 0] * xs + i_to_j[1, 1] * ys + i_to_j[1, 2] - ys
        return flow

    def read(self) -> np.ndarray | None:
        """Next of the `frames` frames, then None."""
        if self._next >= self.frames:
            return None
        frame = self.render(self._next)
        self._next += 1
        return frame

    def close(self) -> None:
        """Nothing to release."""


class _CaptureSource:
    """Frames from a cv2.VideoCapture, resized to `size`, at most `frames` of them."""

    def __init__(
        self,
        capture: cv2.VideoCapture,
        first: np.ndarray | None,
        size: tuple[int, int],
        fps: float,
        frames: int | None,
    ) -> None:
        self.size = size
        self.fps = fps
        self._capture = capture
        self._first = first
        self._remaining = frames

    def read(self) -> np.ndarray | None:
        """Next frame at `size`, or None at the end."""
        if self._remaining is not None and self._remaining <= 0:
            return None
        if self._first is not None:
            frame, self._first = self._first, None
        else:
            ok, frame = self._capture.read()
            if not ok:
                return None
        if self._remaining is not None:
            self._remaining -= 1
        return resize_to(frame, self.size)

    def close(self) -> None:
        """Release the capture."""
        self._capture.release()


class VideoFileSource(_CaptureSource):
    """Frames of a video file (any container/codec OpenCV's FFmpeg reads); fps from the file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        size: tuple[int, int] | None = None,
        frames: int | None = None,
    ) -> None:
        _check_frames(frames)
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"video file {self.path}: no such file")
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise SourceError(f"cannot open video file {self.path}")
        ok, first = capture.read()
        if not ok:
            capture.release()
            raise SourceError(f"video file {self.path} has no frames")
        file_fps = capture.get(cv2.CAP_PROP_FPS)
        fps = file_fps if math.isfinite(file_fps) and file_fps > 0 else DEFAULT_FPS
        super().__init__(capture, first, image_size(first) if size is None else _check_size(size), fps, frames)


class DeviceSource(_CaptureSource):
    """Frames of a camera device (cv2.VideoCapture(index)), resized to `size` if it ignores the request."""

    def __init__(
        self,
        index: int,
        size: tuple[int, int] = DEFAULT_SIZE,
        fps: float = DEFAULT_FPS,
        frames: int | None = None,
    ) -> None:
        _check_frames(frames)
        width, height = _check_size(size)
        capture = cv2.VideoCapture(index)
        if not capture.isOpened():
            raise SourceError(f"cannot open camera device {index}")
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        capture.set(cv2.CAP_PROP_FPS, fps)
        super().__init__(capture, None, (width, height), fps, frames)


def open_source(
    spec: str,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    frames: int | None = None,
) -> FrameSource:
    """Open "synthetic", "synthetic:<photo name>", "device:<index>" or a video file path.

    `size` and `fps` default to DEFAULT_SIZE / DEFAULT_FPS for synthetic and device sources; a video
    file keeps its own rate and, without `size`, its own size. `frames` limits the frame count
    (DEFAULT_FRAMES for a synthetic camera when None).
    """
    kind, _, argument = spec.partition(":")
    if kind == SPEC_SYNTHETIC:
        return SyntheticCamera(
            sample_photo(argument or DEFAULT_PHOTO),
            size=size or DEFAULT_SIZE,
            frames=DEFAULT_FRAMES if frames is None else frames,
            fps=fps or DEFAULT_FPS,
        )
    if kind == SPEC_DEVICE:
        try:
            index = int(argument)
        except ValueError:
            raise SourceError(f"bad device spec {spec!r}: expected device:<index>") from None
        return DeviceSource(index, size=size or DEFAULT_SIZE, fps=fps or DEFAULT_FPS, frames=frames)
    return VideoFileSource(spec, size=size, frames=frames)
