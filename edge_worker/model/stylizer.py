"""The edge DNN of the paper (Fig. 4): VGG encoder → colorization → unpooling decoder → meta-smoothing.

:class:`PhotoStylizer` implements :class:`edge_worker.model.base.Stylizer`. The network runs at a
fixed working size (short side ``config.work_size``); meta-smoothing turns its output into affine
colour coefficients applied to the content at the requested output size, so the output size costs
little and the result keeps the content's edges whatever r is.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import torch
from torch import nn

from edge_worker.model.base import Size, check_image, check_size
from edge_worker.model.decoder import UnpoolDecoder
from edge_worker.model.device import CPU, CUDA, resolve_device
from edge_worker.model.int8 import FP32, INT8
from edge_worker.model.meta_smoothing import (
    GAIN_PRIOR_WEIGHT,
    LiteralMetaSmoothing,
    MetaSmoothing,
    apply_affine,
    colour_stats,
    resample,
)
from edge_worker.model.transform import FeatureStats, LearnedColorization
from edge_worker.model.vgg import EncoderConfig, VGGEncoder, find_torchvision_vgg19, load_torchvision_vgg19

logger = logging.getLogger(__name__)

MODEL_FORMAT = "mvstylizer-photo-stylizer"
MODEL_VERSION = 1
"""Bumped whenever the saved layout changes; :meth:`PhotoStylizer.load` refuses other versions."""
SMOOTHING_KINDS = ("affine", "literal")
DEFAULT_MODEL_PATH = Path(__file__).parent / "weights" / "mvstylizer-small.pt"
"""The bundled default model (trained by ``python -m edge_worker.train``, see README)."""
UINT8_MAX = 255.0
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class StylizerConfig:
    """Architecture of a :class:`PhotoStylizer`; saved with its weights."""

    depth: str = "relu4_1"
    width_divisor: int = 1
    compressed_channels: int = 32
    work_size: int = 256
    smoothing_radius: int = 4
    smoothing_downsample: int = 1
    smoothing_gain_prior: float = 0.0
    smoothing: str = "affine"
    colour_alignment: bool = True
    strength: float = 1.0
    """Stylization strength at inference (:func:`~edge_worker.model.meta_smoothing.toward_identity`); training
    (Eq. 5) always fits the full maps."""

    @property
    def encoder(self) -> EncoderConfig:
        """The encoder's shape."""
        return EncoderConfig(depth=self.depth, width_divisor=self.width_divisor)


CONFIGS: dict[str, StylizerConfig] = {
    "tiny": StylizerConfig(width_divisor=8, compressed_channels=8, work_size=32, smoothing_radius=2),
    "small": StylizerConfig(
        width_divisor=2,
        compressed_channels=32,
        work_size=256,
        smoothing_radius=8,
        smoothing_downsample=4,
        smoothing_gain_prior=GAIN_PRIOR_WEIGHT,
        strength=0.5,  # bench.stylize's choice for the bundled weights: Reinhard's SSIM kept on its tuning pairs
    ),
    "full": StylizerConfig(),
}
"""Named configurations: ``tiny`` for tests, ``small`` for the bundled model, ``full`` = VGG19 (ImageNet-loadable)."""


@dataclass
class StyleState:
    """A prepared style (cache it by style id): statistics of its compressed encoder features and colours."""

    features: FeatureStats
    colours: FeatureStats

    def to(self, device: torch.device | str) -> StyleState:
        """The same state on ``device``."""
        return StyleState(self.features.to(device), self.colours.to(device))

    @staticmethod
    def concat(states: Sequence[StyleState]) -> StyleState:
        """One state for a batch: the samples of ``states`` in order (each its own statistics)."""
        return StyleState(
            FeatureStats(torch.cat([s.features.mean for s in states]), torch.cat([s.features.cov for s in states])),
            FeatureStats(torch.cat([s.colours.mean for s in states]), torch.cat([s.colours.cov for s in states])),
        )

    def select(self, index: torch.Tensor) -> StyleState:
        """The samples at ``index`` (a 1-D index tensor)."""
        return StyleState(
            FeatureStats(self.features.mean[index], self.features.cov[index]),
            FeatureStats(self.colours.mean[index], self.colours.cov[index]),
        )


