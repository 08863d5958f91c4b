"""Several stylizer workers in one process, for the scaling bench (``python -m bench.worker_host``).

Each :class:`~edge_worker.service.StylizerWorker` keeps its own NATS connection and its own inference thread and
joins the region's queue group on its own, exactly as a worker process does; only the process (interpreter,
event loop, imports) is shared. That lets 32 emulated workers (``--model emulated``, which sleeps its service time
off the GIL) run on a small machine without 32 copies of torch. Flags: ``--count``, ``--id-prefix``, and every
``mvs worker`` flag (the same for all the workers; ``--worker-id`` is ignored). Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence

from edge_worker.__main__ import build_parser as worker_parser
from edge_worker.__main__ import config_from_args
from edge_worker.service import StylizerWorker, WorkerConfig
from streaming.runtime import run_main
from streaming.telemetry import setup_logging


def worker_ids(prefix: str, count: int) -> list[str]:
    """The ids of a host's workers."""
    return [f"{prefix}-{i}" for i in range(count)]


async def serve(config: WorkerConfig, ids: Sequence[str]) -> None:
    """Start one worker per id (one after the other: their warm-ups would only contend), serve until cancelled."""
    workers: list[StylizerWorker] = []
    try:
        for worker_id in ids:
            worker = StylizerWorker(dataclasses.replace(config, worker_id=worker_id))
            await worker.start()
            workers.append(worker)
        await asyncio.gather(*(w.closed.wait() for w in workers))
    finally:
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    own = argparse.ArgumentParser(prog="python -m bench.worker_host", add_help=False)
    own.add_argument("--count", type=int, required=True, help="workers in this process")
    own.add_argument("--id-prefix", required=True, help="worker ids are <prefix>-<i>")
    args, rest = own.parse_known_args(argv)
    worker_args = worker_parser().parse_args(rest)
    setup_logging(worker_args.log_level)
    with contextlib.suppress(asyncio.CancelledError):
        run_main(serve(config_from_args(worker_args), worker_ids(args.id_prefix, args.count)))


if __name__ == "__main__":
    main()
