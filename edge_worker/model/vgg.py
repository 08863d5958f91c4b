"""VGG19 encoder up to a configurable ReLU (relu4_1 by default) that keeps its pooling indices.

Layers sit at the same indices as torchvision's ``vgg19().features`` so an ImageNet state dict in
torchvision's format (``features.0.weight``, ``features.0.bias``, ...) loads as it is. The encoder
is frozen wherever it is used for stylization; the indices of its max-pooling layers let the
decoder unpool (PhotoWCT, Li et al. 2018) so edges land where they were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

logger = logging.getLogger(__name__)

VGG19_WIDTHS = (64, 128, 256, 512)
"""Channels of VGG19's blocks 1-4."""
VGG19_CONVS_PER_BLOCK = (2, 2, 4, 4)
"""Convolutions in VGG19's blocks 1-4."""
LAYER_NAMES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
"""The depths the encoder can stop at (first ReLU of each block)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_VGG19_FILE = "vgg19-dcbb9e9d.pth"
"""File name of torchvision's ImageNet VGG19 weights in the torch hub cache."""
KERNEL = 3
POOL = 2


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of the encoder: depth (one of :data:`LAYER_NAMES`) and a width divisor (1 = VGG19)."""

    depth: str = "relu4_1"
    width_divisor: int = 1

    @property
    def blocks(self) -> int:
        """Number of VGG blocks the encoder enters (1-4)."""
        return LAYER_NAMES.index(self.depth) + 1

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of each block the encoder enters."""
        return tuple(w // self.width_divisor for w in VGG19_WIDTHS[: self.blocks])

    def __post_init__(self) -> None:
        if self.depth not in LAYER_NAMES:
            raise ValueError(f"depth must be one of {LAYER_NAMES}, got {self.depth!r}")
        if self.width_divisor < 1 or VGG19_WIDTHS[0] % self.width_divisor:
            raise ValueError(f"width_divisor must divide {VGG19_WIDTHS[0]}, got {self.width_divisor}")


def _vgg_layers(config: EncoderConfig) -> list[nn.Module]:
    """torchvision's ``features`` list truncated after the first ReLU of the last block."""
    layers: list[nn.Module] = []
    in_ch = 3
    for block, width in enumerate(config.widths):
        if block > 0:
            layers.append(nn.MaxPool2d(POOL, POOL, return_indices=True))
        last_block = block == config.blocks - 1
        for _ in range(1 if last_block else VGG19_CONVS_PER_BLOCK[block]):
            layers += [nn.Conv2d(in_ch, width, KERNEL, padding=KERNEL // 2), nn.ReLU(inplace=False)]
            in_ch = width
    return layers


@dataclass
class Encoded:
    """Encoder outputs: the feature of every ``reluN_1`` reached, and pooling indices with input sizes."""

    features: list[torch.Tensor]
    pool_indices: list[torch.Tensor]
    pool_sizes: list[torch.Size]

    @property
    def deepest(self) -> torch.Tensor:
        """The feature the colorization works on."""
        return self.features[-1]


class VGGEncoder(nn.Module):
    """VGG19 (torchvision layer layout) up to ``config.depth``; input RGB in [0, 1], ImageNet-normalized inside."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        self.features = nn.Sequential(*_vgg_layers(self.config))
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):  # He init keeps activations' scale through a frozen random net
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(cast(torch.Tensor, layer.bias))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        layers = list(self.features)
        self._taps = {
            i + 1
            for i, layer in enumerate(layers)
            if isinstance(layer, nn.Conv2d) and (i == 0 or isinstance(layers[i - 1], nn.MaxPool2d))
        }
        """Indices of the ``reluN_1`` layers whose outputs are returned."""

    @property
    def out_channels(self) -> int:
        """Channels of the deepest feature."""
        return self.config.widths[-1]

    @property
    def downsampling(self) -> int:
        """Total stride of the deepest feature (input sides must be multiples of it)."""
        return POOL ** (self.config.blocks - 1)

    def forward(self, image: torch.Tensor) -> Encoded:
        """Encode a ``(N, 3, H, W)`` batch in [0, 1]; H and W multiples of :attr:`downsampling`."""
        x = (image - self.mean) / self.std
        out = Encoded(features=[], pool_indices=[], pool_sizes=[])
        for i, layer in enumerate(self.features):
            if isinstance(layer, nn.MaxPool2d):
                out.pool_sizes.append(x.shape)
                x, indices = layer(x)
                out.pool_indices.append(indices)
            else:
                x = layer(x)
                if i in self._taps:
                    out.features.append(x)
        return out

    def load_torchvision(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the ``features.*`` tensors of a torchvision VGG19 state dict (extra deeper layers ignored)."""
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        if missing:
            raise KeyError(f"state dict lacks {missing[:4]}{'...' if len(missing) > 4 else ''}")
        for key, value in own.items():
            if state_dict[key].shape != value.shape:
                raise ValueError(f"{key}: shape {tuple(state_dict[key].shape)} != encoder's {tuple(value.shape)}")
        self.load_state_dict({k: state_dict[k] for k in own})


def find_torchvision_vgg19(path: str | Path | None = None) -> Path | None:
    """The user's ImageNet VGG19 weights: ``path`` if given, else torchvision's file in the hub cache, else None.

    Never downloads anything.
    """
    if path is not None:
        candidate = Path(path)
        if not candidate.is_file():
            raise FileNotFoundError(candidate)
        return candidate
    cached = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_VGG19_FILE
    return cached if cached.is_file() else None


def load_torchvision_vgg19(encoder: VGGEncoder, path: str | Path) -> None:
    """Load a torchvision-format VGG19 state dict file into ``encoder``."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    encoder.load_torchvision(state)
    logger.info("loaded ImageNet VGG19 encoder weights from %s", path)
