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


def die_with_parent() -> None:
    """``preexec_fn`` for child processes: SIGTERM when the parent dies (Linux), so a crash leaves no orphan."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
