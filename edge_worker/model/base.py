"""The interfaces of a model: every stylizer implements :class:`Stylizer` (the worker service only knows this),
a retrainable one also :class:`Trainable` (what federated learning knows)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from streaming.tensors import NamedArrays

Size = tuple[int, int]
"""(width, height) in pixels."""
TrainingPair = tuple[np.ndarray, np.ndarray]
"""(content, style), RGB uint8."""


@runtime_checkable
class Stylizer(Protocol):
    """Photorealistic style transfer of one content frame with a prepared style.

    Images are numpy ``uint8`` arrays, ``H x W x 3``, RGB. Implementations are not required to be
    thread-safe: the service calls them from one inference thread.
    """

    name: str

    def prepare_style(self, style: np.ndarray) -> Any:
        """Compute whatever the stylizer needs from a style image (cached by style id by the caller)."""
        ...

    def stylize(self, content: np.ndarray, style: Any, out_size: Size) -> np.ndarray:
        """Stylize ``content`` with a prepared ``style``; return an RGB image of ``out_size``."""
        ...


@runtime_checkable
class CoefficientStylizer(Stylizer, Protocol):
    """A stylizer whose output is a local affine colour map of the content: it can return the maps.

    Coefficients are ``h x w x 12`` float32 (a 3x3 matrix row-major, then the offset) on RGB in [0, 1];
    resampled bilinearly (pixel centres aligned) to the output size and applied to the resized content,
    then clipped to [0, 1], they give the output. Any ``h x w`` works, ``1 x 1`` for a global map.
    """

    def stylize_with_coefficients(
        self, content: np.ndarray, style: Any, out_size: Size
    ) -> tuple[np.ndarray, np.ndarray]:
        """The stylized image (as ``stylize``) and its affine coefficients."""
        ...

    def coefficients(self, content: np.ndarray, style: Any, out_size: Size) -> np.ndarray:
        """The coefficients ``stylize_with_coefficients`` returns, without rendering the image: cheaper when only
        the maps are sent. ``out_size`` stays an argument because a model may fit its maps for the upscale factor."""
        ...


@runtime_checkable
class Trainable(Protocol):
    """A model the edge can retrain and exchange with the cloud."""

    def learned_state(self) -> NamedArrays:
        """Copies of the learned parameters (float32), by name."""
        ...

    def load_learned_state(self, state: NamedArrays) -> None:
        """Replace the learned parameters."""
        ...

    def train_step(self, pairs: Sequence[TrainingPair]) -> float:
        """One optimisation step (Eq. 5) on a batch; returns the loss."""
        ...


@runtime_checkable
class BatchStylizer(Stylizer, Protocol):
    """A stylizer that serves several requests in one call: its network runs once for the batch."""

    def coefficients_batch(
        self, contents: Sequence[np.ndarray], styles: Sequence[Any], out_sizes: Sequence[Size]
    ) -> list[np.ndarray]:
        """``coefficients`` of every item, in order."""
        ...

    def stylize_batch(
        self, contents: Sequence[np.ndarray], styles: Sequence[Any], out_sizes: Sequence[Size]
    ) -> list[np.ndarray]:
        """``stylize`` of every item, in order."""
        ...


def check_image(image: np.ndarray, what: str) -> None:
    """Raise ``ValueError`` unless ``image`` is a non-empty ``uint8`` H x W x 3 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must be a uint8 HxWx3 array, got {getattr(image, 'shape', type(image))}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what} is empty")


def check_size(size: Size) -> None:
    """Raise ``ValueError`` unless ``size`` is a positive (width, height)."""
    if len(size) != 2 or size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"output size must be a positive (width, height), got {size}")
