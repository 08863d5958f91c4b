"""Process entry: event loop (uvloop where available), clean shutdown on SIGINT/SIGTERM, children that die with us."""

from __future__ import annotations

import asyncio
import ctypes
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
PR_SET_PDEATHSIG = 1


def run_main(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion; SIGINT or SIGTERM cancel it so its ``finally`` blocks clean up."""

    async def guarded() -> T:
        task = asyncio.ensure_future(main)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        import uvloop
    except ImportError:  # uvloop is not available on every platform
        return asyncio.run(guarded())
    return uvloop.run(guarded())


# Looked up once, in the parent: a forked child of a threaded parent must not dlopen (the loader's lock may be held
# by a thread that does not exist in the child, and the child then hangs before exec).
_PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl if sys.platform == "linux" else None


def die_with_parent() -> None:
    """``preexec_fn`` for child processes: SIGTERM when the parent dies (Linux), so a crash leaves no orphan."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
