"""Build the stylizer a worker serves from a name or a model file: the model (``edge_worker.model``) wrapped in its
retraining (``edge_worker.retrain``, ``edge_worker.lite_training``) where it has one. Above the model package, which
never imports training code."""

from __future__ import annotations

from pathlib import Path

from edge_worker.model.base import Stylizer
from edge_worker.model.color_transfer import LinearColorTransfer
from edge_worker.model.emulated import EmulatedAccelerator, ServiceTimeProfile
from edge_worker.model.int8 import FP32, INT8, PRECISIONS
from edge_worker.model.registry import (
    DNN_NAME,
    EMULATED_NAME,
    LITE_LOOK_NAME,
    LITE_NAME,
    MODEL_SUFFIXES,
    STYLIZER_NAMES,
    is_dnn,
    is_lite,
)


def load_stylizer(
    spec: str,
    device: str = "cpu",
    work_size: int = 0,
    profile: ServiceTimeProfile | None = None,
    precision: str = FP32,
) -> Stylizer:
    """``color-transfer``, ``dnn`` (the bundled model of the paper), ``lite`` / ``lite-look`` (the bundled lite
    models), ``emulated``
    (a GPU stand-in) or the path of a saved PhotoStylizer or LiteStylizer. ``device``, ``work_size`` (0: the model's
    own) and ``precision`` apply to the DNN and the lite model, ``profile`` to the emulated accelerator.

    ``precision="int8"``: the DNN's convolutions in int8 on the CPU (calibrated at load, a few seconds), served
    without retraining (federated learning needs fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if spec == LinearColorTransfer.name:
        return LinearColorTransfer()
    if spec == EMULATED_NAME:
        return EmulatedAccelerator(profile or ServiceTimeProfile())
    if is_lite(spec):
        from edge_worker.lite_training import RetrainableLite
        from edge_worker.model.lite import DEFAULT_LITE_PATH, LITE_LOOK_PATH

        bundled = {LITE_NAME: DEFAULT_LITE_PATH, LITE_LOOK_NAME: LITE_LOOK_PATH}
        lite = RetrainableLite.load(bundled.get(spec, Path(spec)), device=device)
        if work_size > 0 and work_size != lite.config.work_size:
            lite = lite.with_config(work_size=work_size)
        if precision == INT8:
            raise ValueError(f"precision {INT8} is the paper DNN's; the lite model serves in fp32 (fp16 on CUDA)")
        return lite
    if is_dnn(spec):
        from edge_worker.model.stylizer import DEFAULT_MODEL_PATH, PhotoStylizer
        from edge_worker.retrain import RetrainableStylizer
        from edge_worker.training import calibration_pairs

        path = DEFAULT_MODEL_PATH if spec == DNN_NAME else Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        model = PhotoStylizer.load(path, device=device)
        if work_size > 0 and work_size != model.config.work_size:
            model = model.with_config(work_size=work_size)
        if precision == INT8:
            if model.device.type != "cpu":
                raise ValueError(f"precision {INT8} runs on the CPU only, not on {model.device}: use --device cpu")
            return model.quantized(calibration_pairs())
        return RetrainableStylizer(model)
    names = ", ".join(repr(name) for name in STYLIZER_NAMES)
    raise ValueError(f"unknown stylizer {spec!r}: use one of {names} or a model file ({', '.join(MODEL_SUFFIXES)})")
