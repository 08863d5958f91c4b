"""An int8 CPU path for the network's convolutions: post-training static quantization with torch itself.

Eager-mode quantization (``torch.ao.quantization``) of the encoder's and the decoder's 3x3 convolutions, each
fused with its ReLU, weights per output channel, activations per tensor with scales calibrated on a handful of
photos. Everything between the convolution stages stays float: the encoder's max-pooling (whose indices the
decoder needs), the decoder's max-unpooling at those indices, the colorization (float64 statistics) and the
meta-smoothing. Each run of convolutions between two poolings is one int8 stage: quantized on entry,
dequantized on exit.

Inference only, on the CPU (quantized kernels are CPU kernels): an int8 model cannot be trained, saved or moved
to CUDA. ``PhotoStylizer.quantized`` is the way in; fp32 eager stays the reference and the default.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import cast

import torch
import torch.ao.quantization as tq
from torch import nn
from torch.ao.nn.intrinsic import ConvReLU2d

from edge_worker.model.decoder import UnpoolDecoder
from edge_worker.model.vgg import Encoded, VGGEncoder

FP32 = "fp32"
"""The reference precision: float32 eager (on CUDA the network may still run under fp16 autocast)."""
INT8 = "int8"
"""The convolutions in int8 on the CPU."""
PRECISIONS = (FP32, INT8)
QUANTIZED_ENGINE = "x86"
"""torch's x86 quantized engine (fbgemm for these convolutions, oneDNN where it is faster)."""

Stage = nn.Sequential
"""QuantStub → fused convolutions → DeQuantStub."""


def _fused(layers: Sequence[nn.Module]) -> list[nn.Module]:
    """``layers`` (Conv2d, each maybe followed by a ReLU) with every Conv2d+ReLU pair as one ``ConvReLU2d``."""
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = copy.deepcopy(layers[i])
        if not isinstance(layer, nn.Conv2d):
            raise TypeError(f"an int8 stage holds convolutions and ReLUs, got {type(layer).__name__}")
        if i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU):
            out.append(ConvReLU2d(layer, nn.ReLU()))
            i += 2
        else:
            out.append(layer)
            i += 1
    return out


def _stage(layers: Sequence[nn.Module]) -> Stage:
    return nn.Sequential(tq.QuantStub(), *_fused(layers), tq.DeQuantStub())


class Int8Encoder(VGGEncoder):
    """:class:`VGGEncoder` with int8 convolution stages between float max-poolings.

    Returns only the deepest feature in :attr:`Encoded.features` (all that colorization and decoding read); the
    shallower taps are training-loss inputs, and an int8 encoder is never trained."""

    def __init__(self, encoder: VGGEncoder) -> None:
        super().__init__(encoder.config)
        del self.features  # the float layers live on in the stages
        self.stages = nn.ModuleList()
        self.pools = nn.ModuleList()
        run: list[nn.Module] = []
        for layer in encoder.features:
            if isinstance(layer, nn.MaxPool2d):
                self.stages.append(_stage(run))
                self.pools.append(copy.deepcopy(layer))
                run = []
            else:
                run.append(layer)
        self.stages.append(_stage(run))

    def forward(self, image: torch.Tensor) -> Encoded:
        """Encode a ``(N, 3, H, W)`` batch in [0, 1] (float in, float out)."""
        x = (image - self.mean) / self.std
        out = Encoded(features=[], pool_indices=[], pool_sizes=[])
        for stage, pool in zip(self.stages, [*self.pools, None], strict=True):
            x = stage(x)
            if pool is not None:
                out.pool_sizes.append(x.shape)
                x, indices = pool(x)
                out.pool_indices.append(indices)
        out.features.append(x)
        return out


class Int8Decoder(UnpoolDecoder):
    """:class:`UnpoolDecoder` whose blocks are int8 stages; the max-unpooling between them stays float."""

    def __init__(self, decoder: UnpoolDecoder) -> None:
        super().__init__(decoder.config)
        self.blocks = nn.ModuleList(_stage(list(cast(nn.Sequential, block))) for block in decoder.blocks)


QCONFIG = tq.QConfig(
    activation=tq.MinMaxObserver.with_args(reduce_range=True),
    weight=tq.default_per_channel_weight_observer,
)
"""Activations: per tensor over their whole calibrated range. Not torch's x86 default (a histogram observer that
clips the tails): the colorization matches second-order statistics of the deepest features, which the tails
carry; with clipping the worst held-out pair moved by SSIM 0.0061 / W2 0.102, with min-max by 0.0045 / 0.085
(``python -m bench.int8``). 7-bit ranges (``reduce_range``) so that AVX2 kernels without VNNI cannot saturate
their 16-bit sums. Weights: int8 per output channel."""


def _prepare(module: nn.Module) -> None:
    setattr(module, "qconfig", QCONFIG)  # noqa: B010  # eager quantization reads this attribute; nn.Module types it
    with warnings.catch_warnings():  # torch.ao's eager quantization warns that torchao is its successor
        warnings.simplefilter("ignore")
        tq.prepare(module, inplace=True)


def _convert(module: nn.Module) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.convert(module, inplace=True)


def use_quantized_engine() -> None:
    """Select :data:`QUANTIZED_ENGINE` for torch's quantized kernels (process-wide; fp32 kernels are unaffected)."""
    if QUANTIZED_ENGINE not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"this torch build has no {QUANTIZED_ENGINE} quantized engine")
    torch.backends.quantized.engine = QUANTIZED_ENGINE


def observed(encoder: VGGEncoder, decoder: UnpoolDecoder) -> tuple[Int8Encoder, Int8Decoder]:
    """Float copies of ``encoder`` and ``decoder`` split into stages with observers: run the network on
    calibration frames through them, then :func:`converted`."""
    use_quantized_engine()
    int8_encoder, int8_decoder = Int8Encoder(encoder), Int8Decoder(decoder)
    for module in (int8_encoder, int8_decoder):
        module.eval()
        _prepare(module)
    return int8_encoder, int8_decoder


def converted(*modules: nn.Module) -> None:
    """Turn calibrated (observed) modules into int8 ones, in place."""
    for module in modules:
        _convert(module)
