"""Decoder: the encoder's VGG layers mirrored, with max-unpooling at the pooling indices (PhotoWCT).

Unpooling puts activations back where the encoder's maxima were (Li et al., "A Closed-form
Solution to Photorealistic Image Stylization", ECCV 2018), which keeps edges in place where
upsampling would smear them.
"""

from __future__ import annotations

import torch
from torch import nn

from edge_worker.model.vgg import KERNEL, POOL, VGG19_CONVS_PER_BLOCK, Encoded, EncoderConfig

RGB = 3


class UnpoolDecoder(nn.Module):
    """Mirror of :class:`~edge_worker.model.vgg.VGGEncoder` for the same ``EncoderConfig``."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        self.blocks = nn.ModuleList()
        for block in reversed(range(config.blocks)):
            n_convs = 1 if block == config.blocks - 1 else VGG19_CONVS_PER_BLOCK[block]
            layers: list[nn.Module] = []
            for j in range(n_convs):
                last = j == n_convs - 1
                out_ch = (widths[block - 1] if block > 0 else RGB) if last else widths[block]
                layers.append(nn.Conv2d(widths[block], out_ch, KERNEL, padding=KERNEL // 2, padding_mode="reflect"))
                if not (last and block == 0):
                    layers.append(nn.ReLU(inplace=True))
            self.blocks.append(nn.Sequential(*layers))
        self.unpool = nn.MaxUnpool2d(POOL, POOL)

    def forward(self, features: torch.Tensor, encoded: Encoded) -> torch.Tensor:
        """Decode deepest-level ``features`` with the pooling indices of the content's ``encoded``."""
        x = features
        unpools = list(zip(reversed(encoded.pool_indices), reversed(encoded.pool_sizes), strict=True))
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(unpools):
                indices, size = unpools[i]
                x = self.unpool(x, indices, output_size=size[-2:])
        return x
