"""Build a stylizer from a name or a model file."""

from __future__ import annotations

from pathlib import Path

from edge_worker.model.base import Stylizer
from edge_worker.model.color_transfer import LinearColorTransfer
from edge_worker.model.emulated import EmulatedAccelerator, ServiceTimeProfile

DEFAULT_STYLIZER = LinearColorTransfer.name
DNN_NAME = "dnn"
"""The bundled paper model (``edge_worker/model/weights``)."""
EMULATED_NAME = EmulatedAccelerator.name
"""A stand-in for a GPU model (sleeps a service time): for scaling experiments only."""
MODEL_SUFFIXES = (".pt", ".pth")
STYLIZER_NAMES = (LinearColorTransfer.name, DNN_NAME, EMULATED_NAME)


def load_stylizer(
    spec: str, device: str = "cpu", work_size: int = 0, profile: ServiceTimeProfile | None = None
) -> Stylizer:
    """``color-transfer``, ``dnn`` (the bundled model of the paper), ``emulated`` (a GPU stand-in) or the path of
    a saved PhotoStylizer. ``device`` and ``work_size`` (0: the model's own) apply to the DNN, ``profile`` to the
    emulated accelerator."""
    if spec == LinearColorTransfer.name:
        return LinearColorTransfer()
    if spec == EMULATED_NAME:
        return EmulatedAccelerator(profile or ServiceTimeProfile())
    if spec == DNN_NAME or spec.endswith(MODEL_SUFFIXES):
        from edge_worker.model.stylizer import DEFAULT_MODEL_PATH, PhotoStylizer
        from edge_worker.retrain import RetrainableStylizer

        path = DEFAULT_MODEL_PATH if spec == DNN_NAME else Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        model = PhotoStylizer.load(path, device=device)
        if work_size > 0 and work_size != model.config.work_size:
            model = model.with_config(work_size=work_size)
        return RetrainableStylizer(model)
    names = ", ".join(repr(name) for name in STYLIZER_NAMES)
    raise ValueError(f"unknown stylizer {spec!r}: use one of {names} or a model file ({', '.join(MODEL_SUFFIXES)})")
