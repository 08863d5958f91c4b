"""Headless Chromium for the browser-phone tests: the system Chromium driven by Playwright, a fake camera
from a y4m file written here (the trivial YUV4MPEG2 format), and pixel helpers."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

INSTALL_HINT = (
    "apt-get install -y chromium && pip install playwright (no 'playwright install': the system Chromium is used)"
)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    """The system Chromium (MVS_CHROMIUM overrides), or None."""
    override = os.environ.get("MVS_CHROMIUM")
    if override:
        return override
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def require_chromium() -> str:
    """Chromium's path; skips the test where it is missing, except in CI (``CI=true``), where it fails."""
    path = chromium_path()
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        message = f"Chromium and Playwright for Python are needed: {INSTALL_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI must run this test: .ci/run installs them)")
        pytest.skip(message)
    return path


def chromium_args(y4m: Path | None = None) -> list[str]:
    """Flags for a headless Chromium on a loopback-only host, with a fake camera playing ``y4m``."""
    args = [
        "--allow-loopback-in-peer-connection",  # else it offers no candidate a loopback-only gateway can reach
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--use-angle=swiftshader",  # WebGL2 without a GPU
        "--enable-unsafe-swiftshader",
        "--autoplay-policy=no-user-gesture-required",
    ]
    if y4m is not None:
        args.append(f"--use-file-for-fake-video-capture={y4m}")
    return args


def write_y4m(path: Path, frames: Iterator[np.ndarray], fps: int) -> int:
    """Write BGR uint8 frames (even sides) as a 4:2:0 YUV4MPEG2 file; returns the frame count."""
    count = 0
    with path.open("wb") as out:
        for frame in frames:
            height, width = frame.shape[:2]
            if count == 0:
                out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
            count += 1
    return count


def rgba_to_bgr(b64: str, width: int, height: int) -> np.ndarray:
    """RGBA rows (base64, top row first) as a BGR uint8 image."""
    rgba = np.frombuffer(base64.b64decode(b64), np.uint8).reshape(height, width, 4)
    return cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference in grey levels."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())
