"""``python -m edge_worker.train`` / ``mvs train``: offline training of the edge DNN (Eq. 5; optionally its encoder as
an autoencoder first) or of the lite head (``--model lite``, on colour looks).

``mvs train --config small --steps 20000 --out runs/small`` trains on the photographs bundled with
scikit-image (or ``--data DIR``), heavily augmented; style images are other photographs with strong colour
jitter. Every batch draws its own upscale factor r.

Loss (Eq. 5): ``D(R^r(I_c), I^r_cs) + λ D(R^r(I_s), I^r_cs)`` with D a perceptual distance on the
frozen encoder's features: feature MSE at the deepest layer for content, MSE of channel means and
standard deviations at every ``reluN_1`` for style (Huang & Belongie 2017). ``--recon-weight`` adds
PhotoWCT's decoder reconstruction term (pixels + deepest features) so the decoder learns to invert
the encoder; ``--mode autoencoder`` trains encoder and decoder on pixel reconstruction alone, ``--mode decoder``
the decoder alone on that term with the encoder frozen (PhotoWCT's decoder training, e.g. on ImageNet VGG19).
The pieces (data, batches, losses, evaluation) are in :mod:`edge_worker.training`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_worker.lite_training import (
    LITE_BATCH,
    LITE_CONTENT_WEIGHT,
    LITE_LR,
    LITE_PHOTOS,
    LITE_STYLE_WEIGHT,
    evaluate_lite,
    look_batch,
    look_losses,
    make_optimizer,
    sample_pairs,
)
from edge_worker.model.lite import LITE_CONFIGS, LiteStylizer
from edge_worker.model.stylizer import CONFIGS, SMOOTHING_KINDS, PhotoStylizer
from edge_worker.training import (
    ADAM_BETAS,
    BUNDLED_PHOTOS,
    DEFAULT_BATCH,
    DEFAULT_LR,
    DEFAULT_RECON_WEIGHT,
    DEFAULT_STYLE_WEIGHT,
    DEFAULT_TRAIN_SIZE,
    HELD_OUT_PHOTOS,
    HELD_OUT_STYLES,
    bundled_photo,
    evaluate,
    load_folder,
    reconstruction_loss,
    sample_batch,
    stylization_losses,
)
from streaming.cli import DefaultsHelpFormatter

logger = logging.getLogger(__name__)

DNN_MODEL, LITE_MODEL = "dnn", "lite"
TRAIN_MODELS = (DNN_MODEL, LITE_MODEL)
TRAIN_MODES = ("stylizer", "autoencoder", "decoder")
"""What ``--mode`` trains: Eq. 5, the encoder and decoder on reconstruction, or the decoder alone on it."""
LOG_EVERY = 20
CHECKPOINT_EVERY = 500
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
LOSS_LOG_FILE = "loss_log.json"


def build_parser() -> argparse.ArgumentParser:
    """CLI of ``mvs train``."""
    p = argparse.ArgumentParser(prog="mvs train", description=__doc__, formatter_class=DefaultsHelpFormatter)
    p.add_argument(
        "--model",
        choices=TRAIN_MODELS,
        default=DNN_MODEL,
        help="dnn: the paper's network (Eq. 5); lite: the ImageNet-encoder head on random colour looks "
        "(edge_worker.lite_training; --config, --mode and the Eq. 5 options do not apply)",
    )
    p.add_argument("--config", choices=sorted(CONFIGS), default="small", help="architecture")
    p.add_argument(
        "--smoothing",
        choices=SMOOTHING_KINDS,
        help="override the config's meta-smoothing kind (literal: Eq. 3 as printed, without colour alignment)",
    )
    p.add_argument(
        "--mode",
        choices=TRAIN_MODES,
        default="stylizer",
        help="stylizer: Eq. 5 with the encoder frozen; autoencoder: encoder+decoder on pixel reconstruction; "
        "decoder: the decoder alone on reconstruction (pixels + deepest features), encoder frozen",
    )
    p.add_argument("--out", type=Path, required=True, help="run directory (model, checkpoint, loss log)")
    p.add_argument("--data", type=Path, help="folder of training images (default: scikit-image's photos)")
    p.add_argument("--init", type=Path, help="start from this model file (e.g. an autoencoder run's model.pt)")
    p.add_argument("--vgg-weights", type=Path, help="torchvision-format ImageNet VGG19 state dict (config full)")
    p.add_argument("--steps", type=int, default=10000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, help=f"images per step: {DEFAULT_BATCH} (dnn), {LITE_BATCH} (lite)")
    p.add_argument("--lr", type=float, help=f"learning rate: {DEFAULT_LR} (dnn), {LITE_LR} (lite)")
    p.add_argument(
        "--style-weight",
        type=float,
        help=f"λ of Eq. 5: {DEFAULT_STYLE_WEIGHT} (dnn), {LITE_STYLE_WEIGHT} (lite)",
    )
    p.add_argument(
        "--content-weight",
        type=float,
        default=LITE_CONTENT_WEIGHT,
        help="lite: weight of Eq. 5's content term beside the look term",
    )
    p.add_argument(
        "--colour-alignment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="lite: compose the maps with the global map onto the style's colour statistics (as served)",
    )
    p.add_argument("--recon-weight", type=float, default=DEFAULT_RECON_WEIGHT, help="decoder reconstruction term")
    p.add_argument("--train-size", type=int, default=DEFAULT_TRAIN_SIZE, help="network input side in training")
    p.add_argument("--seed", type=int, default=0, help="random seed (batches, initial weights)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--log-every", type=int, default=LOG_EVERY, help="steps between progress lines")
    p.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--export", type=Path, help="also write the model here at every checkpoint (e.g. the bundled file)")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    return build_parser().parse_args(argv)


def _load_init(model: PhotoStylizer, path: Path) -> None:
    """Copy every module of ``path``'s model whose weights fit (the encoder and decoder must)."""
    source = PhotoStylizer.load(path)
    if source.config.encoder != model.config.encoder:
        raise ValueError(f"{path}: encoder {source.config.encoder} does not match {model.config.encoder}")
    copied = []
    for name in ("encoder", "decoder", "colorization", "smoothing"):
        ours, theirs = getattr(model, name).state_dict(), getattr(source, name).state_dict()
        if ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours):
            getattr(model, name).load_state_dict(theirs)
            copied.append(name)
    logger.info("initialized %s from %s", ", ".join(copied), path)


