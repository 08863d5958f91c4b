"""How the DNN is served on a device: its working size and arithmetic, ``auto`` chosen by the device.

``auto`` picks the settings measured to hold the live rate (README, "Edge inference"): on the CPU, work size
192 with the int8 network (``bench.live``: 60/60 keys, 30 fps at K=5; the settings ``make demo`` names); on CUDA,
the model's own size under fp16 autocast. A worker that retrains (federated learning) needs the fp32 network at
its own size, so there ``auto`` keeps both. The one owner of these choices: the worker resolves its flags here,
and ``mvs demo`` / ``mvs local`` resolve them too before anything starts, so a bad combination is one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edge_worker.model.device import CUDA
from edge_worker.model.int8 import FP32, INT8, PRECISIONS

AUTO = "auto"
PRECISION_CHOICES = (AUTO, *PRECISIONS)
CPU_LIVE_WORK_SIZE = 192
"""Work size ``auto`` picks on the CPU (bench.cpu_path's choice, served live by bench.live)."""
CPU_LIVE_PRECISION = INT8
"""Precision ``auto`` picks on the CPU (bench.int8's network)."""
MIN_WORK_SIZE = 32
"""Smallest working size (the network downsamples 8x to relu4_1)."""
MAX_WORK_SIZE = 4096
"""Largest working size: no frame the system accepts has a longer side (streaming.protocol.MAX_FRAME_SIDE)."""


def parse_work_size(text: str) -> int | str:
    """``auto``, ``0`` (the model file's own) or a short side in [MIN_WORK_SIZE, MAX_WORK_SIZE] pixels."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        size = int(text)
    except ValueError:
        raise ValueError(f"work size must be {AUTO}, 0 or a number of pixels, not {text!r}") from None
    if size != 0 and not MIN_WORK_SIZE <= size <= MAX_WORK_SIZE:
        raise ValueError(f"work size must be {AUTO}, 0 or {MIN_WORK_SIZE}..{MAX_WORK_SIZE} pixels, not {size}")
    return size


@dataclass(frozen=True)
class ServingSettings:
    """The DNN's serving settings once resolved."""

    device: torch.device
    work_size: int
    """Short side the network runs at; 0: the model file's own."""
    precision: str
    """``fp32`` (under fp16 autocast on CUDA) or ``int8`` (CPU only)."""
    auto: bool
    """Whether ``auto`` chose any of them."""

    def describe(self) -> str:
        """One line for a person: ``device cpu, work size 192, int8 (auto: ...)``."""
        size = f"work size {self.work_size}" if self.work_size else "the model's own work size"
        arithmetic = "fp16 autocast" if self.device.type == CUDA and self.precision == FP32 else self.precision
        why = " (auto: the settings that hold the live rate on this device)" if self.auto else ""
        return f"device {self.device}, {size}, {arithmetic}{why}"


def resolve_serving(
    device: torch.device, work_size: int | str, precision: str, trainable: bool, int8: bool = True
) -> ServingSettings:
    """The settings for ``device``; ``trainable``: the worker retrains (federated learning: fp32 at its own size);
    ``int8``: the model has an int8 network (the paper DNN; the lite models serve in fp32 at their own size, so
    there ``auto`` picks those).

    Raises ``ValueError`` for ``int8`` on CUDA, with retraining, and for a model without an int8 network."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, not {precision!r}")
    if precision == INT8 and not int8:
        raise ValueError(f"--precision {INT8} is the paper DNN's: this model serves in {FP32} (fp16 on CUDA)")
    if precision == INT8 and device.type == CUDA:
        raise ValueError(f"--precision {INT8} runs on the CPU only, not on {device}: use --precision {AUTO} (fp16)")
    if precision == INT8 and trainable:
        raise ValueError(f"--precision {INT8} serves only: federated learning retrains the fp32 network")
    on_cpu = device.type != CUDA and not trainable and int8
    chosen_size = (CPU_LIVE_WORK_SIZE if on_cpu else 0) if work_size == AUTO else int(work_size)
    chosen_precision = (CPU_LIVE_PRECISION if on_cpu else FP32) if precision == AUTO else precision
    return ServingSettings(device, chosen_size, chosen_precision, auto=AUTO in (work_size, precision))
