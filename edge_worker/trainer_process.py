"""The edge's training copy in a child process that serving can freeze at any instant.

A training thread, even reniced to 19, slowed the worker's own inference: with the bundled model on
2 cores, 640x360 key frames took 290-480 ms instead of ~275 ms while a retraining step ran beside
them (p50 stylize latency 278 -> 484 ms in ``bench.federated``'s load; a shorter GIL switch interval
did not help). A process can be stopped outright: the worker sends SIGSTOP as a stylize request
arrives and SIGCONT once it has been idle again, so a training step never shares the CPU with
serving and resumes exactly where it stopped. Calls are plain request/response over a pipe.
"""

from __future__ import annotations

import importlib
import io
import logging
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

import torch

from edge_worker.model.base import Trainable, TrainingPair
from streaming.runtime import die_with_parent
from streaming.tensors import NamedArrays

log = logging.getLogger(__name__)

TRAINING_NICE = 19
"""CPU priority of the trainer process, for the moments it runs beside something else."""
JOIN_TIMEOUT_S = 10.0
_CLOSE = "close"


def _serve(conn: Connection, model_bytes: bytes, threads: int) -> None:
    """Child process: answer (method, args) calls on the model until told to close. ``threads``: torch intra-op
    threads; 0 keeps torch's default (as ``mvs worker --threads 0``)."""
    die_with_parent()
    os.nice(TRAINING_NICE)
    if threads > 0:
        torch.set_num_threads(threads)
    model = torch.load(io.BytesIO(model_bytes), weights_only=False)  # our own bytes, from the parent
    importlib.import_module("torch._dynamo")  # the first torch.optim optimizer imports it (seconds): done here
    while True:
        try:
            method, args = conn.recv()
        except EOFError:  # the parent is gone
            return
        if method == _CLOSE:
            return
        try:
            conn.send((True, getattr(model, method)(*args)))
        except Exception as exc:  # report, keep serving: the parent decides
            conn.send((False, f"{type(exc).__name__}: {exc}"))


class TrainerProcess:
    """A :class:`~edge_worker.model.base.Trainable` whose work runs in a child process (``pause``/``resume``).

    Calls block until the child answers, so make them off the event loop; a paused child answers after
    ``resume``. Thread-safe (one call at a time).
    """

    def __init__(self, model: Trainable, threads: int) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0 (0: torch's default), got {threads}")
        buffer = io.BytesIO()
        torch.save(model, buffer)
        context = multiprocessing.get_context("spawn")  # never fork a process that holds torch threads
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, buffer.getvalue(), threads), name="fl-trainer", daemon=True
        )
        self._process.start()
        child.close()
        self._lock = threading.Lock()
        self._paused = False

    def _call(self, method: str, *args: Any) -> Any:
        with self._lock:
            try:
                self._conn.send((method, args))
                ok, value = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise RuntimeError(f"the trainer process is gone (exit code {self._process.exitcode})") from exc
        if not ok:
            raise RuntimeError(f"trainer process: {value}")
        return value

    def train_step(self, pairs: list[TrainingPair]) -> float:
        """As :meth:`Trainable.train_step`, in the child."""
        return float(self._call("train_step", list(pairs)))

    def learned_state(self) -> NamedArrays:
        """As :meth:`Trainable.learned_state`, in the child."""
        state: NamedArrays = self._call("learned_state")
        return state

    def load_learned_state(self, state: NamedArrays) -> None:
        """As :meth:`Trainable.load_learned_state`, in the child."""
        self._call("load_learned_state", state)

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return self._process.pid

    @property
    def paused(self) -> bool:
        """Whether the child is stopped."""
        return self._paused

    def pause(self) -> None:
        """Freeze the child at once (SIGSTOP), mid-step if need be."""
        if not self._paused and self._process.pid is not None and self._process.is_alive():
            os.kill(self._process.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Let a frozen child go on (SIGCONT)."""
        if self._paused and self._process.pid is not None:
            os.kill(self._process.pid, signal.SIGCONT)
            self._paused = False

    def close(self) -> None:
        """Stop the child (after its current call)."""
        self.resume()
        try:
            with self._lock:
                self._conn.send((_CLOSE, ()))
        except (BrokenPipeError, OSError):
            pass
        self._process.join(JOIN_TIMEOUT_S)
        if self._process.is_alive():
            log.warning("trainer process did not stop: killing it")
            self._process.kill()
            self._process.join()
        self._conn.close()