def _upload(host: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``host`` on ``device``: on CUDA copied from pinned memory without blocking the host (the copy is queued
    on the current stream, so kernels that read it wait for it)."""
    if torch.device(device).type == CUDA:
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def to_tensor(image: np.ndarray, device: torch.device | str = CPU) -> torch.Tensor:
    """RGB uint8 ``H x W x 3`` → float ``(1, 3, H, W)`` in [0, 1] (copied as uint8, converted on the device)."""
    pixels = _upload(torch.from_numpy(np.ascontiguousarray(image)), device)
    return pixels.permute(2, 0, 1).unsqueeze(0).float() / UINT8_MAX


def to_batch(images: Sequence[np.ndarray], device: torch.device | str = CPU) -> torch.Tensor:
    """RGB uint8 images of one size → float ``(N, 3, H, W)`` in [0, 1]; one host→device copy for the batch."""
    return _upload(torch.from_numpy(np.stack(images)), device).permute(0, 3, 1, 2).float() / UINT8_MAX


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """Float ``(1, 3, H, W)`` → RGB uint8, clipped."""
    return tensor[0].clamp(0, 1).mul(UINT8_MAX).round().byte().permute(1, 2, 0).cpu().numpy()


def to_maps(coeffs: torch.Tensor) -> np.ndarray:
    """Coefficients ``(1, 12, h, w)`` → float32 ``h x w x 12``."""
    return coeffs[0].permute(1, 2, 0).float().cpu().numpy()


def download_maps(coeffs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """:func:`to_maps` of each ``(1, 12, h, w)`` tensor with one device→host copy per map shape, not per item."""
    maps: list[np.ndarray] = [np.empty(0)] * len(coeffs)
    for items in group_by([tuple(c.shape) for c in coeffs]).values():
        host = torch.cat([coeffs[i] for i in items]).permute(0, 2, 3, 1).float().cpu().numpy()
        for j, i in enumerate(items):
            maps[i] = host[j]
    return maps


def group_by(keys: Sequence[K]) -> dict[K, list[int]]:
    """Indices of ``keys`` grouped by value, groups in order of first appearance."""
    groups: dict[K, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    return dict(groups)


def resize(image: np.ndarray, size: Size) -> np.ndarray:
    """Resize an image to (width, height): area filter when shrinking, bilinear otherwise."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    shrink = size[0] < image.shape[1] or size[1] < image.shape[0]
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class PhotoStylizer(nn.Module):
    """The whole network; ``stylize(content, prepare_style(style), out_size)`` is all the service needs.

    Served on a device with :meth:`to_device` (or ``load(path, device=...)``). On CUDA the network runs under
    fp16 autocast (:attr:`half_precision`) with channels-last weights and activations (:attr:`channels_last`);
    a prepared style stays on the model's device, so the caller's style cache is a device cache; frames go up
    from pinned memory as uint8. On the CPU nothing changes: fp32, the layout it always had.
    ``*_batch`` methods run the network once for a batch (frames of one network size stacked, each with its own
    style statistics), then fit each item's maps.
    """

    name = "mvstylizer-dnn"
    half_precision: bool
    """Run the network under fp16 autocast on CUDA (the served path); no effect on the CPU."""
    precision: str
    """``fp32`` (the reference) or ``int8`` (:meth:`quantized`: convolutions in int8, CPU inference only)."""
    channels_last: bool
    """Weights and network inputs in channels-last memory format (set by :meth:`to_device`; on for CUDA)."""

    def __init__(self, config: StylizerConfig | None = None) -> None:
        super().__init__()
        self.config = config or StylizerConfig()
        if self.config.smoothing not in SMOOTHING_KINDS:
            raise ValueError(f"smoothing must be one of {SMOOTHING_KINDS}, got {self.config.smoothing!r}")
        if self.config.colour_alignment and self.config.smoothing != "affine":
            raise ValueError("colour alignment needs the affine meta-smoothing")
        strength = self.config.strength
        if not 0.0 <= strength <= 1.0 or (strength != 1.0 and self.config.smoothing != "affine"):
            raise ValueError(f"strength must be in [0, 1], and 1 with the literal smoothing; got {strength}")
        self.half_precision = True
        self.channels_last = False
        self.precision = FP32
        self.encoder = VGGEncoder(self.config.encoder)
        self.encoder.requires_grad_(False)
        self.colorization = LearnedColorization(self.encoder.out_channels, self.config.compressed_channels)
        self.decoder = UnpoolDecoder(self.config.encoder)
        self.smoothing: MetaSmoothing | LiteralMetaSmoothing = (
            MetaSmoothing(
                self.config.smoothing_radius, self.config.smoothing_downsample, self.config.smoothing_gain_prior
            )
            if self.config.smoothing == "affine"
            else LiteralMetaSmoothing()
        )

    @classmethod
    def from_config(cls, config: StylizerConfig | str, vgg_weights: str | Path | None = None) -> PhotoStylizer:
        """A fresh model; the encoder takes ImageNet VGG19 weights from ``vgg_weights`` or the torch hub cache
        when given/present and the shape fits (``full``), else keeps its seeded initialization."""
        model = cls(CONFIGS[config] if isinstance(config, str) else config)
        if vgg_weights is not None and model.config.width_divisor != 1:
            raise ValueError("ImageNet VGG19 weights need the full-width encoder (width_divisor=1)")
        path = find_torchvision_vgg19(vgg_weights) if model.config.width_divisor == 1 else None
        if path is not None:
            load_torchvision_vgg19(model.encoder, path)
        return model

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.encoder.mean.device

    def learned_parameters(self) -> list[nn.Parameter]:
        """Parameters Eq. 5 trains: everything but the frozen encoder."""
        return [p for m in (self.colorization, self.decoder, self.smoothing) for p in m.parameters()]

    def network_size(self, width: int, height: int) -> Size:
        """(width, height) the network runs at for an image of this size: short side ≈ ``work_size``."""
        step = self.encoder.downsampling
        scale = self.config.work_size / min(width, height)
        return (max(step, round(width * scale / step) * step), max(step, round(height * scale / step) * step))

    def style_state(self, style_low: torch.Tensor) -> StyleState:
        """Compressed feature and colour statistics of a ``(N, 3, h, w)`` style batch at network size."""
        return StyleState(self.colorization.style_stats(self.encoder(style_low).deepest), colour_stats(style_low))

    def decode(self, content_low: torch.Tensor, style: StyleState) -> torch.Tensor:
        """The decoder's stylized image of a batch at network size (what meta-smoothing fits to); fp16 on CUDA
        unless :attr:`half_precision` is off."""
        with torch.autocast(CUDA, dtype=torch.float16, enabled=content_low.is_cuda and self.half_precision):
            encoded = self.encoder(content_low)
            return self.decoder(self.colorization(encoded.deepest, style.features), encoded)

    def forward(
        self, content_low: torch.Tensor, style: StyleState, content_full: torch.Tensor, strength: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stylize a batch: (output at ``content_full``'s size, coefficients, the decoder's low-res image).

        ``strength`` defaults to the full maps, which training fits; inference passes ``config.strength``."""
        decoded = self.decode(content_low, style)
        colours = style.colours if self.config.colour_alignment else None
        output, coeffs = self.smoothing(content_low, decoded.float(), content_full, colours, strength)
        return output, coeffs, decoded

    @torch.inference_mode()
    def prepare_style(self, style: np.ndarray) -> StyleState:
        """Encode a style image at the working size and keep its statistics (on the model's device)."""
        check_image(style, "style")
        return self.style_state(self._network_input([style]))

    @torch.inference_mode()
    def stylize_with_coefficients(
        self, content: np.ndarray, style: StyleState, out_size: Size
    ) -> tuple[np.ndarray, np.ndarray]:
        """The stylized frame and its ``h x w x 12`` affine coefficients (A row-major, b) at network size.

        With the literal smoothing there are no coefficients: the second array is empty.
        """
        check_image(content, "content")
        check_size(out_size)
        if isinstance(self.smoothing, MetaSmoothing):
            coeffs = self._maps([content], [style], [out_size])[0]
            return self._render(coeffs, content, out_size), to_maps(coeffs)
        full = to_tensor(resize(content, out_size), self.device)
        output, _, _ = self.forward(self._network_input([content]), style.to(self.device), full, self.config.strength)
        return to_image(output), np.empty(0)

    @torch.inference_mode()
    def coefficients(self, content: np.ndarray, style: StyleState, out_size: Size) -> np.ndarray:
        """The coefficients of :meth:`stylize_with_coefficients` without rendering the frame: nothing runs at
        ``out_size``, which only sets the upscale factor r of the meta kernel. Empty with the literal smoothing."""
        return self.coefficients_batch([content], [style], [out_size])[0]

    @torch.inference_mode()
    def coefficients_batch(
        self, contents: Sequence[np.ndarray], styles: Sequence[StyleState], out_sizes: Sequence[Size]
    ) -> list[np.ndarray]:
        """:meth:`coefficients` of every (content, style, out_size), the network run once per network size.

        Frames whose network sizes agree (all frames of one camera) go through encoder, colorization and decoder
        as one batch, each with its own style's statistics; the maps are then fitted per output width (r), again
        batched. Equal to the item-by-item results up to float reassociation (``tests/test_model_batch.py``).
        """
        self._check_batch(contents, styles, out_sizes)
        if not isinstance(self.smoothing, MetaSmoothing):
            return [np.empty(0) for _ in contents]
        return download_maps(self._maps(contents, styles, out_sizes))

    @torch.inference_mode()
    def stylize_batch(
        self, contents: Sequence[np.ndarray], styles: Sequence[StyleState], out_sizes: Sequence[Size]
    ) -> list[np.ndarray]:
        """:meth:`stylize` of every (content, style, out_size), the network batched as in :meth:`coefficients_batch`;
        each frame is rendered at its own output size."""
        self._check_batch(contents, styles, out_sizes)
        if not isinstance(self.smoothing, MetaSmoothing):
            return [self.stylize(c, s, o) for c, s, o in zip(contents, styles, out_sizes, strict=True)]
        maps = self._maps(contents, styles, out_sizes)
        return [self._render(m, c, o) for m, c, o in zip(maps, contents, out_sizes, strict=True)]

    @staticmethod
    def _check_batch(contents: Sequence[np.ndarray], styles: Sequence[Any], out_sizes: Sequence[Size]) -> None:
        if not len(contents) == len(styles) == len(out_sizes):
            raise ValueError(
                f"batch lengths differ: {len(contents)} contents, {len(styles)} styles, {len(out_sizes)} sizes"
            )
        for content, out_size in zip(contents, out_sizes, strict=True):
            check_image(content, "content")
            check_size(out_size)

    def _maps(
        self, contents: Sequence[np.ndarray], styles: Sequence[StyleState], out_sizes: Sequence[Size]
    ) -> list[torch.Tensor]:
        """Each item's ``(1, 12, h, w)`` coefficients on the device (affine smoothing only)."""
        assert isinstance(self.smoothing, MetaSmoothing)
        maps: list[torch.Tensor] = [torch.empty(0)] * len(contents)
        sizes = [self.network_size(c.shape[1], c.shape[0]) for c in contents]
        for items in group_by(sizes).values():
            low = self._network_input([contents[i] for i in items])
            style = StyleState.concat([styles[i].to(self.device) for i in items])
            decoded = self.decode(low, style).float()
            for rows in group_by([out_sizes[i][0] for i in items]).values():  # one r per smoothing call
                sub_low, sub_decoded, sub_style = low, decoded, style
                if len(rows) < len(items):
                    index = torch.tensor(rows, device=self.device)
                    sub_low, sub_decoded, sub_style = low[index], decoded[index], style.select(index)
                colours = sub_style.colours if self.config.colour_alignment else None
                width = out_sizes[items[rows[0]]][0]
                fitted = self.smoothing.maps(sub_low, sub_decoded, width, colours, self.config.strength)
                for j, row in enumerate(rows):
                    maps[items[row]] = fitted[j : j + 1]
        return maps

    def _render(self, coeffs: torch.Tensor, content: np.ndarray, out_size: Size) -> np.ndarray:
        """The frame ``coeffs`` give: resampled to ``out_size`` and applied to the resized content."""
        full = to_tensor(resize(content, out_size), self.device)
        return to_image(apply_affine(resample(coeffs, (out_size[1], out_size[0])), full))

    def _network_input(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """``images`` (one network size) resized to network size, as an ``(N, 3, h, w)`` tensor on the device."""
        size = self.network_size(images[0].shape[1], images[0].shape[0])
        batch = to_batch([resize(image, size) for image in images], self.device)
        # NCHW unless channels-last was asked for: the layout single frames always had on the CPU (bit-for-bit)
        return batch.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def stylize(self, content: np.ndarray, style: Any, out_size: Size) -> np.ndarray:
        """Stylize ``content`` with a prepared style; RGB uint8 of ``out_size`` (width, height)."""
        return self.stylize_with_coefficients(content, style, out_size)[0]

    def save(self, path: str | Path) -> None:
        """Write weights, config and format version to ``path`` (atomically)."""
        self._require_fp32("save")
        payload = {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "config": asdict(self.config),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(payload, partial)
        partial.replace(path)  # readers never see a half-written model

    def to_device(
        self, device: str | torch.device, *, half_precision: bool = True, channels_last: bool | None = None
    ) -> PhotoStylizer:
        """Serve on ``device`` (a :func:`~edge_worker.model.device.resolve_device` spec or a device), in eval mode.

        ``half_precision``: fp16 autocast on CUDA. ``channels_last``: channels-last weights and inputs; by default
        on CUDA only (cuDNN's fast convolutions are NHWC; on the CPU eager torch gains little and results would
        change)."""
        target = resolve_device(device) if isinstance(device, str) else torch.device(device)
        if target.type != CPU:
            self._require_fp32(f"move to {target}")
        self.half_precision = half_precision
        self.channels_last = target.type == CUDA if channels_last is None else channels_last
        self.to(target)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        self.to(memory_format=layout)  # type: ignore[call-overload]  # documented keyword, missing from the stubs
        return self.eval()

    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODEL_PATH, device: str | torch.device = CPU) -> PhotoStylizer:
        """Read a model written by :meth:`save`, served on ``device`` (:meth:`to_device`)."""
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        if payload.get("format") != MODEL_FORMAT or payload.get("version") != MODEL_VERSION:
            raise ValueError(f"{path}: not a {MODEL_FORMAT} v{MODEL_VERSION} file")
        model = cls(StylizerConfig(**payload["config"]))
        model.load_state_dict(payload["state_dict"])
        logger.info("loaded %s (%s)", path, payload["config"])
        return model.to_device(device)

    @torch.inference_mode()
    def quantized(self, calibration: Iterable[tuple[np.ndarray, np.ndarray]]) -> PhotoStylizer:
        """A CPU copy whose encoder and decoder convolutions run in int8 (:mod:`edge_worker.model.int8`),
        activation ranges calibrated at this model's work size on ``calibration`` (content, style) pairs (e.g.
        :func:`edge_worker.training.calibration_pairs`: training photos only). Inference only: the copy cannot
        be trained or saved; this model is left as it was."""
        from edge_worker.model import int8

        self._require_fp32("quantize")
        model = copy.deepcopy(self).to_device(CPU)
        model.encoder, model.decoder = int8.observed(model.encoder, model.decoder)
        for content, style in calibration:
            model.decode(model._network_input([content]), model.prepare_style(style))
        int8.converted(model.encoder, model.decoder)
        model.precision = INT8
        return model

    def _require_fp32(self, action: str) -> None:
        if self.precision != FP32:
            raise ValueError(f"cannot {action} an {self.precision} model: quantize the fp32 one instead")

    def with_config(self, **changes: Any) -> PhotoStylizer:
        """A copy with config fields changed that leave the weights' shapes alone (e.g. ``work_size``)."""
        self._require_fp32("change the config of")
        model = type(self)(StylizerConfig(**{**asdict(self.config), **changes}))
        model.load_state_dict(self.state_dict())
        return model.to_device(self.device, half_precision=self.half_precision, channels_last=self.channels_last)
