"""Writes the phone's output: ``stylized.mp4`` and ``side_by_side.mp4`` (source | stylized), H.264."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CODEC = "libx264"
CRF = "20"
PRESET = "veryfast"
STYLIZED_FILE = "stylized.mp4"
SIDE_BY_SIDE_FILE = "side_by_side.mp4"
VIDEO_FILES = (STYLIZED_FILE, SIDE_BY_SIDE_FILE)


class _Mp4Writer:
    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        self._container = av.open(str(path), mode="w")
        stream = self._container.add_stream(CODEC, rate=Fraction(fps).limit_denominator(1001))
        assert isinstance(stream, av.VideoStream)
        self._stream = stream
        self._stream.width, self._stream.height = size
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": CRF, "preset": PRESET}

    def write(self, image_bgr: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(image_bgr, format="bgr24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


class VideoRecorder:
    """Records output frames in order (call from one thread; sizes must be even for yuv420p)."""

    def __init__(self, out_dir: Path, size: tuple[int, int], fps: float) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.stylized_path = out_dir / STYLIZED_FILE
        self.side_by_side_path = out_dir / SIDE_BY_SIDE_FILE
        width, height = size
        self._stylized = _Mp4Writer(self.stylized_path, (width, height), fps)
        self._side = _Mp4Writer(self.side_by_side_path, (2 * width, height), fps)
        self.frames = 0

    def write(self, source_bgr: np.ndarray, stylized_bgr: np.ndarray) -> None:
        """Append one frame to both videos."""
        self._stylized.write(stylized_bgr)
        self._side.write(np.hstack([source_bgr, stylized_bgr]))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoders and close the files."""
        self._stylized.close()
        self._side.close()
