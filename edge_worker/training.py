"""The training library of the edge DNN: data, augmentation, batches, the losses of Eq. 5, held-out evaluation.

Used by offline training (the ``mvs train`` CLI, :mod:`edge_worker.train`) and by on-edge retraining
(:mod:`edge_worker.retrain`). Every batch draws its own upscale factor r.

Loss (Eq. 5): ``D(R^r(I_c), I^r_cs) + λ D(R^r(I_s), I^r_cs)`` with D a perceptual distance on the
frozen encoder's features: feature MSE at the deepest layer for content, MSE of channel means and
standard deviations at every ``reluN_1`` for style (Huang & Belongie 2017). :func:`reconstruction_loss` is
PhotoWCT's decoder reconstruction term (pixels + deepest features), so the decoder learns to invert the encoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from edge_worker.model.base import Size
from edge_worker.model.stylizer import PhotoStylizer, resize, to_tensor
from edge_worker.model.vgg import Encoded
from edge_worker.quality import gaussian_w2, psnr_from_mse, structure_ssim

BUNDLED_PHOTOS = (
    "astronaut.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
    "camera.png",
    "coins.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "moon.png",
)
"""Training photographs shipped inside the scikit-image wheel (grey ones get colour from augmentation)."""
HELD_OUT_PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
"""Never trained on: held-out reconstruction and stylization metrics."""
HELD_OUT_STYLES = ("astronaut.png", "hubble_deep_field.jpg", "ihc.png")
"""Styles of the held-out stylization pairs (every held-out photo with every one of these)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
ADAM_BETAS = (0.5, 0.999)
DEFAULT_LR = 1e-4
DEFAULT_BATCH = 2
DEFAULT_STYLE_WEIGHT = 1.0
DEFAULT_RECON_WEIGHT = 1.0
DEFAULT_TRAIN_SIZE = 128
R_RANGE = (0.5, 2.0)
"""Upscale factors r drawn uniformly (log scale) per batch."""
CROP_SCALE_RANGE = (0.2, 1.0)
"""Side of a random crop, as a fraction of the photo's short side."""
CONTENT_JITTER = 0.1
"""Colour jitter strength of content crops (brightness/contrast/saturation/hue)."""
STYLE_JITTER = 0.6
"""Colour jitter strength of style crops: styles are other photos with strongly changed colours."""
EVAL_SIZE = 256
"""Short side of held-out images in evaluation."""
RECON_PEAK = 1.0
"""Largest pixel value of the network's images (RGB in [0, 1]): the peak of the reconstruction PSNR."""
FEATURE_ENERGY_FLOOR = 1e-8


CALIBRATION_PAIRS = 6
"""(content, style) pairs an int8 model's activation ranges are calibrated on."""


def calibration_pairs(count: int = CALIBRATION_PAIRS) -> list[tuple[np.ndarray, np.ndarray]]:
    """(content, style) pairs of training photos for :meth:`PhotoStylizer.quantized` (never the held-out ones):
    photo i with photo i + 1."""
    names = BUNDLED_PHOTOS[: count + 1]
    return [(bundled_photo(c), bundled_photo(s)) for c, s in zip(names, names[1:], strict=False)]


def bundled_photo(name: str) -> np.ndarray:
    """A photograph shipped with scikit-image, as RGB uint8 (no download)."""
    import skimage.data

    path = Path(skimage.data.__file__).parent / name
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_folder(folder: Path) -> list[np.ndarray]:
    """Every image under ``folder`` (recursively), RGB uint8."""
    images = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    if not images:
        raise FileNotFoundError(f"no images under {folder}")
    return images


def colour_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation, hue rotation, per-channel gain and gamma; float in [0, 1]."""
    x = image.astype(np.float32) / 255.0
    gray = x.mean(-1, keepdims=True)
    x = gray + (x - gray) * rng.uniform(1 - strength, 1 + 2 * strength)  # saturation
    angle = rng.uniform(-math.pi, math.pi) * strength
    axis = np.ones(3, np.float32) / math.sqrt(3.0)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], np.float32)
    rotation = np.eye(3, dtype=np.float32) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross
    x = x @ rotation.T  # hue: rotation about the grey axis
    x = x * rng.uniform(1 - strength / 2, 1 + strength / 2, size=3).astype(np.float32)
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - strength / 2, 1 + strength / 2) + mean * rng.uniform(
        1 - strength / 2, 1 + strength / 2
    )
    x = np.clip(x, 0, 1) ** rng.uniform(1 - strength / 2, 1 + strength / 2)
    return (np.clip(x, 0, 1) * 255.0).round().astype(np.uint8)


def random_crop(image: np.ndarray, size: Size, rng: np.random.Generator) -> np.ndarray:
    """A random square-ish crop at a random scale, randomly flipped, resized to ``size`` (w, h)."""
    h, w = image.shape[:2]
    side = int(min(h, w) * rng.uniform(*CROP_SCALE_RANGE))
    cw = min(w, max(8, int(side * size[0] / size[1])))
    ch = min(h, max(8, side))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = image[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return resize(np.ascontiguousarray(crop), size)


@dataclass
class Batch:
    """One training batch at network size (``*_low``) and at output size r times larger (``*_full``)."""

    content_low: torch.Tensor
    content_full: torch.Tensor
    style_low: torch.Tensor
    style_full: torch.Tensor
    r: float


def random_output_side(train_size: int, step: int, rng: np.random.Generator) -> int:
    """Side of a batch's full-resolution crops: ``train_size`` times a random r in :data:`R_RANGE` (log-uniform),
    rounded to the encoder's ``step``."""
    r = float(math.exp(rng.uniform(math.log(R_RANGE[0]), math.log(R_RANGE[1]))))
    return max(step, round(train_size * r / step) * step)


