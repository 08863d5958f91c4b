"""The lite stylizer: a frozen ImageNet EfficientNet-Lite0 → a small learned head that predicts local affine colour
maps → the meta-smoothing kernels. No decoder.

The head reads the content's encoder features at strides 8, 16 and 32 (what the scene is), is conditioned on
statistics of the style's and the content's features and colours (which look the style has, FiLM: Perez et al.
2018), and predicts on the stride-8 grid how much of the global Monge-Kantorovich colour map of the content onto
the style (Pitié & Kokaram 2007) each cell takes (a gate) and a local affine correction ``(I + dA, db)`` after it.
The composed maps are filtered by the meta-smoothing kernels ``W_u^r``, ``W_s`` of Eq. 3-4 (:class:`MetaKernels`):
the result is the ``h x w x 12`` coefficient format every phone renders (:mod:`streaming.coefficients`).

``strength`` blends the maps with the global map's: 0 is the closed-form colour transfer, 1 the head's full maps.
The head's last layer starts at zero correction and a 95 % gate, so an untrained model is nearly the closed-form
map. Only the head and the kernels are
learned, saved and exchanged in federated learning; the encoder's weights come from the installed package.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_worker.model.base import Size, check_image, check_size
from edge_worker.model.device import CPU, CUDA, resolve_device
from edge_worker.model.efficientnet_lite import EfficientNetLite0, fold_batchnorm, load_imagenet
from edge_worker.model.int8 import FP32
from edge_worker.model.meta_smoothing import (
    AFFINE_COEFFS,
    MetaKernels,
    align_colours,
    apply_affine,
    colour_stats,
    resample,
)
from edge_worker.model.stylizer import download_maps, group_by, resize, to_batch, to_image, to_tensor
from edge_worker.model.transform import FeatureStats, monge_kantorovich
from streaming.tensors import NamedArrays

logger = logging.getLogger(__name__)

MODEL_FORMAT = "mvstylizer-lite-stylizer"
MODEL_VERSION = 1
DEFAULT_LITE_PATH = Path(__file__).parent / "weights" / "lite-head.pt"
"""The bundled head (trained by ``mvs train --model lite``, see the weights README)."""
LITE_LOOK_PATH = Path(__file__).parent / "weights" / "lite-look-head.pt"
"""The head trained on colour looks alone, served without colour alignment (``--model lite-look``)."""
GRID_STRIDE = 8
"""The maps' grid: one cell per 8x8 network pixels (the shallowest tap's resolution)."""
GATE_INIT = 3.0
"""Initial gate logit: an untrained head takes σ(3) = 95 % of the global map everywhere."""
STD_FLOOR = 1e-3
COLOUR_DESCRIPTOR = 9
"""Colour statistics the head sees: mean, log standard deviation and correlations of R, G, B."""


@dataclass(frozen=True)
class LiteConfig:
    """Shape and inference settings of a :class:`LiteStylizer`; saved with its weights."""

    work_size: int = 160
    taps: tuple[int, ...] = (4, 10, 15)
    """Encoder blocks read: the ends of the stride-8 (40 ch), stride-16 (112 ch) and stride-32 (320 ch) stages."""
    reduced: int = 32
    """Channels each tap is reduced to (1x1 convolution)."""
    hidden: int = 48
    code: int = 128
    """Width of the style code's MLP."""
    strength: float = 1.0
    colour_alignment: bool = True
    """Compose the maps with the global map that gives the output the style's colour mean and covariance
    (:func:`~edge_worker.model.meta_smoothing.align_colours`, as the DNN's meta-smoothing does)."""


LITE_CONFIGS: dict[str, LiteConfig] = {
    "tiny": LiteConfig(work_size=64, reduced=8, hidden=8, code=16),
    "lite": LiteConfig(),
}


