"""Training the lite stylizer (:mod:`edge_worker.model.lite`): look-transfer batches, the loss, held-out evaluation.

Self-supervised: for photographs ``I`` (content) and ``J`` (another scene) and a random colour look ``a``
(:mod:`edge_worker.looks`), the model stylizes ``I`` with the style ``a(J)`` and is scored against ``a(I)`` (L1 on
RGB at the output size), plus the paper's Eq. 5 terms in the frozen encoder's features (style: channel statistics
of the style; content: the content's deepest features), weighted :data:`LITE_STYLE_WEIGHT` and
:data:`LITE_CONTENT_WEIGHT` (off by default).

Used by ``mvs train --model lite`` (:mod:`edge_worker.train`) and by on-edge retraining
(:meth:`LiteStylizer.train_step`, on the key frames and styles a worker served).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edge_worker.looks import random_look
from edge_worker.model.base import TrainingPair
from edge_worker.model.efficientnet_lite import EfficientNetLite0
from edge_worker.model.lite import LiteConfig, LiteStylizer
from edge_worker.model.meta_smoothing import apply_affine, resample
from edge_worker.model.stylizer import resize, to_tensor
from edge_worker.model.vgg import Encoded
from edge_worker.quality import gaussian_w2, psnr_from_mse, structure_ssim
from edge_worker.training import (
    BUNDLED_PHOTOS,
    EVAL_SIZE,
    HELD_OUT_STYLES,
    content_loss,
    random_crop,
    random_output_side,
    style_loss,
)

LITE_PHOTOS = tuple(name for name in BUNDLED_PHOTOS if name not in HELD_OUT_STYLES)
"""scikit-image's training photographs less the held-out styles (the held-out photos are not among them)."""
LITE_LR = 1e-3
LITE_BATCH = 8
SAME_SCENE = 0.1
"""Share of pairs whose style is another crop of the content's own photo."""
LITE_STYLE_WEIGHT = 0.0
LITE_CONTENT_WEIGHT = 0.0
"""Default weights of Eq. 5's style and content terms (relative MSEs in the encoder's features) beside the look
term: none, as the bundled head was trained. With 0.5 and 0.2, 150 more steps from it moved held-out SSIM / Gaussian
W2 from 0.646 / 5.47 to 0.639 / 5.61 (weights README)."""
EVAL_LOOK_SEED = 1234
"""Seed of the fixed looks of the held-out look-transfer check."""


@dataclass
class LookBatch:
    """Content at network and output size, the style at network size, the target at output size."""

    content_low: torch.Tensor
    content_full: torch.Tensor
    style_low: torch.Tensor
    target_full: torch.Tensor


def look_batch(
    contents: Sequence[np.ndarray],
    styles: Sequence[np.ndarray],
    rng: np.random.Generator,
    train_size: int,
) -> LookBatch:
    """A look-transfer batch at network side ``train_size`` (the model's work size): content crop ``I`` of each
    content, a crop ``J`` of its style photo (or of the
    content's photo, :data:`SAME_SCENE`), a random look ``a``; style ``a(J)``, target ``a(I)``."""
    full = random_output_side(train_size, 32, rng)
    low = (train_size, train_size)
    c_low, c_full, s_low, t_full = [], [], [], []
    for content, style in zip(contents, styles, strict=True):
        crop = random_crop(content, (full, full), rng)
        other = random_crop(content if rng.random() < SAME_SCENE else style, (full, full), rng)
        look = random_look(rng)
        c_low.append(to_tensor(resize(crop, low)))
        c_full.append(to_tensor(crop))
        s_low.append(to_tensor(resize(look.apply_uint8(other), low)))
        t_full.append(torch.from_numpy(look(crop.astype(np.float32) / 255.0)).permute(2, 0, 1).unsqueeze(0))
    return LookBatch(torch.cat(c_low), torch.cat(c_full), torch.cat(s_low), torch.cat(t_full))


