"""Checks an edge update must pass before it may join a round; a failed check names its reason."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggregator.strategies import Update
from streaming.tensors import NamedArrays

DELTA_DTYPES = frozenset({"float16", "float32"})
DEFAULT_MAX_STALENESS = 1
DEFAULT_MAX_NORM = 1e3


class Reason:
    """Why an update was rejected (the label of the rejection metric)."""

    NON_FINITE = "non_finite"
    KEYS = "keys"
    SHAPE = "shape"
    DTYPE = "dtype"
    STALE = "stale"
    FUTURE = "future_base"
    NORM = "norm"
    DUPLICATE = "duplicate"
    SAMPLES = "samples"
    UNREADABLE = "unreadable"


class RejectedUpdate(ValueError):
    """An update that must not be applied; ``reason`` is one of :class:`Reason`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Rules:
    """Limits on updates."""

    max_staleness: int = DEFAULT_MAX_STALENESS
    """How many versions behind the current one an update's base may be."""
    max_norm: float = DEFAULT_MAX_NORM
    """Largest L2 norm of a whole delta."""


def validate_update(
    update: Update, reference: NamedArrays, current_version: int, seen: set[tuple[str, int]], rules: Rules
) -> None:
    """Raise :class:`RejectedUpdate` unless ``update`` may join the round on ``current_version``."""
    if (update.worker_id, update.base_version) in seen:
        raise RejectedUpdate(Reason.DUPLICATE, f"{update.worker_id} already sent a delta on v{update.base_version}")
    if update.base_version > current_version:
        raise RejectedUpdate(Reason.FUTURE, f"base v{update.base_version} is newer than v{current_version}")
    if current_version - update.base_version > rules.max_staleness:
        raise RejectedUpdate(
            Reason.STALE, f"base v{update.base_version} is more than {rules.max_staleness} behind v{current_version}"
        )
    if update.samples <= 0:
        raise RejectedUpdate(Reason.SAMPLES, f"sample count {update.samples} must be positive")
    if set(update.delta) != set(reference):
        missing, extra = sorted(set(reference) - set(update.delta)), sorted(set(update.delta) - set(reference))
        raise RejectedUpdate(Reason.KEYS, f"tensor names differ: missing {missing[:5]}, unexpected {extra[:5]}")
    squared = 0.0
    for name, value in update.delta.items():
        if value.shape != reference[name].shape:
            raise RejectedUpdate(Reason.SHAPE, f"{name}: shape {value.shape} != {reference[name].shape}")
        if value.dtype.name not in DELTA_DTYPES:
            raise RejectedUpdate(Reason.DTYPE, f"{name}: dtype {value.dtype} not in {sorted(DELTA_DTYPES)}")
        wide = value.astype(np.float64)
        if not np.isfinite(wide).all():
            raise RejectedUpdate(Reason.NON_FINITE, f"{name}: NaN or Inf")
        squared += float(np.square(wide).sum())
    norm = squared**0.5
    if norm > rules.max_norm:
        raise RejectedUpdate(Reason.NORM, f"delta norm {norm:.4g} exceeds {rules.max_norm:.4g}")
