"""An emulated accelerator: a stand-in for a GPU worker's model, for scaling experiments on a small CPU.

:class:`EmulatedAccelerator` (``--model emulated``) is **not** a GPU and runs no network. Each call takes the
time a GPU would take for the batch, by the service-time profile of :class:`ServiceTimeProfile` (a fixed cost
per batch plus a cost per item), spent in ``time.sleep`` on the calling inference thread, so the CPU stays free:
32 emulated workers fit on 2 cores. The answer is still a real, cheap stylization: the global Monge-Kantorovich
colour transfer of :mod:`edge_worker.model.color_transfer`, fitted on a thumbnail of the frame
(:data:`THUMBNAIL_SIDE`) and applied at the output size with OpenCV (well under a millisecond), as ``1 x 1 x 12``
coefficients or a rendered frame, so every downstream step (encoding, the phone's reconstruction) sees real data
of the real shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import cv2
import numpy as np

from edge_worker.model.base import Size, check_image, check_size
from edge_worker.model.color_transfer import (
    ColorStats,
    apply_global_map_uint8,
    color_stats,
    global_map_coefficients,
    monge_kantorovich_map,
)

T = TypeVar("T")

DEFAULT_FIXED_MS = 4.0
"""Milliseconds per batch whatever its size. A placeholder until ``python -m bench.gpu`` has run on a GPU (its
``emulated_profile`` is the least-squares line through the measured batch latencies): an assumed order of
magnitude for a host round trip (upload, the smoothing's many small kernels, download) on a datacenter GPU."""
DEFAULT_PER_ITEM_MS = 1.5
"""Milliseconds per key frame in a batch. A placeholder as :data:`DEFAULT_FIXED_MS`: an assumed fp16 cost of the
bundled network (encoder, colorization, decoder) at 456x256 plus its maps on a datacenter GPU, not a measurement."""
THUMBNAIL_SIDE = 64
"""Long side (pixels) of the thumbnail the emulated colour transfer is fitted on."""


@dataclass(frozen=True)
class ServiceTimeProfile:
    """How long an emulated batch of ``n`` key frames takes: ``fixed_ms + n * per_item_ms``."""

    fixed_ms: float = DEFAULT_FIXED_MS
    per_item_ms: float = DEFAULT_PER_ITEM_MS

    def __post_init__(self) -> None:
        if self.fixed_ms < 0 or self.per_item_ms < 0:
            raise ValueError(f"service times must be >= 0 ms, got {self.fixed_ms} + {self.per_item_ms}/item")

    def batch_seconds(self, n: int) -> float:
        """Seconds a batch of ``n`` items takes."""
        return (self.fixed_ms + n * self.per_item_ms) / 1000.0


def thumbnail(image: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """``image`` shrunk (area filter) so that its long side is at most ``side`` pixels."""
    scale = side / max(image.shape[:2])
    if scale >= 1.0:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


@dataclass
class EmulatedAccelerator:
    """A stand-in for a GPU, not one: sleeps for the profile's service time and answers with a thumbnail colour
    transfer. Implements the ``CoefficientStylizer`` interface and its batch methods."""

    profile: ServiceTimeProfile = field(default_factory=ServiceTimeProfile)
    name: str = "emulated"

    def prepare_style(self, style: np.ndarray) -> ColorStats:
        """Colour statistics of the style's thumbnail (free: a GPU worker prepares a style once per style id)."""
        check_image(style, "style")
        return color_stats(thumbnail(style))

    def coefficients(self, content: np.ndarray, style: ColorStats, out_size: Size) -> np.ndarray:
        """The global colour map, ``1 x 1 x 12``, after the service time of a batch of one."""
        return self.coefficients_batch([content], [style], [out_size])[0]

    def stylize_with_coefficients(
        self, content: np.ndarray, style: ColorStats, out_size: Size
    ) -> tuple[np.ndarray, np.ndarray]:
        """The frame at ``out_size`` and its global colour map, after the service time of a batch of one."""
        coeffs = self.coefficients(content, style, out_size)
        return apply_global_map_uint8(content, coeffs, out_size), coeffs

    def stylize(self, content: np.ndarray, style: ColorStats, out_size: Size) -> np.ndarray:
        """The frame at ``out_size``, after the service time of a batch of one."""
        return self.stylize_batch([content], [style], [out_size])[0]

    def coefficients_batch(
        self, contents: Sequence[np.ndarray], styles: Sequence[ColorStats], out_sizes: Sequence[Size]
    ) -> list[np.ndarray]:
        """Every item's global colour map, after the service time of a batch of ``len(contents)``."""
        return self._serve(len(contents), lambda: self._fit(contents, styles, out_sizes))

    def stylize_batch(
        self, contents: Sequence[np.ndarray], styles: Sequence[ColorStats], out_sizes: Sequence[Size]
    ) -> list[np.ndarray]:
        """Every item's frame at its output size, after the service time of a batch of ``len(contents)``."""

        def render() -> list[np.ndarray]:
            maps = self._fit(contents, styles, out_sizes)
            return [apply_global_map_uint8(c, m, o) for c, m, o in zip(contents, maps, out_sizes, strict=True)]

        return self._serve(len(contents), render)

    def _fit(
        self, contents: Sequence[np.ndarray], styles: Sequence[ColorStats], out_sizes: Sequence[Size]
    ) -> list[np.ndarray]:
        if not len(contents) == len(styles) == len(out_sizes):
            raise ValueError(f"batch lengths differ: {len(contents)}, {len(styles)}, {len(out_sizes)}")
        maps = []
        for content, style, out_size in zip(contents, styles, out_sizes, strict=True):
            check_image(content, "content")
            check_size(out_size)
            maps.append(global_map_coefficients(*monge_kantorovich_map(color_stats(thumbnail(content)), style)))
        return maps

    def _serve(self, n: int, work: Callable[[], T]) -> T:
        """``work()``, returned no sooner than the profile's time for ``n`` items after the call began (the cheap
        real work counts toward it; the rest is slept)."""
        done_at = time.perf_counter() + self.profile.batch_seconds(n)
        result = work()
        remaining = done_at - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)
        return result