@dataclass
class LiteStyle:
    """A prepared style: its feature statistics (what the head reads) and colour statistics (the global map)."""

    stats: torch.Tensor
    colours: FeatureStats

    def to(self, device: torch.device | str) -> LiteStyle:
        """The same style on ``device``."""
        return LiteStyle(self.stats.to(device), self.colours.to(device))

    @staticmethod
    def concat(styles: Sequence[LiteStyle]) -> LiteStyle:
        """One style per sample of a batch."""
        return LiteStyle(
            torch.cat([s.stats for s in styles]),
            FeatureStats(torch.cat([s.colours.mean for s in styles]), torch.cat([s.colours.cov for s in styles])),
        )


def feature_descriptor(features: Sequence[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    """``(N, D)``: channel means and log standard deviations of every tap, then the colour descriptor."""
    parts = []
    for f in features:
        mean, centred = _centred(f)
        parts += [mean, (_std(centred) + STD_FLOOR).log()]
    mean, centred = _centred(image)
    std = _std(centred) + STD_FLOOR
    i, j = [0, 0, 1], [1, 2, 2]
    products = centred @ centred.transpose(1, 2)  # (N, 3, 3) sums of centred colour products
    corr = products[:, i, j] / centred.shape[-1] / (std[:, i] * std[:, j])
    return torch.cat([*parts, mean, std.log(), corr], 1)


def _centred(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel means ``(N, C)`` of ``(N, C, h, w)`` and the channels minus them, flattened ``(N, C, hw)``."""
    flat = x.float().flatten(2)
    mean = flat.mean(-1)
    return mean, flat - mean.unsqueeze(-1)


def _std(centred: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation from centred values: two passes, ~5x faster than ``Tensor.std`` on a CPU."""
    return (centred.square().sum(-1) / (centred.shape[-1] - 1)).sqrt()


class LookHead(nn.Module):
    """Content features + style code → ``(N, 13, h, w)`` on the stride-8 grid: an affine correction and a gate
    (:func:`compose`)."""

    def __init__(self, tap_channels: Sequence[int], config: LiteConfig) -> None:
        super().__init__()
        self.reduce = nn.ModuleList(nn.Conv2d(c, config.reduced, 1) for c in tap_channels)
        descriptor = 2 * (2 * sum(tap_channels) + COLOUR_DESCRIPTOR)
        film = nn.Linear(config.code, 4 * config.hidden)
        nn.init.zeros_(film.weight)  # FiLM starts as the identity
        nn.init.zeros_(film.bias)
        self.code = nn.Sequential(nn.Linear(descriptor, config.code), nn.ReLU(), film)
        inputs = config.reduced * len(tap_channels) + 6
        self.conv1 = nn.Conv2d(inputs, config.hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(config.hidden, config.hidden, 3, padding=1)
        self.out = nn.Conv2d(config.hidden, AFFINE_COEFFS + 1, 1)
        bias = cast(torch.Tensor, self.out.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(bias)
        nn.init.constant_(bias[AFFINE_COEFFS:], GATE_INIT)

    def forward(
        self, features: Sequence[torch.Tensor], colours: torch.Tensor, descriptor: torch.Tensor
    ) -> torch.Tensor:
        """``features``: the taps; ``colours``: ``(N, 6, h, w)`` content and globally mapped colours on the grid;
        ``descriptor``: ``(N, D)`` style and content statistics."""
        grid = colours.shape[-2:]
        x = torch.cat(
            [
                F.interpolate(r(f), size=grid, mode="bilinear", align_corners=False) if f.shape[-2:] != grid else r(f)
                for r, f in zip(self.reduce, features, strict=True)
            ]
            + [colours],
            1,
        )
        film = self.code(descriptor).view(descriptor.shape[0], 4, -1, 1, 1)
        x = F.relu(self.conv1(x) * (1 + film[:, 0]) + film[:, 1])
        x = F.relu(self.conv2(x) * (1 + film[:, 2]) + film[:, 3])
        return self.out(x)


def compose(out: torch.Tensor, a_g: torch.Tensor, b_g: torch.Tensor, strength: float) -> torch.Tensor:
    """The head's output ``(N, 13, h, w)`` (``dA``, ``db``, gate logit) as ``(N, 12, h, w)`` coefficients (A
    row-major, then b) of the local maps ``x ↦ (I + dA)(x + g (A_g x + b_g - x)) + db``, ``g = σ(logit)``: the
    gate says how much of the global map a cell takes, ``dA``, ``db`` correct it. ``strength`` s blends the
    coefficients with the global map's: 0 is the closed-form colour transfer, 1 the head's maps."""
    dtype = out.dtype
    eye = torch.eye(3, dtype=dtype, device=out.device)
    gate = torch.sigmoid(out[:, 12:13]).unsqueeze(2)  # (N, 1, 1, h, w)
    a_g, b_g = a_g.to(dtype), b_g.to(dtype)
    blend = eye.view(1, 3, 3, 1, 1) + gate * (a_g - eye).unsqueeze(-1).unsqueeze(-1)
    m = eye.view(1, 3, 3, 1, 1) + out[:, :9].unflatten(1, (3, 3))
    a = torch.einsum("nijhw,njkhw->nikhw", m, blend).flatten(1, 2)
    b = torch.einsum("nijhw,njhw->nihw", m, gate[:, :, 0] * b_g.view(-1, 3, 1, 1)) + out[:, 9:12]
    learned = torch.cat([a, b], 1)
    if strength == 1.0:
        return learned
    global_map = torch.cat([a_g.flatten(1), b_g], 1).view(-1, AFFINE_COEFFS, 1, 1)
    return torch.lerp(global_map.expand_as(learned), learned, strength)


class LiteStylizer(nn.Module):
    """The lite stylizer; implements :class:`~edge_worker.model.base.CoefficientStylizer` and ``BatchStylizer``, and
    the learned-state half of :class:`~edge_worker.model.base.Trainable` (only the head and the smoothing kernels
    learn); :class:`edge_worker.lite_training.RetrainableLite` adds the training step."""

    name = "mvstylizer-lite"
    precision = FP32
    half_precision: bool

    def __init__(self, config: LiteConfig | None = None, encoder: EfficientNetLite0 | None = None) -> None:
        super().__init__()
        self.config = config or LiteConfig()
        if not 0.0 <= self.config.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.config.strength}")
        self.encoder = encoder if encoder is not None else fold_batchnorm(load_imagenet(EfficientNetLite0()))
        self.encoder.requires_grad_(False)
        self.encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # depthwise: ~25 % faster
        self.head = LookHead(self.encoder.tap_channels(self.config.taps), self.config)
        self.smoothing = MetaKernels()
        self.half_precision = True

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.head.out.weight.device

    # -- the network -------------------------------------------------------------------------------------------

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's taps of a ``(N, 3, h, w)`` batch in [0, 1] (never trained: no graph)."""
        self.encoder.eval()
        with torch.no_grad(), torch.autocast(CUDA, dtype=torch.float16, enabled=image.is_cuda and self.half_precision):
            x = image.contiguous(memory_format=torch.channels_last)
            return [f.float().contiguous() for f in self.encoder.features(x, self.config.taps)]

    def style_state(self, style_low: torch.Tensor) -> LiteStyle:
        """Statistics of a ``(N, 3, h, w)`` style batch at network size."""
        return LiteStyle(feature_descriptor(self.encode(style_low), style_low), colour_stats(style_low))

    def network_size(self, width: int, height: int) -> Size:
        """(width, height) the encoder runs at: short side ≈ ``work_size``, sides multiples of 32."""
        step = 32
        scale = self.config.work_size / min(width, height)
        return (max(step, round(width * scale / step) * step), max(step, round(height * scale / step) * step))

    def maps(self, content_low: torch.Tensor, style: LiteStyle, r: float, strength: float) -> torch.Tensor:
        """``(N, 12, h/8, w/8)`` smoothed local affine maps for content at network size; ``r`` is the output's
        upscale factor over the network size (it shapes ``W_u^r``). With ``colour_alignment`` they are composed with
        the global map that gives their output the style's colour mean and covariance, as the DNN's are."""
        features = self.encode(content_low)
        content_colours = colour_stats(content_low)
        a_g = monge_kantorovich(content_colours, style.colours)
        b_g = style.colours.mean - (a_g @ content_colours.mean.unsqueeze(-1)).squeeze(-1)
        grid = (features[0].shape[-2], features[0].shape[-1])
        pooled = F.adaptive_avg_pool2d(content_low, grid)
        mapped = torch.einsum("nij,njhw->nihw", a_g.float(), pooled) + b_g.float().view(-1, 3, 1, 1)
        descriptor = torch.cat([style.stats, feature_descriptor(features, content_low)], 1)
        delta = self.head(features, torch.cat([pooled, mapped], 1), descriptor.float())
        coeffs = self.smoothing.smooth(compose(delta, a_g.float(), b_g.float(), strength), r)
        return align_colours(coeffs, content_low, style.colours) if self.config.colour_alignment else coeffs

    def forward(
        self, content_low: torch.Tensor, style: LiteStyle, content_full: torch.Tensor, strength: float = 1.0
    ) -> torch.Tensor:
        """The stylized batch at ``content_full``'s size (what training compares with its target)."""
        coeffs = self.maps(content_low, style, content_full.shape[-1] / content_low.shape[-1], strength)
        return apply_affine(resample(coeffs, tuple(content_full.shape[-2:])), content_full)

    # -- the Stylizer interface ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def prepare_style(self, style: np.ndarray) -> LiteStyle:
        """Encode a style image at the working size and keep its statistics (on the model's device)."""
        check_image(style, "style")
        return self.style_state(self._network_input([style]))

    def stylize(self, content: np.ndarray, style: Any, out_size: Size) -> np.ndarray:
        """Stylize ``content``; RGB uint8 of ``out_size``."""
        return self.stylize_batch([content], [style], [out_size])[0]

    @torch.inference_mode()
    def stylize_with_coefficients(
        self, content: np.ndarray, style: Any, out_size: Size
    ) -> tuple[np.ndarray, np.ndarray]:
        """The stylized frame and its ``h x w x 12`` maps."""
        self._check_batch([content], [style], [out_size])
        coeffs = self._maps([content], [style], [out_size])[0]
        return self._render(coeffs, content, out_size), download_maps([coeffs])[0]

    def coefficients(self, content: np.ndarray, style: Any, out_size: Size) -> np.ndarray:
        """The maps alone: nothing runs at ``out_size``."""
        return self.coefficients_batch([content], [style], [out_size])[0]

    @torch.inference_mode()
    def coefficients_batch(
        self, contents: Sequence[np.ndarray], styles: Sequence[Any], out_sizes: Sequence[Size]
    ) -> list[np.ndarray]:
        """:meth:`coefficients` of every item; the network runs once per network size."""
        self._check_batch(contents, styles, out_sizes)
        return download_maps(self._maps(contents, styles, out_sizes))

    @torch.inference_mode()
    def stylize_batch(
        self, contents: Sequence[np.ndarray], styles: Sequence[Any], out_sizes: Sequence[Size]
    ) -> list[np.ndarray]:
        """:meth:`stylize` of every item, the network batched."""
        self._check_batch(contents, styles, out_sizes)
        maps = self._maps(contents, styles, out_sizes)
        return [self._render(m, c, o) for m, c, o in zip(maps, contents, out_sizes, strict=True)]

    @staticmethod
    def _check_batch(contents: Sequence[np.ndarray], styles: Sequence[Any], out_sizes: Sequence[Size]) -> None:
        if not len(contents) == len(styles) == len(out_sizes):
            raise ValueError(f"batch lengths differ: {len(contents)}, {len(styles)}, {len(out_sizes)}")
        for content, style, out_size in zip(contents, styles, out_sizes, strict=True):
            check_image(content, "content")
            check_size(out_size)
            if not isinstance(style, LiteStyle):
                raise ValueError(f"style must be prepared by this model's prepare_style, got {type(style).__name__}")

    def _maps(
        self, contents: Sequence[np.ndarray], styles: Sequence[LiteStyle], out_sizes: Sequence[Size]
    ) -> list[torch.Tensor]:
        out: list[torch.Tensor] = [torch.empty(0)] * len(contents)
        sizes = [self.network_size(c.shape[1], c.shape[0]) for c in contents]
        for items in group_by([(sizes[i], out_sizes[i][0]) for i in range(len(contents))]).values():
            low = self._network_input([contents[i] for i in items])
            style = LiteStyle.concat([styles[i].to(self.device) for i in items])
            maps = self.maps(low, style, out_sizes[items[0]][0] / low.shape[-1], self.config.strength)
            for j, i in enumerate(items):
                out[i] = maps[j : j + 1]
        return out

    def _render(self, coeffs: torch.Tensor, content: np.ndarray, out_size: Size) -> np.ndarray:
        full = to_tensor(resize(content, out_size), self.device)
        return to_image(apply_affine(resample(coeffs, (out_size[1], out_size[0])), full))

    def _network_input(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        size = self.network_size(images[0].shape[1], images[0].shape[0])
        return to_batch([resize(image, size) for image in images], self.device)

    # -- learned state, files, devices ----------------------------------------------------------------------------

    def learned_modules(self) -> dict[str, nn.Module]:
        """What training changes, by name: all that is saved and exchanged."""
        return {"head": self.head, "smoothing": self.smoothing}

    def learned_parameters(self) -> list[nn.Parameter]:
        """Parameters training updates."""
        return [p for m in self.learned_modules().values() for p in m.parameters()]

    def learned_state(self) -> NamedArrays:
        """The learned parameters as float32 arrays, by name."""
        return {
            f"{prefix}.{name}": p.detach().cpu().numpy().astype(np.float32, copy=True)
            for prefix, module in self.learned_modules().items()
            for name, p in module.named_parameters()
        }

    def load_learned_state(self, state: NamedArrays) -> None:
        """Replace the learned parameters (names must match exactly)."""
        params = {
            f"{prefix}.{name}": p for prefix, m in self.learned_modules().items() for name, p in m.named_parameters()
        }
        if sorted(state) != sorted(params):
            raise ValueError("learned state does not match this model's parameters")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(torch.from_numpy(np.asarray(value, np.float32)))

    def save(self, path: str | Path) -> None:
        """Write the learned weights and the config (not the encoder: it comes from its package), atomically."""
        payload = {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "config": asdict(self.config),
            "state_dict": {k: torch.from_numpy(v) for k, v in self.learned_state().items()},
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(payload, partial)
        partial.replace(path)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_LITE_PATH, device: str | torch.device = CPU) -> LiteStylizer:
        """Read a model written by :meth:`save`, on ``device``."""
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        if payload.get("format") != MODEL_FORMAT or payload.get("version") != MODEL_VERSION:
            raise ValueError(f"{path}: not a {MODEL_FORMAT} v{MODEL_VERSION} file")
        config = dict(payload["config"])
        config["taps"] = tuple(config["taps"])
        model = cls(LiteConfig(**config))
        model.load_learned_state({k: v.numpy() for k, v in payload["state_dict"].items()})
        logger.info("loaded %s (%s)", path, config)
        return model.to_device(device)

    def to_device(self, device: str | torch.device, *, half_precision: bool = True) -> LiteStylizer:
        """Serve on ``device`` (fp16 autocast of the encoder on CUDA unless ``half_precision`` is off)."""
        target = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.half_precision = half_precision
        self.to(target)
        self.encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return self.eval()

    def with_config(self, **changes: Any) -> LiteStylizer:
        """A copy with inference settings changed (``work_size``, ``strength``), sharing no state."""
        model = type(self)(LiteConfig(**{**asdict(self.config), **changes}), copy.deepcopy(self.encoder))
        model.load_learned_state(self.learned_state())
        return model.to_device(self.device, half_precision=self.half_precision)
