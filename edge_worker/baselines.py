"""Baselines on the same images, each a :class:`~edge_worker.model.base.Stylizer`.

- :class:`IdentityTransfer`: the content unchanged (resized): the floor every method should beat.
- :class:`ReinhardTransfer`: Lab mean/std matching (Reinhard et al., "Color transfer between images", 2001).
- :class:`~edge_worker.model.color_transfer.LinearColorTransfer`: full-covariance Monge-Kantorovich map.
- :class:`WCTBaseline`: the paper's comparator (Li et al.): closed-form WCT on the same encoder and decoder,
  followed by the same smoothing, instead of the learned colorization.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from skimage.color import lab2rgb, rgb2lab

from edge_worker.model.base import Size, check_image, check_size
from edge_worker.model.color_transfer import LinearColorTransfer
from edge_worker.model.meta_smoothing import colour_stats
from edge_worker.model.stylizer import PhotoStylizer, StyleState, resize, to_image, to_tensor
from edge_worker.model.transform import feature_stats, wct

STD_FLOOR = 1e-6
UINT8_MAX = 255.0


@dataclass(frozen=True)
class LabStats:
    """Per-channel mean and standard deviation of an image's Lab colours."""

    mean: np.ndarray
    std: np.ndarray


class IdentityTransfer:
    """Stylizer: the content resized to ``out_size``, the style ignored."""

    name = "identity"

    def prepare_style(self, style: np.ndarray) -> None:
        """Nothing to prepare."""
        check_image(style, "style")

    def stylize(self, content: np.ndarray, style: None, out_size: Size) -> np.ndarray:
        """The content at ``out_size``."""
        check_image(content, "content")
        check_size(out_size)
        return resize(content, out_size)


class ReinhardTransfer:
    """Stylizer: match each Lab channel's mean and standard deviation to the style's."""

    name = "reinhard"

    def prepare_style(self, style: np.ndarray) -> LabStats:
        """Lab statistics of the style."""
        check_image(style, "style")
        lab = rgb2lab(style).reshape(-1, 3)
        return LabStats(lab.mean(0), lab.std(0))

    def stylize(self, content: np.ndarray, style: LabStats, out_size: Size) -> np.ndarray:
        """Content resized to ``out_size`` with the style's Lab mean and std."""
        check_image(content, "content")
        check_size(out_size)
        lab = rgb2lab(resize(content, out_size))
        flat = lab.reshape(-1, 3)
        lab = (lab - flat.mean(0)) / np.maximum(flat.std(0), STD_FLOOR) * style.std + style.mean
        return (np.clip(lab2rgb(lab), 0, 1) * UINT8_MAX).round().astype(np.uint8)


class WCTBaseline:
    """Stylizer: ``model``'s encoder → closed-form WCT on all channels → ``model``'s decoder and meta-smoothing."""

    name = "wct"

    def __init__(self, model: PhotoStylizer) -> None:
        self.model = model

    @torch.inference_mode()
    def prepare_style(self, style: np.ndarray) -> StyleState:
        """Statistics of the style's deepest encoder features (all channels) and colours at the working size."""
        check_image(style, "style")
        low = to_tensor(resize(style, self.model.network_size(style.shape[1], style.shape[0])), self.model.device)
        return StyleState(feature_stats(self.model.encoder(low).deepest), colour_stats(low))

    @torch.inference_mode()
    def stylize(self, content: np.ndarray, style: StyleState, out_size: Size) -> np.ndarray:
        """WCT-stylized content, smoothed and upscaled to ``out_size`` by the model's meta-smoothing."""
        check_image(content, "content")
        check_size(out_size)
        m = self.model
        low = to_tensor(resize(content, m.network_size(content.shape[1], content.shape[0])), m.device)
        full = to_tensor(resize(content, out_size), m.device)
        encoded = m.encoder(low)
        decoded = m.decoder(wct(encoded.deepest, style.features), encoded)
        colours = style.colours if m.config.colour_alignment else None
        output, _ = m.smoothing(low, decoded.float(), full, colours, m.config.strength)
        return to_image(output)


def baselines(model: PhotoStylizer) -> list[ReinhardTransfer | LinearColorTransfer | WCTBaseline]:
    """Every baseline, the WCT one on ``model``'s encoder and decoder."""
    return [ReinhardTransfer(), LinearColorTransfer(), WCTBaseline(model)]
