"""Meta-smoothing (Eq. 3-4): one module that upscales the stylized frame by any r > 0 and removes distortions.

:class:`MetaSmoothing` is photorealistic by construction. It fits, at the network's resolution,
the local affine colour map that takes the content to the decoder's output (a colour guided
filter, He et al., TPAMI 2013), smooths the 12 coefficient maps with the learned kernels of the
paper (the meta kernel ``W_u^r = Q(r) ⊙ W_u^1`` of Eq. 4 and the smoothing kernel ``W_s``), resamples
them to the output grid (the deconvolution ``P`` of Eq. 3 for any r, as in Chen et al.'s bilateral
guided upsampling, SIGGRAPH Asia 2016, and Xia et al.'s joint bilateral learning, ECCV 2020) and
applies them to the full-resolution content frame. Edges and texture come from the content;
the DNN only decides colours. The cost at full resolution is one resample and one 3x4 affine
map per pixel.

:class:`LiteralMetaSmoothing` takes Eq. 3 literally (upscale the stylized RGB, convolve with
``W_u^r``, then ``W_s``): the comparator that shows what the affine construction buys.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from edge_worker.model.transform import FeatureStats, monge_kantorovich, sqrtm_newton_schulz

FILTER_SIZE = 5
"""H_u = W_u = H_s = W_s = 5 (Sec. 4.2)."""
AFFINE_COEFFS = 12
"""A 3x3 colour matrix and a 3-vector offset per pixel."""
EPS_FLOOR = 1e-6
"""Smallest guided-filter regularizer (colours in [0, 1])."""
EPS_INIT = 1e-4
META_HIDDEN = 16
"""Hidden units of the network that makes Q(r) from r."""
META_KERNEL_SIGMA = 1.0
"""Initial meta kernel: a Gaussian of this sigma (pixels); W_s starts near a delta."""
SMOOTH_KERNEL_OFF_CENTER = -4.0
LITERAL_CHANNELS = 16
"""N_s: feature maps of the literal module's W_u^r convolution."""
LITERAL_INIT_STD = 0.05
COLOUR_RIDGE = 1e-5
"""Ridge on colour covariances ([0, 1] units): bounds the alignment's gain along flat colour directions.
Chroma variances of photos are ~1e-3, so a larger ridge leaves outputs desaturated: on the held-out pairs of
``bench.stylize`` the bundled model's Gaussian W2 was 10.5 at 1e-3, 8.1 at 1e-4, 6.9 at 3e-5, 5.9 at 1e-5 with
the same SSIM (0.574-0.578). An output direction's variance never exceeds the style's along it plus the ridge."""
GAIN_PRIOR_WEIGHT = 1e-3
"""Ridge pulling each window's colour gain A toward the global Monge-Kantorovich map of the content onto the style
instead of toward zero. The decoder's output is smoother than the content, so a fit shrunk toward zero loses the
content's local contrast (flat irises, hazy texture); shrunk toward the global map, detail keeps the style's gain.
On the held-out pairs of ``bench.stylize`` (radius 8): SSIM 0.574 → 0.605, Gaussian W2 5.92 → 4.02."""


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over ``(2 radius + 1)^2`` windows, shrinking at the borders."""
    return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def local_affine_fit(
    guide: torch.Tensor,
    target: torch.Tensor,
    radius: int,
    eps: torch.Tensor | float,
    prior: torch.Tensor | None = None,
    prior_weight: float = 0.0,
) -> torch.Tensor:
    """Per-window ridge regression ``target ≈ A guide + b`` (colour guided filter, He et al. 2013, Eq. 19).

    ``guide`` and ``target`` are ``(N, 3, h, w)``; returns ``(N, 12, h, w)``: A row-major, then b. The ridge
    ``eps`` pulls A toward zero; with a ``prior`` ``(N, 3, 3)`` the ridge ``prior_weight`` pulls A toward it.
    """
    n, _, h, w = guide.shape
    gi, gj = torch.triu_indices(3, 3, device=guide.device)
    products = torch.cat(
        [guide, target, guide[:, gi] * guide[:, gj], (target.unsqueeze(2) * guide.unsqueeze(1)).flatten(1, 2)], 1
    )
    means = box_filter(products, radius)
    mean_g, mean_t = means[:, :3], means[:, 3:6]
    gg = means[:, 6:12]
    tg = means[:, 12:21].unflatten(1, (3, 3))  # (N, out, in, h, w)
    sigma = torch.zeros(n, 3, 3, h, w, dtype=guide.dtype, device=guide.device)
    sigma[:, gi, gj] = gg - mean_g[:, gi] * mean_g[:, gj]
    sigma[:, gj, gi] = sigma[:, gi, gj]
    ridge = eps + prior_weight if prior is not None else eps
    sigma = sigma + ridge * torch.eye(3, dtype=guide.dtype, device=guide.device).view(1, 3, 3, 1, 1)
    cross = tg - mean_t.unsqueeze(2) * mean_g.unsqueeze(1)
    if prior is not None:
        cross = cross + prior_weight * prior.to(guide.dtype).view(n, 3, 3, 1, 1)
    # A Σ = cross  <=>  Σ Aᵀ = crossᵀ (Σ symmetric)
    a_t = torch.linalg.solve(sigma.permute(0, 3, 4, 1, 2), cross.permute(0, 3, 4, 2, 1))
    a = a_t.transpose(-1, -2)  # (N, h, w, out, in)
    b = mean_t.permute(0, 2, 3, 1) - (a @ mean_g.permute(0, 2, 3, 1).unsqueeze(-1)).squeeze(-1)
    return torch.cat([a.flatten(-2), b], -1).permute(0, 3, 1, 2)


def apply_affine(coeffs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Apply per-pixel ``(N, 12, H, W)`` affine colour maps to ``(N, 3, H, W)`` images."""
    channels = []
    for c in range(3):
        out = coeffs[:, 9 + c]
        for k in range(3):
            out = torch.addcmul(out, coeffs[:, 3 * c + k], image[:, k])
        channels.append(out)
    return torch.stack(channels, 1)