def look_losses(
    model: LiteStylizer,
    batch: LookBatch,
    style_weight: float = LITE_STYLE_WEIGHT,
    content_weight: float = LITE_CONTENT_WEIGHT,
) -> dict[str, torch.Tensor]:
    """The look term (L1 between the stylized content, full strength, and the look applied to it) and, when their
    weights are non-zero, Eq. 5's perceptual terms in the frozen encoder's features (the output at network size
    against the style's channel statistics and the content's deepest features); ``total`` is their weighted sum."""
    model.train()
    device = model.device
    content_low, style_low = batch.content_low.to(device), batch.style_low.to(device)
    style = model.style_state(style_low)
    coeffs = model.maps(content_low, style, batch.content_full.shape[-1] / content_low.shape[-1], 1.0)
    out = apply_affine(resample(coeffs, tuple(batch.content_full.shape[-2:])), batch.content_full.to(device))
    losses = {"look": F.l1_loss(out, batch.target_full.to(device))}
    total = losses["look"]
    if style_weight > 0 or content_weight > 0:
        out_low = apply_affine(resample(coeffs, tuple(content_low.shape[-2:])), content_low)
        taps = model.config.taps
        encoded = Encoded(model.encoder.features(out_low.contiguous(memory_format=torch.channels_last), taps), [], [])
        target_style = Encoded(model.encode(style_low), [], [])
        target_content = Encoded(model.encode(content_low), [], [])
        losses["style"] = style_loss(encoded, target_style)
        losses["content"] = content_loss(encoded, target_content)
        total = total + style_weight * losses["style"] + content_weight * losses["content"]
    losses["total"] = total
    return losses


def look_loss(model: LiteStylizer, batch: LookBatch) -> torch.Tensor:
    """The training objective of :func:`look_losses` (its ``total``)."""
    return look_losses(model, batch)["total"]


def make_optimizer(model: LiteStylizer, lr: float = LITE_LR) -> torch.optim.Optimizer:
    """Adam on the learned parts only."""
    return torch.optim.Adam(model.learned_parameters(), lr=lr)


def sample_pairs(
    photos: Sequence[np.ndarray], batch: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``batch`` (content, style) photographs, two different ones per pair where there are two."""
    contents, styles = [], []
    for _ in range(batch):
        i, j = rng.choice(len(photos), size=2, replace=len(photos) < 2)
        contents.append(photos[i])
        styles.append(photos[j])
    return contents, styles


def _eval_size(photo: np.ndarray) -> np.ndarray:
    scale = EVAL_SIZE / min(photo.shape[:2])
    return resize(photo, (round(photo.shape[1] * scale), round(photo.shape[0] * scale)))


@torch.no_grad()
def evaluate_lite(
    model: LiteStylizer, held_out: Sequence[np.ndarray], styles: Sequence[np.ndarray]
) -> dict[str, float]:
    """Held-out structure SSIM and Gaussian W2 of stylizations, and the look-transfer PSNR (content ``I``, style
    ``a(J)`` for another held-out photo ``J``, fixed looks) of the model, of identity and of the global map."""
    model.eval()
    ssims, w2s = [], []
    contents = [_eval_size(p) for p in held_out]
    for style in styles:
        state = model.prepare_style(style)
        for content in contents:
            out = model.stylize(content, state, (content.shape[1], content.shape[0]))
            ssims.append(structure_ssim(content, out))
            w2s.append(gaussian_w2(out, style))
    rng = np.random.default_rng(EVAL_LOOK_SEED)
    global_map = model.with_config(strength=0.0)
    psnr: dict[str, list[float]] = {"model": [], "identity": [], "global": []}
    for i, content in enumerate(contents):
        for j, other in enumerate(contents):
            if i == j:
                continue
            look = random_look(rng)
            target = look(content.astype(np.float32) / 255.0)
            style = look.apply_uint8(other)
            size = (content.shape[1], content.shape[0])
            outputs = {
                "model": model.stylize(content, model.prepare_style(style), size),
                "identity": content,
                "global": global_map.stylize(content, global_map.prepare_style(style), size),
            }
            for name, out in outputs.items():
                mse = float(np.mean((out.astype(np.float32) / 255.0 - target) ** 2))
                psnr[name].append(psnr_from_mse(mse, 1.0))
    return {
        "ssim": float(np.mean(ssims)),
        "gaussian_w2": float(np.mean(w2s)),
        **{f"look_psnr_{k}": float(np.mean(v)) for k, v in psnr.items()},
    }


class RetrainableLite(LiteStylizer):
    """A :class:`LiteStylizer` that also retrains (:class:`~edge_worker.model.base.Trainable`): one Adam step of the
    look-transfer objective per call, on (content, style) photographs such as the key frames a worker served."""

    def __init__(self, config: LiteConfig | None = None, encoder: EfficientNetLite0 | None = None) -> None:
        super().__init__(config, encoder)
        self._optimizer: torch.optim.Optimizer | None = None  # made on first use: a serving worker never pays
        self._rng = np.random.default_rng(0)

    def train_step(self, pairs: Sequence[TrainingPair]) -> float:
        """One step on ``pairs``; returns the loss."""
        if self._optimizer is None:
            self._optimizer = make_optimizer(self)
        batch = look_batch([c for c, _ in pairs], [s for _, s in pairs], self._rng, self.config.work_size)
        loss = look_loss(self, batch)
        self._optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._optimizer.step()
        return float(loss.detach())
