"""The int8 CPU path: the bundled model quantized stays close to fp32, is inference-only, and
``mvs worker --precision int8`` serves it."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from torch.ao.nn import quantized as qnn

from edge_worker.__main__ import build_parser, config_from_args
from edge_worker.model.int8 import INT8
from edge_worker.model.stylizer import DEFAULT_MODEL_PATH, PhotoStylizer
from edge_worker.quality import psnr
from edge_worker.service import StylizerWorker
from edge_worker.stylizers import load_stylizer
from edge_worker.training import calibration_pairs

WORK_SIZE = 64
OUT_SIZE = (320, 180)
MIN_PSNR_DB = 35.0
"""int8 vs fp32 frames: bench.int8's acceptance floor for the worst pair (measured here: 52 dB)."""
MAX_MEAN_MAP_ERROR = 0.03
"""Mean absolute difference of the affine coefficients (gains ~1, offsets in [0, 1] units; measured 0.009, max
0.04: gain and offset errors partly cancel in the frame)."""


@pytest.fixture(scope="module")
def fp32() -> PhotoStylizer:
    return PhotoStylizer.load(DEFAULT_MODEL_PATH).with_config(work_size=WORK_SIZE)


@pytest.fixture(scope="module")
def int8(fp32: PhotoStylizer) -> PhotoStylizer:
    return fp32.quantized(calibration_pairs())


def test_convolutions_are_int8_and_pooling_float(int8: PhotoStylizer, fp32: PhotoStylizer) -> None:
    assert int8.precision == INT8 and fp32.precision == "fp32"
    kinds = {type(m).__name__ for m in int8.modules()}
    assert {"ConvReLU2d", "Conv2d", "MaxPool2d", "MaxUnpool2d"} <= kinds
    convs = [m for m in int8.encoder.modules() if isinstance(m, qnn.Conv2d)]
    convs += [m for m in int8.decoder.modules() if isinstance(m, qnn.Conv2d)]
    assert len(convs) == sum(1 for m in fp32.encoder.features if type(m).__name__ == "Conv2d") + sum(
        1 for b in fp32.decoder.blocks for m in b if type(m).__name__ == "Conv2d"
    )


@pytest.mark.slow
def test_int8_maps_and_frames_are_close_to_fp32(fp32: PhotoStylizer, int8: PhotoStylizer) -> None:
    content, style = skimage.data.coffee(), skimage.data.astronaut()  # held out of the calibration photos
    maps = [m.coefficients(content, m.prepare_style(style), OUT_SIZE) for m in (fp32, int8)]
    assert maps[0].shape == maps[1].shape
    assert float(np.abs(maps[0] - maps[1]).mean()) <= MAX_MEAN_MAP_ERROR
    frames = [m.stylize(content, m.prepare_style(style), OUT_SIZE) for m in (fp32, int8)]
    assert psnr(frames[0], frames[1]) >= MIN_PSNR_DB


def test_int8_is_inference_only(int8: PhotoStylizer) -> None:
    with pytest.raises(ValueError, match="int8"):
        int8.save("/nonexistent/model.pt")
    with pytest.raises(ValueError, match="int8"):
        int8.with_config(work_size=32)
    with pytest.raises(ValueError, match="int8"):
        int8.quantized([])


@pytest.mark.slow
def test_precision_flag_reaches_the_worker() -> None:
    args = build_parser().parse_args(["--model", "dnn", "--work-size", str(WORK_SIZE), "--precision", INT8])
    worker = StylizerWorker(config_from_args(args))
    assert isinstance(worker.stylizer, PhotoStylizer)
    assert worker.stylizer.precision == INT8 and worker.stylizer.config.work_size == WORK_SIZE
    assert config_from_args(build_parser().parse_args([])).precision == "auto"  # int8 on the CPU (test_model_serving)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--precision", "int4"])


def test_load_stylizer_checks_the_precision() -> None:
    with pytest.raises(ValueError, match="precision"):
        load_stylizer("dnn", precision="fp64")