def colour_stats(images: torch.Tensor) -> FeatureStats:
    """Mean and ridge-regularized covariance of the RGB colours of ``(N, 3, H, W)`` images (float64)."""
    flat = images.flatten(2).double()
    mean = flat.mean(-1)
    centered = flat - mean.unsqueeze(-1)
    cov = centered @ centered.transpose(1, 2) / max(1, flat.shape[-1] - 1)
    return FeatureStats(mean, cov + COLOUR_RIDGE * torch.eye(3, dtype=cov.dtype, device=cov.device))


def align_colours(coeffs: torch.Tensor, content: torch.Tensor, style: FeatureStats) -> torch.Tensor:
    """Compose per-pixel affine maps with the global Monge-Kantorovich map that gives their output on
    ``content`` the style's colour mean and covariance (Pitié & Kokaram 2007); still per-pixel affine."""
    out = colour_stats(apply_affine(resample(coeffs, tuple(content.shape[-2:])), content))
    root, inv_root = sqrtm_newton_schulz(out.cov)
    middle, _ = sqrtm_newton_schulz(root @ style.cov @ root)
    a_g = inv_root @ middle @ inv_root  # (N, 3, 3)
    b_g = style.mean - (a_g @ out.mean.unsqueeze(-1)).squeeze(-1)
    a_g, b_g = a_g.to(coeffs.dtype), b_g.to(coeffs.dtype)
    a = torch.einsum("nij,njkhw->nikhw", a_g, coeffs[:, :9].unflatten(1, (3, 3))).flatten(1, 2)
    b = torch.einsum("nij,njhw->nihw", a_g, coeffs[:, 9:]) + b_g.view(-1, 3, 1, 1)
    return torch.cat([a, b], 1)