@dataclass
class TrainingRun:
    """The bookkeeping of an ``mvs train`` run, whichever model it trains: resuming from a checkpoint, the step loop
    with its progress line and loss log, held-out evaluation, and checkpoints written whole or not at all."""

    args: argparse.Namespace
    optimizer: torch.optim.Optimizer
    rng: np.random.Generator
    evaluate: Callable[[], dict[str, float]]
    """Held-out metrics of the model as it is now."""
    save_model: Callable[[Path], None]
    model_state: Callable[[], dict[str, Any]]
    """What of the model a checkpoint holds (a key of its own beside the optimizer, step, log and RNG states)."""
    log: list[dict[str, float]] = field(default_factory=list)
    start: int = 0
    """The last step done before this run (a resumed run's checkpoint step)."""

    @property
    def checkpoint_path(self) -> Path:
        """Where checkpoints go (and a resumed run reads one)."""
        return Path(self.args.out) / CHECKPOINT_FILE

    def resume(self, load_model: Callable[[dict[str, Any]], None]) -> None:
        """With ``--resume`` and a checkpoint: restore the model (``load_model`` of the checkpoint), the optimizer,
        the step, the log and both RNGs, so that the run continues bit-exactly."""
        path = self.checkpoint_path
        if not (self.args.resume and path.is_file()):
            return
        state = torch.load(path, map_location="cpu", weights_only=False)
        load_model(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.start, self.log = state["step"], state["log"]
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed from %s at step %d", path, self.start)

    def save(self, step: int) -> None:
        """Evaluate, write the model (and ``--export``), the checkpoint (whole or not at all) and the loss log."""
        metrics = self.evaluate()
        self.log.append({"step": step, **{f"eval_{k}": v for k, v in metrics.items()}})
        logger.info("step %d held-out: %s", step, json.dumps(metrics))
        out = Path(self.args.out)
        self.save_model(out / MODEL_FILE)
        if self.args.export:
            self.save_model(self.args.export)
        state = {
            **self.model_state(),
            "optimizer": self.optimizer.state_dict(),
            "step": step,
            "log": self.log,
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }
        partial = self.checkpoint_path.with_name(CHECKPOINT_FILE + ".partial")
        torch.save(state, partial)
        partial.replace(self.checkpoint_path)
        (out / LOSS_LOG_FILE).write_text(json.dumps(self.log, indent=1))

    def train(self, step: Callable[[], tuple[dict[str, torch.Tensor], dict[str, float]]]) -> None:
        """Steps ``start + 1 .. --steps``: ``step()`` returns the losses (``total`` is minimised) and fields logged
        beside their means every ``--log-every`` steps; a checkpoint every ``--checkpoint-every`` and at the end."""
        args = self.args
        tic = time.monotonic()
        sums: dict[str, float] = {}
        for index in range(self.start + 1, args.steps + 1):
            losses, fields = step()
            self.optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            self.optimizer.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            if index % args.log_every == 0:
                means = {k: v / args.log_every for k, v in sums.items()}
                self.log.append({"step": index, **fields, **means})
                _progress(index, args.steps, (index - self.start) / (time.monotonic() - tic), means)
                sums = {}
            if index % args.checkpoint_every == 0 or index == args.steps:
                print(file=sys.stderr)
                self.save(index)
        if self.start >= args.steps:
            self.save(self.start)
        out = Path(args.out)
        exported = f" and {args.export}" if args.export else ""
        logs = f"checkpoint {self.checkpoint_path}, loss log {out / LOSS_LOG_FILE}"
        print(f"mvs train: wrote {out / MODEL_FILE}{exported}; {logs}")


def _progress(step: int, steps: int, rate: float, means: dict[str, float]) -> None:
    """Rewrite the progress line on stderr: a bar, the rate, the time left, the mean losses."""
    bar = "#" * int(30 * step / steps)
    eta = (steps - step) / max(rate, 1e-9)
    print(
        f"\r[{bar:<30}] {step}/{steps} {rate:.2f} it/s eta {eta / 60:.0f} min "
        + " ".join(f"{k} {v:.4f}" for k, v in means.items()),
        end="",
        file=sys.stderr,
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run training; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    held_out = [bundled_photo(n) for n in HELD_OUT_PHOTOS]
    eval_styles = [bundled_photo(n) for n in HELD_OUT_STYLES]
    if args.model == LITE_MODEL:
        photos = load_folder(args.data) if args.data else [bundled_photo(n) for n in LITE_PHOTOS]
        return train_lite(args, photos, held_out, eval_styles, rng)
    args.batch_size = args.batch_size or DEFAULT_BATCH
    args.style_weight = DEFAULT_STYLE_WEIGHT if args.style_weight is None else args.style_weight
    args.lr = args.lr or DEFAULT_LR
    photos = load_folder(args.data) if args.data else [bundled_photo(n) for n in BUNDLED_PHOTOS]
    config = CONFIGS[args.config]
    if args.smoothing:
        config = replace(config, smoothing=args.smoothing, colour_alignment=args.smoothing == "affine")
    model = PhotoStylizer.from_config(config, args.vgg_weights)
    if args.init:
        _load_init(model, args.init)
    if args.mode == "autoencoder":
        model.encoder.requires_grad_(True)
        params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    elif args.mode == "decoder":
        params = list(model.decoder.parameters())
    else:
        params = model.learned_parameters()
    optimizer = torch.optim.Adam(params, lr=args.lr, betas=ADAM_BETAS)
    run = TrainingRun(
        args,
        optimizer,
        rng,
        evaluate=lambda: evaluate(model, held_out, eval_styles),
        save_model=model.save,
        model_state=lambda: {"model": model.state_dict()},
    )
    run.resume(lambda state: model.load_state_dict(state["model"]))

    def step() -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        batch = sample_batch(photos, args.batch_size, args.train_size, model.encoder.downsampling, rng)
        if args.mode != "stylizer":  # pixels only when the encoder learns: else it would shape its own target
            total, pixel = reconstruction_loss(model, batch.content_low, feature_term=args.mode == "decoder")
            return {"total": total, "recon_pixel": pixel}, {"r": batch.r}
        losses = stylization_losses(model, batch, args.style_weight)
        if args.recon_weight > 0:
            recon, pixel = reconstruction_loss(model, batch.content_low)
            losses["total"] = losses["total"] + args.recon_weight * recon
            losses["recon_pixel"] = pixel
        return losses, {"r": batch.r}

    model.train()
    run.train(step)
    return 0


def train_lite(
    args: argparse.Namespace,
    photos: Sequence[np.ndarray],
    held_out: Sequence[np.ndarray],
    eval_styles: Sequence[np.ndarray],
    rng: np.random.Generator,
) -> int:
    """``--model lite``: the head and smoothing kernels on look-transfer batches; checkpoints hold only them."""
    config = LITE_CONFIGS[LITE_MODEL if args.config not in LITE_CONFIGS else args.config]
    model = LiteStylizer(replace(config, colour_alignment=args.colour_alignment))
    style_weight = LITE_STYLE_WEIGHT if args.style_weight is None else args.style_weight
    if args.init:
        model.load_learned_state(LiteStylizer.load(args.init).learned_state())
    optimizer = make_optimizer(model, args.lr or LITE_LR)
    batch_size = args.batch_size or LITE_BATCH
    run = TrainingRun(
        args,
        optimizer,
        rng,
        evaluate=lambda: evaluate_lite(model, held_out, eval_styles),
        save_model=model.save,
        model_state=lambda: {"learned": model.learned_state()},
    )
    run.resume(lambda state: model.load_learned_state(state["learned"]))

    def step() -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        contents, styles = sample_pairs(photos, batch_size, rng)
        batch = look_batch(contents, styles, rng, model.config.work_size)
        return look_losses(model, batch, style_weight, args.content_weight), {}

    run.train(step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
