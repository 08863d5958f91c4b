"""The stylizers' names, and which kind of model a name or model file is.

Building one is :func:`edge_worker.stylizers.load_stylizer`'s: it wraps a model in its retraining (training code,
above this package)."""

from __future__ import annotations

from pathlib import Path

from edge_worker.model.color_transfer import LinearColorTransfer
from edge_worker.model.emulated import EmulatedAccelerator

DEFAULT_STYLIZER = LinearColorTransfer.name
DNN_NAME = "dnn"
"""The bundled paper model (``edge_worker/model/weights``)."""
LITE_NAME = "lite"
"""The bundled lite model: frozen ImageNet EfficientNet-Lite0 + a learned head predicting the colour maps."""
LITE_LOOK_NAME = "lite-look"
"""The lite architecture trained on colour looks alone, without colour alignment: it transfers a look, not the
style's colour statistics (weights README)."""
EMULATED_NAME = EmulatedAccelerator.name
"""A stand-in for a GPU model (sleeps a service time): for scaling experiments only."""
MODEL_SUFFIXES = (".pt", ".pth")
STYLIZER_NAMES = (LinearColorTransfer.name, DNN_NAME, LITE_NAME, LITE_LOOK_NAME, EMULATED_NAME)


def is_dnn(spec: str) -> bool:
    """Whether ``spec`` names the paper's network (the bundled one or a model file that is not a lite model)."""
    return spec == DNN_NAME or (spec.endswith(MODEL_SUFFIXES) and not is_lite_file(Path(spec)))


def is_lite(spec: str) -> bool:
    """Whether ``spec`` names a lite model (a bundled one or a saved LiteStylizer)."""
    return spec in (LITE_NAME, LITE_LOOK_NAME) or (spec.endswith(MODEL_SUFFIXES) and is_lite_file(Path(spec)))


def is_lite_file(path: Path) -> bool:
    """Whether ``path`` is a saved LiteStylizer (False for a missing file: the DNN's loader reports that)."""
    if not path.is_file():
        return False
    import torch

    from edge_worker.model.lite import MODEL_FORMAT

    payload = torch.load(path, map_location="cpu", weights_only=True)
    return isinstance(payload, dict) and payload.get("format") == MODEL_FORMAT
