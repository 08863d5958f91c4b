"""Random photographic colour looks: the self-supervision of the lite stylizer.

A :class:`Look` is a colour grade of the kinds photographers apply (white balance, per-channel curves, contrast,
channel mixing, saturation, split toning, fade, a hue-selective HSL adjustment), drawn at random once and then a
fixed function of a pixel's colour, so it can be applied to two photographs alike. Training pairs: content ``I``,
style ``a(J)`` for another photograph ``J``, target ``a(I)``: the model must read the look ``a`` from a scene it
did not see and put it on the content, which a global colour-statistics match does not do.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
"""Rec. 601 luma weights (RGB)."""
HUE_DEGREES = 360.0


@dataclass(frozen=True)
class Look:
    """One colour grade; :meth:`__call__` applies it to float RGB in [0, 1]. Neutral values change nothing."""

    gains: np.ndarray
    """White balance: per-channel gains (3,)."""
    gammas: np.ndarray
    """Per-channel tone curves ``x ** gamma`` (3,)."""
    contrast: float
    """S-curve amount: 0 none, > 0 more contrast, < 0 less (blend with a smoothstep)."""
    mix: np.ndarray
    """Channel mixer (3, 3), rows summing to one."""
    saturation: float
    shadow_tint: np.ndarray
    highlight_tint: np.ndarray
    """Split toning: colours added in the shadows and in the highlights (3,)."""
    fade: float
    """Lifted blacks: ``fade + (1 - fade) x``."""
    hue_centre: float
    hue_width: float
    hue_shift: float
    hue_saturation: float
    hue_lightness: float
    """Hue-selective HSL: colours within ``hue_width`` degrees of ``hue_centre`` get their hue shifted, saturation
    scaled and lightness offset (weight falling off linearly with the hue distance)."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The graded ``H x W x 3`` float32 image in [0, 1]."""
        x = np.clip(image.astype(np.float32) * self.gains, 0, 1) ** self.gammas
        smooth = x * x * (3 - 2 * x)
        x = x + self.contrast * (smooth - x)
        x = np.clip(x @ self.mix.T, 0, 1)
        luma = (x @ LUMA)[..., None]
        x = np.clip(luma + self.saturation * (x - luma), 0, 1)
        x = x + (1 - luma) * self.shadow_tint + luma * self.highlight_tint
        x = self.fade + (1 - self.fade) * np.clip(x, 0, 1)
        if self.hue_width > 0:
            x = self._hue_selective(x.astype(np.float32))
        return np.clip(x, 0, 1).astype(np.float32)

    def _hue_selective(self, x: np.ndarray) -> np.ndarray:
        hls = cv2.cvtColor(x, cv2.COLOR_RGB2HLS)  # H in degrees, L and S in [0, 1]
        distance = np.abs((hls[..., 0] - self.hue_centre + HUE_DEGREES / 2) % HUE_DEGREES - HUE_DEGREES / 2)
        weight = np.clip(1 - distance / self.hue_width, 0, 1) * np.clip(hls[..., 2] * 4, 0, 1)  # greys stay
        hls[..., 0] = (hls[..., 0] + weight * self.hue_shift) % HUE_DEGREES
        hls[..., 1] = np.clip(hls[..., 1] + weight * self.hue_lightness, 0, 1)
        hls[..., 2] = np.clip(hls[..., 2] * (1 + weight * (self.hue_saturation - 1)), 0, 1)
        return cv2.cvtColor(hls, cv2.COLOR_HLS2RGB)

    def apply_uint8(self, image: np.ndarray) -> np.ndarray:
        """The look on an RGB uint8 image, as RGB uint8."""
        return (self(image.astype(np.float32) / 255.0) * 255.0).round().astype(np.uint8)


def _maybe(rng: np.random.Generator, p: float, value: float, neutral: float) -> float:
    return value if rng.random() < p else neutral


def random_look(rng: np.random.Generator, strength: float = 1.0) -> Look:
    """A random grade; each adjustment is present with probability ~0.6, ``strength`` scales how far they go."""
    s = strength
    gains = np.exp(rng.normal(0, 0.15 * s, 3)) if rng.random() < 0.7 else np.ones(3)
    gammas = np.exp(rng.normal(0, 0.2 * s, 3) + _maybe(rng, 0.5, rng.normal(0, 0.25 * s), 0.0))
    mix = np.eye(3)
    if rng.random() < 0.5:
        mix = np.clip(mix + rng.normal(0, 0.12 * s, (3, 3)), -0.5, 1.5)
        mix /= mix.sum(1, keepdims=True)
    split = rng.random() < 0.5
    hue = rng.random() < 0.5
    return Look(
        gains=(gains / gains.mean()).astype(np.float32) * np.float32(np.exp(rng.normal(0, 0.1 * s))),
        gammas=gammas.astype(np.float32),
        contrast=_maybe(rng, 0.6, float(rng.uniform(-0.5, 0.8) * s), 0.0),
        mix=mix.astype(np.float32),
        saturation=_maybe(rng, 0.7, float(np.exp(rng.normal(0, 0.4 * s))), 1.0),
        shadow_tint=(rng.normal(0, 0.08 * s, 3) if split else np.zeros(3)).astype(np.float32),
        highlight_tint=(rng.normal(0, 0.08 * s, 3) if split else np.zeros(3)).astype(np.float32),
        fade=_maybe(rng, 0.3, float(rng.uniform(0, 0.2) * s), 0.0),
        hue_centre=float(rng.uniform(0, HUE_DEGREES)),
        hue_width=float(rng.uniform(20, 70)) if hue else 0.0,
        hue_shift=float(rng.uniform(-40, 40) * s),
        hue_saturation=float(np.exp(rng.normal(0, 0.4 * s))),
        hue_lightness=float(rng.uniform(-0.1, 0.1) * s),
    )
