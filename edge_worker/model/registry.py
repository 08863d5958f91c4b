"""Build a stylizer from a name or a model file."""

from __future__ import annotations

from edge_worker.model.base import Stylizer
from edge_worker.model.color_transfer import LinearColorTransfer

DEFAULT_STYLIZER = LinearColorTransfer.name
STYLIZERS = {LinearColorTransfer.name: LinearColorTransfer}


def load_stylizer(spec: str) -> Stylizer:
    """The stylizer named ``spec`` (see :data:`STYLIZERS`)."""
    factory = STYLIZERS.get(spec)
    if factory is None:
        raise ValueError(f"unknown stylizer {spec!r}; available: {', '.join(sorted(STYLIZERS))}")
    return factory()
