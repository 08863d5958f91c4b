"""Device selection (``auto``, ``cpu``, ``cuda[:N]``) and the DNN served on a device: flags, layout, style state."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from torch import nn

from edge_worker.model.device import device_name, resolve_device
from edge_worker.model.stylizer import DEFAULT_MODEL_PATH, PhotoStylizer

CUDA = torch.cuda.is_available()
Photos = tuple[np.ndarray, np.ndarray]
OUT_SIZE = (320, 180)
CHANNELS_LAST_MAX_LEVELS = 2
"""channels-last convolutions sum in another order: the frame may move by a level or two, no more."""
CUDA_FP16_MIN_PSNR_DB = 30.0


@pytest.fixture(scope="module")
def bundled() -> PhotoStylizer:
    return PhotoStylizer.load(DEFAULT_MODEL_PATH, device="cpu").with_config(work_size=64)


@pytest.fixture(scope="module")
def photos() -> Photos:
    return skimage.data.chelsea(), skimage.data.coffee()


@pytest.mark.parametrize("spec", ["cpu", "CPU", " cpu "])
def test_cpu(spec: str) -> None:
    assert resolve_device(spec) == torch.device("cpu")


def test_auto_is_cuda_when_there_is_one() -> None:
    assert resolve_device("auto") == (torch.device("cuda", 0) if CUDA else torch.device("cpu"))


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_is_a_clear_error(spec: str) -> None:
    with pytest.raises(RuntimeError, match=r"torch.cuda.is_available\(\) is False; use --device cpu"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "cuda:", "", "cpu:0", "mps"])
def test_unknown_spec(spec: str) -> None:
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device(spec)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_index_past_the_last_device() -> None:
    with pytest.raises(RuntimeError, match="requested but this machine has"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_device_name_is_not_empty() -> None:
    assert device_name(torch.device("cpu"))


@pytest.mark.slow
def test_load_on_auto_serves_where_auto_points() -> None:
    model = PhotoStylizer.load(DEFAULT_MODEL_PATH, device="auto")
    assert model.device.type == resolve_device("auto").type and not model.training
    assert model.channels_last == CUDA and model.half_precision


def test_cpu_serving_keeps_nchw_and_the_style_on_the_model(bundled: PhotoStylizer, photos: Photos) -> None:
    assert not bundled.channels_last
    assert all(p.is_contiguous() for p in bundled.parameters())
    state = bundled.prepare_style(photos[1])
    assert state.features.mean.device == bundled.device == state.colours.cov.device


@pytest.mark.slow
def test_channels_last_on_the_cpu_is_an_option_that_can_be_undone(bundled: PhotoStylizer, photos: Photos) -> None:
    content, style = photos
    model = bundled.with_config()
    state = model.prepare_style(style)
    nchw = model.stylize(content, state, OUT_SIZE)
    model.to_device("cpu", channels_last=True)
    conv = model.encoder.features[0]
    assert isinstance(conv, nn.Conv2d)
    assert model.channels_last and conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.with_config().channels_last  # copies keep how the model is served
    nhwc = model.stylize(content, model.prepare_style(style), OUT_SIZE)
    assert np.abs(nhwc.astype(int) - nchw).max() <= CHANNELS_LAST_MAX_LEVELS
    model.to_device("cpu")
    assert not model.channels_last and conv.weight.is_contiguous()
    np.testing.assert_array_equal(model.stylize(content, model.prepare_style(style), OUT_SIZE), nchw)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_serving_path(bundled: PhotoStylizer, photos: Photos) -> None:
    from edge_worker.quality import psnr

    content, style = photos
    expected = bundled.stylize(content, bundled.prepare_style(style), OUT_SIZE)
    model = bundled.with_config().to_device("cuda")
    assert model.half_precision and model.channels_last
    state = model.prepare_style(style)
    assert state.features.cov.is_cuda  # the prepared style is cached on the device
    assert psnr(expected, model.stylize(content, state, OUT_SIZE)) > CUDA_FP16_MIN_PSNR_DB
