"""Build a stylizer from a name or a model file."""

from __future__ import annotations

from pathlib import Path

from edge_worker.model.base import Stylizer
from edge_worker.model.color_transfer import LinearColorTransfer

DEFAULT_STYLIZER = LinearColorTransfer.name
DNN_NAME = "dnn"
"""The bundled paper model (``edge_worker/model/weights``)."""
MODEL_SUFFIXES = (".pt", ".pth")


def load_stylizer(spec: str) -> Stylizer:
    """``color-transfer``, ``dnn`` (the bundled model of the paper) or the path of a saved PhotoStylizer."""
    if spec == LinearColorTransfer.name:
        return LinearColorTransfer()
    if spec == DNN_NAME or spec.endswith(MODEL_SUFFIXES):
        from edge_worker.model.stylizer import DEFAULT_MODEL_PATH, PhotoStylizer
        from edge_worker.retrain import RetrainableStylizer

        path = DEFAULT_MODEL_PATH if spec == DNN_NAME else Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        return RetrainableStylizer(PhotoStylizer.load(path))
    raise ValueError(f"unknown stylizer {spec!r}: use {LinearColorTransfer.name!r}, {DNN_NAME!r} or a model file")
