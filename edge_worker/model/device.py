"""Where a model runs: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, resolved once to a :class:`torch.device`.

The one owner of device specs: the worker's ``--device`` and ``bench.gpu --device`` both go through
:func:`resolve_device`, so a typo or a missing GPU fails at start-up with one clear message instead of
deep inside the first key frame.
"""

from __future__ import annotations

import platform
import re

import torch

AUTO = "auto"
CPU = "cpu"
CUDA = "cuda"
DEVICE_SPECS = (AUTO, CPU, CUDA, f"{CUDA}:N")
"""What :func:`resolve_device` accepts (``N`` a CUDA device index)."""
DEFAULT_DEVICE = AUTO
"""CUDA when ``torch.cuda.is_available()``, else the CPU."""
CPUINFO = "/proc/cpuinfo"
CUDA_SPEC = re.compile(rf"{CUDA}(?::(\d+))?")


def resolve_device(spec: str) -> torch.device:
    """The device ``spec`` names; ``auto`` is the first CUDA device when there is one, else the CPU.

    Raises ``ValueError`` for a spec that is none of :data:`DEVICE_SPECS`, and ``RuntimeError`` for a CUDA device
    this machine does not have.
    """
    spec = spec.strip().lower()
    if spec == AUTO:
        return torch.device(CUDA, 0) if torch.cuda.is_available() else torch.device(CPU)
    if spec == CPU:
        return torch.device(CPU)
    match = CUDA_SPEC.fullmatch(spec)
    if match is None:
        raise ValueError(f"unknown device {spec!r}: use one of {', '.join(DEVICE_SPECS)}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"CUDA requested ({spec!r}) but torch.cuda.is_available() is False; use --device cpu")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise RuntimeError(f"CUDA device {index} requested but this machine has {count} (cuda:0..cuda:{count - 1})")
    return torch.device(CUDA, index)


def device_name(device: torch.device) -> str:
    """A human-readable name: the GPU's model, or the CPU's (``/proc/cpuinfo`` where there is one)."""
    if device.type == CUDA:
        return torch.cuda.get_device_name(device)
    try:
        with open(CPUINFO) as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or CPU


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (no-op on the CPU, where every call is synchronous)."""
    if device.type == CUDA:
        torch.cuda.synchronize(device)


def serve_on(device: torch.device, threads: int = 0) -> None:
    """torch's process-wide settings for serving on ``device``: ``threads`` intra-op threads (0 keeps torch's
    default) and, on CUDA, cuDNN autotuning (frames of one size: it picks its fastest kernels once)."""
    if threads > 0:
        torch.set_num_threads(threads)
    if device.type == CUDA:
        torch.backends.cudnn.benchmark = True