def toward_identity(coeffs: torch.Tensor, strength: float) -> torch.Tensor:
    """``strength`` × the maps + (1 − ``strength``) × the identity map: the stylization strength, WCT's α (Li et
    al., NeurIPS 2017) taken on the affine maps. Before :func:`align_colours`, 0 leaves only the global
    content→style map (Monge-Kantorovich colour transfer) and 1 the DNN's full local maps."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if strength == 1.0:
        return coeffs
    identity = torch.eye(3, dtype=coeffs.dtype, device=coeffs.device).flatten()
    offset = torch.cat([identity, identity.new_zeros(3)]).view(1, AFFINE_COEFFS, 1, 1)
    return torch.lerp(offset.expand_as(coeffs), coeffs, strength)


def resample(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bilinear resampling to ``size`` = (H, W); antialiased when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _gaussian_logits(size: int, sigma: float) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32) - size // 2
    return -(r.view(-1, 1) ** 2 + r.view(1, -1) ** 2) / (2 * sigma**2)


class ScaleKernel(nn.Module):
    """Q(r) of Eq. 4: a positive 5x5 matrix made from r, exactly ones at r = 1."""

    def __init__(self, size: int = FILTER_SIZE) -> None:
        super().__init__()
        self.size = size
        self.net = nn.Sequential(nn.Linear(1, META_HIDDEN), nn.Tanh(), nn.Linear(META_HIDDEN, size * size))
        last = cast(nn.Linear, self.net[-1])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, r: float) -> torch.Tensor:
        """``(size, size)`` multipliers for upscale factor ``r``."""
        weight = cast(nn.Linear, self.net[0]).weight
        x = torch.tensor([[math.log(r)], [0.0]], dtype=weight.dtype, device=weight.device)
        out = self.net(x)
        return torch.exp(out[0] - out[1]).view(self.size, self.size)


def _depthwise(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    pad = kernel.shape[-1] // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return F.conv2d(x, kernel.to(x.dtype).expand(c, 1, -1, -1), groups=c)


class MetaKernels(nn.Module):
    """The learned smoothing of Eq. 3-4 on coefficient maps: the meta kernel ``W_u^r`` and the smoothing kernel
    ``W_s``, both positive and summing to one, so a field of affine maps stays a field of affine maps."""

    def __init__(self) -> None:
        super().__init__()
        self.meta_kernel = nn.Parameter(_gaussian_logits(FILTER_SIZE, META_KERNEL_SIGMA))  # log W_u^1
        delta = torch.full((FILTER_SIZE, FILTER_SIZE), SMOOTH_KERNEL_OFF_CENTER)
        delta[FILTER_SIZE // 2, FILTER_SIZE // 2] = 0.0
        self.smooth_kernel = nn.Parameter(delta)  # log W_s
        self.scale_kernel = ScaleKernel()

    def kernels(self, r: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized ``W_u^r = Q(r) ⊙ W_u^1`` and ``W_s`` (positive, summing to one: affine stays affine)."""
        w_u = self.scale_kernel(r) * torch.exp(self.meta_kernel - self.meta_kernel.max())
        w_s = torch.softmax(self.smooth_kernel.flatten(), 0).view_as(self.smooth_kernel)
        return w_u / w_u.sum(), w_s

    def smooth(self, coeffs: torch.Tensor, r: float) -> torch.Tensor:
        """``(N, 12, h, w)`` maps filtered with ``W_u^r`` then ``W_s`` (replicated borders)."""
        w_u, w_s = self.kernels(r)
        return _depthwise(_depthwise(coeffs, w_u), w_s)


