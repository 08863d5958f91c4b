"""The paper's stylizer as a federated-learning participant: Eq. 5 on the key frames an edge served.

:class:`RetrainableStylizer` serves like the :class:`PhotoStylizer` it wraps (the worker's
``Stylizer`` interface) and retrains it (the ``Trainable`` protocol of :mod:`edge_worker.model.base`)
with the paper's optimiser (Adam, β = (0.5, 0.999), lr 1e-4) on (content, style) pairs, each batch
at its own random upscale factor r, as in offline training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from edge_worker.model.base import Size, TrainingPair
from edge_worker.model.stylizer import PhotoStylizer
from edge_worker.training import (
    ADAM_BETAS,
    DEFAULT_LR,
    DEFAULT_STYLE_WEIGHT,
    DEFAULT_TRAIN_SIZE,
    Batch,
    batch_from_crops,
    random_crop,
    random_output_side,
    stylization_losses,
)
from streaming.tensors import NamedArrays


def batch_from_pairs(pairs: Sequence[TrainingPair], train_size: int, step: int, rng: np.random.Generator) -> Batch:
    """A training batch from (content, style) RGB pairs: random crops, one random r for the batch."""
    full = random_output_side(train_size, step, rng)
    contents, styles = [], []
    for content, style in pairs:
        contents.append(random_crop(content, (full, full), rng))
        styles.append(random_crop(style, (full, full), rng))
    return batch_from_crops(contents, styles, train_size)


class RetrainableStylizer:
    """A :class:`PhotoStylizer` that serves and retrains; the frozen encoder is never exchanged."""

    def __init__(
        self,
        model: PhotoStylizer,
        lr: float = DEFAULT_LR,
        style_weight: float = DEFAULT_STYLE_WEIGHT,
        train_size: int = DEFAULT_TRAIN_SIZE,
        seed: int = 0,
    ) -> None:
        self.model = model.eval()
        self.name = model.name
        self._lr, self._style_weight, self._train_size = lr, style_weight, train_size
        self._rng = np.random.default_rng(seed)
        learned = {id(p) for p in model.learned_parameters()}
        self.learned_names = sorted(name for name, p in model.named_parameters() if id(p) in learned)
        self._optimizer: torch.optim.Optimizer | None = None

    def prepare_style(self, style: np.ndarray) -> Any:
        """As :meth:`PhotoStylizer.prepare_style`."""
        return self.model.prepare_style(style)

    def stylize(self, content: np.ndarray, style: Any, out_size: Size) -> np.ndarray:
        """As :meth:`PhotoStylizer.stylize`."""
        return self.model.stylize(content, style, out_size)

    def stylize_with_coefficients(
        self, content: np.ndarray, style: Any, out_size: Size
    ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`PhotoStylizer.stylize_with_coefficients`."""
        return self.model.stylize_with_coefficients(content, style, out_size)

    def coefficients(self, content: np.ndarray, style: Any, out_size: Size) -> np.ndarray:
        """As :meth:`PhotoStylizer.coefficients`."""
        return self.model.coefficients(content, style, out_size)

    def coefficients_batch(
        self, contents: Sequence[np.ndarray], styles: Sequence[Any], out_sizes: Sequence[Size]
    ) -> list[np.ndarray]:
        """As :meth:`PhotoStylizer.coefficients_batch`."""
        return self.model.coefficients_batch(contents, styles, out_sizes)

    def stylize_batch(
        self, contents: Sequence[np.ndarray], styles: Sequence[Any], out_sizes: Sequence[Size]
    ) -> list[np.ndarray]:
        """As :meth:`PhotoStylizer.stylize_batch`."""
        return self.model.stylize_batch(contents, styles, out_sizes)

    def learned_state(self) -> NamedArrays:
        """The learned parameters (colorization, decoder, meta-smoothing) as float32 arrays."""
        params = dict(self.model.named_parameters())
        return {name: params[name].detach().cpu().numpy().astype(np.float32, copy=True) for name in self.learned_names}

    def load_learned_state(self, state: NamedArrays) -> None:
        """Replace the learned parameters (names must match exactly)."""
        if sorted(state) != self.learned_names:
            raise ValueError("learned state does not match this model's parameters")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(torch.from_numpy(np.asarray(value, np.float32)))

    def train_step(self, pairs: Sequence[TrainingPair]) -> float:
        """One Adam step of Eq. 5 on the pairs; returns the total loss."""
        if self._optimizer is None:  # created on first use: a serving-only worker never pays for Adam's state
            self._optimizer = torch.optim.Adam(self.model.learned_parameters(), lr=self._lr, betas=ADAM_BETAS)
        batch = batch_from_pairs(pairs, self._train_size, self.model.encoder.downsampling, self._rng)
        self.model.train()
        try:
            losses = stylization_losses(self.model, batch, self._style_weight)
            self._optimizer.zero_grad()
            losses["total"].backward()
            self._optimizer.step()
        finally:
            self.model.eval()
        return float(losses["total"].detach())

    @torch.no_grad()
    def evaluate(self, pairs: Sequence[TrainingPair], seed: int = 0) -> dict[str, float]:
        """Eq. 5 losses (content, style, total) on fixed pairs, with crops and r drawn from ``seed``: comparable
        across calls and models."""
        rng = np.random.default_rng(seed)
        batch = batch_from_pairs(pairs, self._train_size, self.model.encoder.downsampling, rng)
        losses = stylization_losses(self.model.eval(), batch, self._style_weight)
        return {name: float(value) for name, value in losses.items()}