def batch_from_crops(contents: Sequence[np.ndarray], styles: Sequence[np.ndarray], train_size: int) -> Batch:
    """A batch from full-resolution (square) content and style crops; the network-size copies are made here."""
    full = contents[0].shape[0]
    low_size = (train_size, train_size)
    return Batch(
        content_low=torch.cat([to_tensor(resize(c, low_size)) for c in contents]),
        content_full=torch.cat([to_tensor(c) for c in contents]),
        style_low=torch.cat([to_tensor(resize(s, low_size)) for s in styles]),
        style_full=torch.cat([to_tensor(s) for s in styles]),
        r=full / train_size,
    )


def sample_batch(
    photos: Sequence[np.ndarray], batch: int, train_size: int, step: int, rng: np.random.Generator
) -> Batch:
    """Content crops and colour-jittered style crops of other photos, with a random r for the batch."""
    full = random_output_side(train_size, step, rng)
    contents, styles = [], []
    for _ in range(batch):
        i, j = rng.choice(len(photos), size=2, replace=len(photos) < 2)
        contents.append(colour_jitter(random_crop(photos[i], (full, full), rng), CONTENT_JITTER, rng))
        styles.append(colour_jitter(random_crop(photos[j], (full, full), rng), STYLE_JITTER, rng))
    return batch_from_crops(contents, styles, train_size)


def _mean_std(feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = feature.flatten(2)
    return flat.mean(-1), (flat.var(-1) + 1e-5).sqrt()


def _relative_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE divided by the target's mean square: scale-free, so λ means the same for any encoder's features."""
    return F.mse_loss(output, target) / target.detach().square().mean().clamp_min(FEATURE_ENERGY_FLOOR)


def content_loss(output: Encoded, target: Encoded) -> torch.Tensor:
    """Perceptual content distance: relative MSE of the deepest features (Johnson et al. 2016)."""
    return _relative_mse(output.deepest, target.deepest)


def style_loss(output: Encoded, target: Encoded) -> torch.Tensor:
    """Perceptual style distance: relative MSE of channel means and stds at every ``reluN_1``, averaged over
    layers (Huang & Belongie 2017)."""
    total = output.deepest.new_zeros(())
    for fo, ft in zip(output.features, target.features, strict=True):
        mo, so = _mean_std(fo)
        mt, st = _mean_std(ft)
        total = total + _relative_mse(torch.cat([mo, so], 1), torch.cat([mt, st], 1))
    return total / len(output.features)


def reconstruction_loss(
    model: PhotoStylizer, images: torch.Tensor, feature_term: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """PhotoWCT's decoder loss (pixel MSE + deepest-feature distance, or pixels only) and the pixel MSE alone."""
    encoded = model.encoder(images)
    decoded = model.decoder(encoded.deepest, encoded)
    pixel = F.mse_loss(decoded, images)
    return (pixel + content_loss(model.encoder(decoded), encoded) if feature_term else pixel), pixel


def stylization_losses(model: PhotoStylizer, batch: Batch, style_weight: float) -> dict[str, torch.Tensor]:
    """Eq. 5 on one batch: content, style and their weighted sum ``total``."""
    with torch.no_grad():
        target_content = model.encoder(batch.content_full)
        target_style = model.encoder(batch.style_full)
    output, _, _ = model(batch.content_low, model.style_state(batch.style_low), batch.content_full)
    encoded = model.encoder(output)
    content = content_loss(encoded, target_content)
    style = style_loss(encoded, target_style)
    return {"content": content, "style": style, "total": content + style_weight * style}


@torch.no_grad()
def evaluate(model: PhotoStylizer, held_out: Sequence[np.ndarray], styles: Sequence[np.ndarray]) -> dict[str, float]:
    """Held-out decoder reconstruction PSNR, and structure SSIM / Gaussian W2 of stylizations."""
    model.eval()
    mses, ssims, w2s = [], [], []
    prepared = [model.prepare_style(s) for s in styles]
    for photo in held_out:
        size = model.network_size(photo.shape[1], photo.shape[0])
        low = to_tensor(resize(photo, size))
        encoded = model.encoder(low)
        mses.append(F.mse_loss(model.decoder(encoded.deepest, encoded).clamp(0, 1), low).item())
        scale = EVAL_SIZE / min(photo.shape[:2])
        content = resize(photo, (round(photo.shape[1] * scale), round(photo.shape[0] * scale)))
        for style, state in zip(styles, prepared, strict=True):
            out = model.stylize(content, state, (content.shape[1], content.shape[0]))
            ssims.append(structure_ssim(content, out))
            w2s.append(gaussian_w2(out, style))
    model.train()
    return {
        "recon_psnr": float(np.mean([psnr_from_mse(m, RECON_PEAK) for m in mses])),
        "ssim": float(np.mean(ssims)),
        "gaussian_w2": float(np.mean(w2s)),
    }
