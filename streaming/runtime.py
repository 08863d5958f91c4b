"""Process entry: event loop (uvloop where available), clean shutdown on SIGINT/SIGTERM, children that die with us."""

from __future__ import annotations

import asyncio
import ctypes
import shutil
import signal
import sys
from collections.abc import Coroutine, Sequence
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
    """Make this process get SIGTERM when its parent dies (Linux); for a child started by ``multiprocessing``."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def dying_with_parent(cmd: Sequence[str]) -> list[str]:
    """``cmd`` run so that it gets SIGTERM when the process starting it dies, so a crash leaves no orphan: under
    util-linux's ``setpriv --pdeathsig`` where there is one (Linux), else as it is.

    Not a ``preexec_fn``: with one, CPython runs Python code in the forked child, which first frees the other
    threads' thread-local objects; an aiortc codec's frees wait on a condition variable of a thread that does not
    exist in the child, and the child hung before exec (seen in the test suite, once the loop had codec threads).
    """
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else list(cmd)
