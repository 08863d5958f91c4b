"""Training (Eq. 5): the loss goes down, the CLI works, --seed/--resume are deterministic."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge_worker import train, training
from edge_worker.model.stylizer import CONFIGS, PhotoStylizer

TINY_TRAIN_SIZE = 32
TEST_LR = 1e-3
STEPS = 15


def _tiny_args(out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--config",
        "tiny",
        "--train-size",
        str(TINY_TRAIN_SIZE),
        "--steps",
        str(steps),
        "--out",
        str(out),
        "--log-every",
        "1",
        "--checkpoint-every",
        "2",
        "--seed",
        "7",
        *extra,
    ]


@pytest.mark.slow
def test_a_few_steps_lower_the_loss_on_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = PhotoStylizer(CONFIGS["tiny"]).train()
    photos = [training.bundled_photo(name) for name in ("astronaut.png", "ihc.png")]
    batch = training.sample_batch(photos, 2, TINY_TRAIN_SIZE, model.encoder.downsampling, np.random.default_rng(0))
    optimizer = torch.optim.Adam(model.learned_parameters(), lr=TEST_LR, betas=training.ADAM_BETAS)

    def loss() -> torch.Tensor:
        recon, _ = training.reconstruction_loss(model, batch.content_low)
        return training.stylization_losses(model, batch, training.DEFAULT_STYLE_WEIGHT)["total"] + recon

    first = loss().item()
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.8 * first


def test_batches_draw_r_and_sizes_consistently() -> None:
    rng = np.random.default_rng(1)
    photos = [training.bundled_photo("astronaut.png")]
    rs = set()
    for _ in range(5):
        batch = training.sample_batch(photos, 2, TINY_TRAIN_SIZE, 8, rng)
        assert batch.content_low.shape == batch.style_low.shape == (2, 3, TINY_TRAIN_SIZE, TINY_TRAIN_SIZE)
        assert batch.content_full.shape == batch.style_full.shape
        assert batch.content_full.shape[-1] == round(TINY_TRAIN_SIZE * batch.r)
        assert training.R_RANGE[0] - 0.2 <= batch.r <= training.R_RANGE[1] + 0.2
        rs.add(batch.r)
    assert len(rs) > 1


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    assert "--resume" in capsys.readouterr().out


@pytest.mark.slow
def test_resume_continues_bit_exactly_and_logs(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train.main(_tiny_args(straight, 4)) == 0
    assert train.main(_tiny_args(resumed, 2)) == 0
    assert train.main(_tiny_args(resumed, 4, "--resume")) == 0
    a, b = PhotoStylizer.load(straight / train.MODEL_FILE), PhotoStylizer.load(resumed / train.MODEL_FILE)
    for (key, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), key
    log = (straight / train.LOSS_LOG_FILE).read_text()
    assert '"eval_recon_psnr"' in log and '"style"' in log


@pytest.mark.slow
def test_trains_on_a_folder_of_images(tmp_path: Path) -> None:
    data = tmp_path / "images"
    (data / "sub").mkdir(parents=True)
    for i, name in enumerate(("astronaut.png", "ihc.png")):
        cv2.imwrite(str(data / "sub" / f"{i}.jpg"), cv2.cvtColor(training.bundled_photo(name), cv2.COLOR_RGB2BGR))
    assert len(training.load_folder(data)) == 2
    assert train.main(_tiny_args(tmp_path / "run", 2, "--data", str(data))) == 0
    assert (tmp_path / "run" / train.MODEL_FILE).is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "trained"),
    [("decoder", {"decoder"}), ("autoencoder", {"encoder", "decoder"}), ("stylizer", {"colorization", "decoder"})],
)
def test_each_mode_trains_only_its_modules(tmp_path: Path, mode: str, trained: set[str]) -> None:
    assert train.main(_tiny_args(tmp_path, 2, "--mode", mode, "--lr", str(TEST_LR))) == 0
    torch.manual_seed(7)  # the run's --seed: the same initial weights
    before = PhotoStylizer.from_config("tiny")
    after = PhotoStylizer.load(tmp_path / train.MODEL_FILE)
    changed = {
        name
        for name in ("encoder", "colorization", "decoder")
        if any(
            not torch.equal(x, y)
            for x, y in zip(getattr(before, name).parameters(), getattr(after, name).parameters(), strict=True)
        )
    }
    assert changed == trained