class MetaSmoothing(MetaKernels):
    """Guided affine meta-smoothing: ``out = A↑ · content_full + b↑`` with A, b fitted at low resolution."""

    def __init__(self, radius: int, downsample: int = 1, gain_prior: float = 0.0) -> None:
        super().__init__()
        self.radius = radius
        self.downsample = downsample
        self.gain_prior = gain_prior
        self.log_eps = nn.Parameter(torch.tensor(math.log(EPS_INIT)))

    def coefficients(
        self, content_low: torch.Tensor, stylized_low: torch.Tensor, r: float, style_colours: FeatureStats | None = None
    ) -> torch.Tensor:
        """Smoothed ``(N, 12, h/d, w/d)`` affine coefficients, fitted ``d = downsample`` times below the network's
        resolution: the decoder's output is blurrier than the content at its finest scale, and fitting both at
        a scale where they agree avoids shrinking the content's detail (regression dilution). With
        ``style_colours`` and a ``gain_prior``, gains shrink toward the content→style Monge-Kantorovich map."""
        eps = EPS_FLOOR + self.log_eps.exp()
        prior = None
        if style_colours is not None and self.gain_prior > 0:
            prior = monge_kantorovich(colour_stats(content_low), style_colours)
        if self.downsample > 1:
            content_low = F.avg_pool2d(content_low, self.downsample, ceil_mode=True)
            stylized_low = F.avg_pool2d(stylized_low, self.downsample, ceil_mode=True)
        return self.smooth(local_affine_fit(content_low, stylized_low, self.radius, eps, prior, self.gain_prior), r)

    def forward(
        self,
        content_low: torch.Tensor,
        stylized_low: torch.Tensor,
        content_full: torch.Tensor,
        style_colours: FeatureStats | None = None,
        strength: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Output at ``content_full``'s size and the low-resolution coefficients it came from.

        With ``style_colours`` the gains are fitted toward the style's global map (``gain_prior``) and the
        coefficients are composed with :func:`align_colours`; ``strength`` < 1 first moves them toward the
        identity (:func:`toward_identity`).
        """
        coeffs = self.maps(content_low, stylized_low, content_full.shape[-1], style_colours, strength)
        return apply_affine(resample(coeffs, tuple(content_full.shape[-2:])), content_full), coeffs

    def maps(
        self,
        content_low: torch.Tensor,
        stylized_low: torch.Tensor,
        out_width: int,
        style_colours: FeatureStats | None = None,
        strength: float = 1.0,
    ) -> torch.Tensor:
        """The low-resolution coefficients :meth:`forward` applies for an output ``out_width`` pixels wide (it
        only sets r), without rendering the output."""
        r = out_width * self.downsample / content_low.shape[-1]
        coeffs = toward_identity(self.coefficients(content_low, stylized_low, r, style_colours), strength)
        if style_colours is not None:
            coeffs = align_colours(coeffs, content_low, style_colours)
        return coeffs


class LiteralMetaSmoothing(nn.Module):
    """Eq. 3 as printed: ``I^r = P(I_cs, W_u^r) * W_s`` on RGB, with a residual bilinear path."""

    def __init__(self) -> None:
        super().__init__()
        self.meta_kernel = nn.Parameter(torch.randn(LITERAL_CHANNELS, 3, FILTER_SIZE, FILTER_SIZE) * LITERAL_INIT_STD)
        self.meta_bias = nn.Parameter(torch.zeros(LITERAL_CHANNELS))
        self.smooth = nn.Conv2d(LITERAL_CHANNELS, 3, FILTER_SIZE, padding=FILTER_SIZE // 2, padding_mode="replicate")
        nn.init.zeros_(self.smooth.weight)
        nn.init.zeros_(cast(torch.Tensor, self.smooth.bias))
        self.scale_kernel = ScaleKernel()

    def forward(
        self,
        content_low: torch.Tensor,
        stylized_low: torch.Tensor,
        content_full: torch.Tensor,
        style_colours: FeatureStats | None = None,
        strength: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Upscaled, smoothed stylized image at ``content_full``'s size (no coefficients: an empty tensor).

        ``style_colours`` must be None and ``strength`` 1: without coefficients there is nothing to align or blend.
        """
        if style_colours is not None:
            raise ValueError("the literal meta-smoothing has no colour alignment")
        if strength != 1.0:
            raise ValueError("the literal meta-smoothing has no stylization strength")
        r = content_full.shape[-1] / content_low.shape[-1]
        up = resample(stylized_low, tuple(content_full.shape[-2:]))
        w_u = self.scale_kernel(r) * self.meta_kernel
        hidden = F.relu(F.conv2d(F.pad(up, (FILTER_SIZE // 2,) * 4, mode="replicate"), w_u, self.meta_bias))
        return up + self.smooth(hidden), up.new_empty(0)
