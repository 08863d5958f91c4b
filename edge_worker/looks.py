"""Random photographic colour looks: the edits a photographer makes in a raw developer, seeded.

A :class:`Look` is a per-pixel colour function (the same input colour always gives the same output colour): white
balance, channel mixing, tone curves (master and per channel), hue-selective HSL adjustments, global saturation,
split toning and fade, applied in that order to sRGB values in [0, 1]. :func:`random_look` draws one from a seed.

Used by ``bench.stylize``'s look-transfer check (content I, style a(J), target a(I) for a look a) and meant for
training too: a model that learns to carry a look from one photo to another can draw (a(J), I, a(I)) triples here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

UINT8_MAX = 255.0
CURVE_KNOTS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Input levels of a tone curve's control points (outputs drawn per look; the ends may move: crushed/lifted)."""
CURVE_LUT = 1024
CURVE_SMOOTHING = 0.06
"""Sigma (in input levels) of the Gaussian that rounds a curve's corners; smoothing keeps it monotone."""
HUE_DEGREES = 360.0
HSL_BAND_WIDTH = 60.0
"""Half-width (degrees) of a hue-selective band: full effect at its centre, none beyond ±this, cosine between."""
WHITE_BALANCE_RANGE = 0.25
"""Temperature/tint: per-channel gains within 1 ± this (before renormalising the green gain to 1)."""
CHANNEL_MIX_RANGE = 0.15
CURVE_RANGE = 0.08
CHANNEL_CURVE_RANGE = 0.05
SATURATION_RANGE = (0.55, 1.5)
SPLIT_TONE_RANGE = 0.12
FADE_RANGE = 0.12
HSL_BANDS = (0, 3)
"""How many hue-selective bands a look has (drawn uniformly, upper bound excluded)."""
HSL_HUE_SHIFT = 25.0
HSL_SAT_RANGE = 0.4
HSL_LIGHT_RANGE = 0.12


@dataclass(frozen=True)
class HslBand:
    """A hue-selective adjustment: hue shift (degrees), saturation scale and lightness offset, at full effect on
    hue ``centre`` (degrees) and fading out over :data:`HSL_BAND_WIDTH`."""

    centre: float
    hue_shift: float
    saturation: float
    lightness: float


@dataclass(frozen=True)
class Look:
    """A colour look; the default is the identity (every step neutral)."""

    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Gains on R, G, B."""
    channel_mix: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    """Output channel i = Σ_j mix[i][j] · input channel j (rows sum to 1: greys keep their level)."""
    curve: tuple[float, ...] = CURVE_KNOTS
    """Master tone curve: output levels at :data:`CURVE_KNOTS` (joined linearly, corners smoothed)."""
    channel_curves: tuple[tuple[float, ...], ...] = (CURVE_KNOTS, CURVE_KNOTS, CURVE_KNOTS)
    hsl: tuple[HslBand, ...] = ()
    saturation: float = 1.0
    """Chroma scale about the BT.601 luma (0: black and white)."""
    shadow_tint: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """RGB offset added to the shadows, weighted by (1 - luma)²."""
    highlight_tint: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """RGB offset added to the highlights, weighted by luma²."""
    fade: float = 0.0
    """Blacks lifted to this level (the whole range compressed into [fade, 1])."""

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The look applied to an RGB uint8 image ``H x W x 3`` (uint8 out)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image H x W x 3, got {image.dtype} {image.shape}")
        x = image.astype(np.float32) / np.float32(UINT8_MAX)
        x = x * np.asarray(self.white_balance, np.float32)
        x = np.clip(x @ np.asarray(self.channel_mix, np.float32).T, 0, 1)
        x = _curve(x, self.curve)
        x = np.stack([_curve(x[..., c], self.channel_curves[c]) for c in range(3)], -1)
        if self.hsl:
            x = _hsl_bands(x, self.hsl)
        luma = x @ np.asarray((0.299, 0.587, 0.114), np.float32)
        x = luma[..., None] + (x - luma[..., None]) * np.float32(self.saturation)
        x = x + ((1 - luma) ** 2)[..., None] * np.asarray(self.shadow_tint, np.float32)
        x = x + (luma**2)[..., None] * np.asarray(self.highlight_tint, np.float32)
        x = np.float32(self.fade) + np.clip(x, 0, 1) * np.float32(1 - self.fade)
        return np.asarray(np.round(np.clip(x, 0, 1) * UINT8_MAX), dtype=np.uint8)


def _curve(x: np.ndarray, levels: tuple[float, ...]) -> np.ndarray:
    """``x`` through the tone curve with outputs ``levels`` at :data:`CURVE_KNOTS`: piecewise linear, its corners
    rounded by a Gaussian of :data:`CURVE_SMOOTHING` (ends extended by point reflection, so a straight line stays
    exactly straight and a monotone curve stays monotone)."""
    lut_in = np.linspace(0, 1, CURVE_LUT)
    lut = np.interp(lut_in, CURVE_KNOTS, levels)
    sigma = CURVE_SMOOTHING * (CURVE_LUT - 1)
    half = round(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    padded = np.concatenate([2 * lut[0] - lut[half:0:-1], lut, 2 * lut[-1] - lut[-2 : -half - 2 : -1]])
    lut = np.convolve(padded, kernel / kernel.sum(), mode="valid")
    return np.asarray(np.interp(x, lut_in, np.clip(lut, 0, 1)), dtype=np.float32)


def _hsl_bands(x: np.ndarray, bands: tuple[HslBand, ...]) -> np.ndarray:
    """Hue-selective hue/saturation/lightness changes in OpenCV's HLS (hue in degrees, L and S in [0, 1])."""
    hls = cv2.cvtColor(np.ascontiguousarray(x, np.float32), cv2.COLOR_RGB2HLS)
    hue, light, sat = hls[..., 0], hls[..., 1], hls[..., 2]
    new_hue, new_light, new_sat = hue.copy(), light.copy(), sat.copy()
    for band in bands:
        distance = np.abs((hue - band.centre + HUE_DEGREES / 2) % HUE_DEGREES - HUE_DEGREES / 2)
        weight = np.where(distance < HSL_BAND_WIDTH, 0.5 + 0.5 * np.cos(np.pi * distance / HSL_BAND_WIDTH), 0.0)
        weight = weight * np.minimum(sat * 4, 1)  # greys have no hue: leave them alone
        new_hue = new_hue + weight * band.hue_shift
        new_sat = new_sat * (1 + weight * (band.saturation - 1))
        new_light = new_light + weight * band.lightness * sat
    out = np.stack([new_hue % HUE_DEGREES, np.clip(new_light, 0, 1), np.clip(new_sat, 0, 1)], -1)
    return cv2.cvtColor(out.astype(np.float32), cv2.COLOR_HLS2RGB)


