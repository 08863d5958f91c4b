"""Aggregation rules over edge updates: pure functions of named tensors (no NATS, no asyncio).

Each strategy turns the deltas of one round into the delta applied to the global model. FedAvg
is the paper's cloud update (Algorithm 2, as a sample-weighted average; McMahan et al. 2017);
the coordinate-wise median and trimmed mean (Yin et al., ICML 2018) resist a few bad edges.
:class:`ServerLearningRate` scales any of them by a server learning rate (Reddi et al., ICLR 2021).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from streaming.tensors import NamedArrays

DEFAULT_TRIM_FRACTION = 0.2
DEFAULT_SERVER_LR = 1.0
"""Server learning rate of the paper's plain average."""


@dataclass(frozen=True)
class Update:
    """One edge's contribution to a round: its delta against the round's base version."""

    worker_id: str
    base_version: int
    samples: int
    delta: NamedArrays
    loss: float = float("nan")


class Strategy(Protocol):
    """Combines a round's updates into one delta."""

    name: str

    def aggregate(self, updates: Sequence[Update]) -> NamedArrays:
        """The delta to add to the global weights."""
        ...


def _stacked(updates: Sequence[Update], name: str) -> np.ndarray:
    """All updates' values of one tensor, stacked on a new first axis, in float64."""
    return np.stack([u.delta[name].astype(np.float64) for u in updates])


def _check(updates: Sequence[Update]) -> list[str]:
    if not updates:
        raise ValueError("no updates to aggregate")
    names = sorted(updates[0].delta)
    for u in updates[1:]:
        if sorted(u.delta) != names:
            raise ValueError(f"update from {u.worker_id} has different tensors")
    return names


def _cast_like(values: NamedArrays, updates: Sequence[Update]) -> NamedArrays:
    return {name: value.astype(updates[0].delta[name].dtype) for name, value in values.items()}


class FedAvg:
    """Sample-weighted mean of the deltas."""

    name = "fedavg"

    def aggregate(self, updates: Sequence[Update]) -> NamedArrays:
        """sum_i n_i * delta_i / sum_i n_i."""
        names = _check(updates)
        weights = np.array([u.samples for u in updates], dtype=np.float64)
        if (weights <= 0).any():
            raise ValueError("every update needs a positive sample count")
        weights /= weights.sum()
        out = {}
        for name in names:
            stacked = _stacked(updates, name)
            out[name] = np.tensordot(weights, stacked, axes=1)
        return _cast_like(out, updates)


class CoordinateMedian:
    """Per-coordinate median of the deltas (unweighted)."""

    name = "median"

    def aggregate(self, updates: Sequence[Update]) -> NamedArrays:
        """median_i delta_i, coordinate by coordinate."""
        names = _check(updates)
        return _cast_like({name: np.median(_stacked(updates, name), axis=0) for name in names}, updates)


class TrimmedMean:
    """Per-coordinate mean after dropping the ``trim`` largest and smallest values."""

    name = "trimmed-mean"

    def __init__(self, trim_fraction: float = DEFAULT_TRIM_FRACTION) -> None:
        if not 0 <= trim_fraction < 0.5:
            raise ValueError(f"trim fraction must be in [0, 0.5), got {trim_fraction}")
        self.trim_fraction = trim_fraction

    def aggregate(self, updates: Sequence[Update]) -> NamedArrays:
        """Mean of the middle values of each coordinate; ``floor(trim_fraction * n)`` cut at each end."""
        names = _check(updates)
        cut = int(self.trim_fraction * len(updates))
        out = {}
        for name in names:
            ordered = np.sort(_stacked(updates, name), axis=0)
            out[name] = ordered[cut : len(updates) - cut].mean(axis=0)
        return _cast_like(out, updates)


class ServerLearningRate:
    """Another strategy's delta times a server learning rate η.

    Server SGD of "Adaptive Federated Optimization" (Reddi et al., ICLR 2021), i.e. FedAvgM (Hsu et al.
    2019) without momentum; η = 1 is the wrapped strategy itself. Stateless, so a round closed again
    after a crash gives the same version.
    """

    def __init__(self, inner: Strategy, server_lr: float) -> None:
        if not server_lr > 0:
            raise ValueError(f"server learning rate must be positive, got {server_lr}")
        self.inner, self.server_lr = inner, server_lr
        self.name = f"{inner.name}@server-lr-{server_lr:g}"

    def aggregate(self, updates: Sequence[Update]) -> NamedArrays:
        """η · inner(updates)."""
        out = self.inner.aggregate(updates)
        return _cast_like({name: self.server_lr * value.astype(np.float64) for name, value in out.items()}, updates)


STRATEGIES: dict[str, type[FedAvg] | type[CoordinateMedian] | type[TrimmedMean]] = {
    cls.name: cls for cls in (FedAvg, CoordinateMedian, TrimmedMean)
}


def make_strategy(name: str, server_lr: float = DEFAULT_SERVER_LR) -> Strategy:
    """A strategy by name (see :data:`STRATEGIES`), scaled by ``server_lr`` unless it is 1."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    strategy = STRATEGIES[name]()
    return strategy if server_lr == DEFAULT_SERVER_LR else ServerLearningRate(strategy, server_lr)


def apply_delta(weights: NamedArrays, delta: NamedArrays) -> NamedArrays:
    """weights + delta, computed in float32 or wider and kept in each weight's dtype."""
    return {
        name: (value.astype(np.float64) + delta[name].astype(np.float64)).astype(value.dtype)
        for name, value in weights.items()
    }
