"""Style and content distances in the deep features of an ImageNet network the stylizer does not use.

Gatys, Ecker, Bethge, "Image style transfer using convolutional neural networks", CVPR 2016: style is the Gram
matrices of several layers' features, content one layer's features. Here the layers are the ends of
EfficientNet-Lite2's stages (:mod:`bench.efficientnet_lite`): strides 2, 4, 8, 16 and 32 for style (Gatys:
relu1_1 ... relu5_1 of VGG19), stride 16 for content (Gatys: conv4_2). Images are scaled to a short side of
:data:`FEATURE_SHORT_SIDE` first, near the network's native 260.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bench.efficientnet_lite import load_efficientnet_lite2
from bench.held_out import short_side

STYLE_STAGES = (0, 1, 2, 3, 5)
CONTENT_STAGE = 3
FEATURE_SHORT_SIDE = 256


@dataclass(frozen=True)
class DeepFeatures:
    """An image's Gram matrices (one per style layer) and its content-layer features."""

    grams: tuple[np.ndarray, ...]
    content: np.ndarray


def gram_matrices(features: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Each ``C x H x W`` feature map's Gram matrix ``F Fᵀ / (H W)`` (Gatys et al. Eq. 3, divided by the number
    of positions so that images of different sizes compare)."""
    return tuple(f.reshape(f.shape[0], -1) @ f.reshape(f.shape[0], -1).T / (f.shape[1] * f.shape[2]) for f in features)


def gram_style_distance(grams: Sequence[np.ndarray], style_grams: Sequence[np.ndarray]) -> float:
    """Style distance, Gatys et al. Eq. 4-5 with equal layer weights: the mean over layers of
    ``‖G - A‖²_F / (4 N²)`` (N channels; G and A per position, so for images of one size this is exactly their
    ``Σ (G - A)² / (4 N² M²)``). Lower is closer to the style."""
    return float(
        np.mean([np.sum((g - a) ** 2) / (4 * g.shape[0] ** 2) for g, a in zip(grams, style_grams, strict=True)])
    )


def feature_content_distance(features: np.ndarray, content_features: np.ndarray) -> float:
    """Content distance, Gatys et al. Eq. 1 per feature element: ``½ mean (F - P)²`` of one layer's features of
    two images of one size. Lower keeps more of the content."""
    if features.shape != content_features.shape:
        raise ValueError(f"content features differ in shape: {features.shape} vs {content_features.shape}")
    return float(0.5 * np.mean((features - content_features) ** 2))


@torch.inference_mode()
def deep_features(image: np.ndarray) -> DeepFeatures:
    """The Gram matrices and content features of an RGB uint8 image (scaled to :data:`FEATURE_SHORT_SIDE`)."""
    net = load_efficientnet_lite2()
    stages = tuple(sorted({*STYLE_STAGES, CONTENT_STAGE}))
    maps = net.stage_features(net.normalise(short_side(image, FEATURE_SHORT_SIDE)), stages)
    by_stage = {s: m[0].double().numpy() for s, m in zip(stages, maps, strict=True)}
    return DeepFeatures(gram_matrices([by_stage[s] for s in STYLE_STAGES]), by_stage[CONTENT_STAGE])