def _random_curve(rng: np.random.Generator, spread: float) -> tuple[float, ...]:
    """Control-point outputs near the identity, kept strictly increasing (a curve never inverts tones)."""
    levels = np.asarray(CURVE_KNOTS) + rng.uniform(-spread, spread, len(CURVE_KNOTS))
    levels[0] = max(levels[0], 0.0)
    levels[-1] = min(levels[-1], 1.0)
    levels = np.maximum.accumulate(np.clip(levels, 0, 1) + np.arange(len(levels)) * 1e-3)
    return tuple(float(v) for v in levels / max(levels[-1], 1.0))


def _tint(rng: np.random.Generator, strength: float) -> tuple[float, float, float]:
    """An RGB offset of a random hue, zero-mean over the channels, of norm up to ``strength``."""
    angle = rng.uniform(0, 2 * math.pi)
    amount = rng.uniform(0, strength)
    rgb = [math.cos(angle - k * 2 * math.pi / 3) for k in range(3)]
    return (amount * rgb[0], amount * rgb[1], amount * rgb[2])


def random_look(seed: int | np.random.Generator) -> Look:
    """A random photographic look (every step drawn; hue-selective bands: 0-2 of them), reproducible from
    ``seed``."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    gains = rng.uniform(1 - WHITE_BALANCE_RANGE, 1 + WHITE_BALANCE_RANGE, 3)
    gains = gains / gains[1]
    mix = np.eye(3) + rng.uniform(-CHANNEL_MIX_RANGE, CHANNEL_MIX_RANGE, (3, 3))
    mix = mix / mix.sum(1, keepdims=True)
    bands = tuple(
        HslBand(
            centre=float(rng.uniform(0, HUE_DEGREES)),
            hue_shift=float(rng.uniform(-HSL_HUE_SHIFT, HSL_HUE_SHIFT)),
            saturation=float(rng.uniform(1 - HSL_SAT_RANGE, 1 + HSL_SAT_RANGE)),
            lightness=float(rng.uniform(-HSL_LIGHT_RANGE, HSL_LIGHT_RANGE)),
        )
        for _ in range(int(rng.integers(*HSL_BANDS)))
    )
    return Look(
        white_balance=(float(gains[0]), float(gains[1]), float(gains[2])),
        channel_mix=tuple((float(r[0]), float(r[1]), float(r[2])) for r in mix),
        curve=_random_curve(rng, CURVE_RANGE),
        channel_curves=tuple(_random_curve(rng, CHANNEL_CURVE_RANGE) for _ in range(3)),
        hsl=bands,
        saturation=float(rng.uniform(*SATURATION_RANGE)),
        shadow_tint=_tint(rng, SPLIT_TONE_RANGE),
        highlight_tint=_tint(rng, SPLIT_TONE_RANGE),
        fade=float(rng.uniform(0, FADE_RANGE)),
    )
