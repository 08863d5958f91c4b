"""The whole pipeline on one machine: ``mvs demo``.

Starts a nats-server (JetStream, data in a temp dir), N stylizer worker processes, one gateway and
one simulated phone, streams the source live over WebRTC on loopback, writes
``stylized.mp4``, ``side_by_side.mp4`` and ``report.json``, and shuts everything down.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.launch import StartupError
from deploy.nats_servers import NatsServer
from deploy.worker_site import LOCAL_WORKER, WORKER_LOG_LEVEL, WorkerSite, add_worker_arguments, worker_config
from edge_worker.service import WorkerConfig
from mobile_sim.__main__ import INTERRUPTED, add_phone_arguments, finish, phone_config_from_args
from mobile_sim.__main__ import preflight as phone_preflight
from mobile_sim.client import Phone, PhoneConfig, PhoneResult
from streaming.cli import DefaultsHelpFormatter, ServiceOptions
from streaming.config import add_config_arguments, config_from_args, flag
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK
from streaming.runtime import run_main
from streaming.telemetry import setup_logging

log = logging.getLogger(__name__)


def demo_site(nats_url: str, region: str, worker: WorkerConfig, log_level: str) -> WorkerSite:
    """The demo's workers: ``worker``'s settings in the phone's region."""
    return WorkerSite(nats_url, dataclasses.replace(worker, region=region), options=ServiceOptions(log_level=log_level))


async def run_demo(
    phone_config: PhoneConfig,
    worker: WorkerConfig = LOCAL_WORKER,
    workers: int = 1,
    log_level: str = WORKER_LOG_LEVEL,
    progress: Callable[[str], None] | None = None,
) -> PhoneResult:
    """Start NATS, ``workers`` workers of ``worker``'s settings in the phone's region and a gateway; run the phone
    against them; stop everything. ``progress`` hears what is being started (a line each)."""
    say = progress or (lambda line: None)
    with NatsServer(regions=[phone_config.region]) as server:  # the setup creates the region's buckets
        topology = demo_site(server.url, phone_config.region, worker, log_level)
        gateway = Gateway(GatewayConfig(port=0, nats_url=server.url, region=phone_config.region, ice_hosts=LOOPBACK))
        try:
            for _ in range(workers):
                topology.start_worker(topology.next_worker_id())
            say(f"NATS at {server.url}; {workers} {worker.model} worker(s) loading and warming up...")
            started = time.monotonic()
            await topology.wait_for_workers()
            say(f"worker(s) ready in {time.monotonic() - started:.1f} s; streaming {phone_config.frames} frames")
            await gateway.start()
            phone_config.gateway_urls = (gateway.url,)
            phone_config.ice_hosts = LOOPBACK
            return await Phone(phone_config).run()
        finally:
            await gateway.stop()
            await asyncio.to_thread(topology.stop)  # waits for the workers' exits: off the event loop


@dataclass
class DemoOptions:
    """``mvs demo``'s own flags (the phone's and the workers' come from their configs)."""

    workers: int = field(default=1, metadata=flag("stylizer worker processes"))


def build_parser(worker_cls: type[WorkerConfig] = WorkerConfig) -> argparse.ArgumentParser:
    """CLI of the demo."""
    p = argparse.ArgumentParser(
        prog="mvs demo",
        description="Run the whole pipeline locally on a bundled sample: nats-server, stylizer worker(s), "
        "gateway and a simulated phone streaming over WebRTC on loopback.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_phone_arguments(p, out_default=Path("out/demo"))
    add_config_arguments(p, DemoOptions)
    add_worker_arguments(p, worker_cls)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, json_lines=False)
    phone = phone_config_from_args(args)
    try:
        phone_preflight(phone)
    except ValueError as exc:
        raise SystemExit(f"mvs demo: {exc}") from None
    worker = worker_config(args, "mvs demo")
    options = config_from_args(DemoOptions, args)
    try:
        result = run_main(
            run_demo(
                phone,
                worker,
                workers=options.workers,
                log_level=args.log_level,
                progress=lambda line: print(f"mvs demo: {line}", flush=True),
            )
        )
    except StartupError as exc:
        raise SystemExit(f"mvs demo: {exc}") from None
    except asyncio.CancelledError:
        print(f"mvs demo: interrupted; what the phone had is in {phone.out_dir}", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    finish("mvs demo", result.report, phone.out_dir, args.strict)


if __name__ == "__main__":
    main()
