"""Dense optical flow between an intermediate frame and its key frame (OpenCV DIS by default)."""

from __future__ import annotations

import cv2
import numpy as np

DIS_PRESETS: dict[str, int] = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
DEFAULT_PRESET = "ultrafast"


def _gray(image: np.ndarray) -> np.ndarray:
    """8-bit single-channel view of a BGR or grayscale uint8 image."""
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    raise ValueError(f"images must be HxW or HxWx3, got shape {image.shape}")


class FlowEstimator:
    """Backward flow with DIS (Kroeger et al., "Fast Optical Flow using Dense Inverse Search", ECCV 2016).

    Holds one cv2.DISOpticalFlow instance, so it is not thread-safe.
    """

    def __init__(self, preset: str = DEFAULT_PRESET) -> None:
        if preset not in DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose one of {sorted(DIS_PRESETS)}")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow.create(DIS_PRESETS[preset])

    def estimate(self, frame: np.ndarray, key: np.ndarray) -> np.ndarray:
        """HxWx2 float32 flow f such that frame pixel x shows key pixel x + f(x)."""
        if frame.shape != key.shape:
            raise ValueError(f"frame {frame.shape} and key {key.shape} must have the same shape")
        # No preallocated output: OpenCV 5.0's DIS reads a passed flow array as its initial guess, and
        # uninitialised memory there sends it out of bounds (segfault). The stubs do not allow None.
        flow: np.ndarray = self._dis.calc(_gray(frame), _gray(key), None)  # type: ignore[call-overload]
        return flow
