"""``mvs setup``: the operator's setup of a deployment's JetStream: every bucket and stream, created before the services
start (:func:`streaming.buckets.create_stores`; workers and gateways may not create any).

Connects as the ``setup`` user (URL in ``MVS_NATS_URL``, CA in ``MVS_NATS_CA``) to the hub and creates the style
bucket, the model stores, the delta stream and a delta bucket per ``--region``, each with
min(3, ``--hub-servers``) replicas; what exists is left as it is (but for its replicas), so it may run again.
``mvs nats``, ``mvs demo`` and ``mvs local`` run it themselves; a cluster runs it as the Job ``mvs-setup``
(deploy/k8s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from deploy.nats_auth import SETUP_USER
from streaming.buckets import create_stores, deployment_stores
from streaming.config import NATS_CA_ENV, NATS_URL_ENV, add_config_arguments, config_from_args, flag
from streaming.nats_connect import connect_nats
from streaming.protocol import DEFAULT_NATS_URL, DEFAULT_REGION


async def set_up(url: str, regions: Sequence[str], tls_ca: Path | None = None, replicas: int = 1) -> list[str]:
    """Create the buckets and streams of a deployment serving ``regions`` on the server at ``url`` (a hub cluster:
    its servers' URLs, comma-separated), each with ``replicas``; the streams created or changed (none when all
    existed as they should)."""
    nc = await connect_nats(url, SETUP_USER, service="setup", max_reconnect_attempts=0, tls_ca=tls_ca)
    try:
        return await create_stores(nc.jetstream(), deployment_stores(regions), replicas)
    finally:
        await nc.close()


def run_setup(url: str, regions: Sequence[str], tls_ca: Path | None = None, replicas: int = 1) -> list[str]:
    """:func:`set_up` from synchronous code (in a thread of its own, so it may be called inside an event loop too)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nats-setup") as pool:
        return pool.submit(asyncio.run, set_up(url, regions, tls_ca, replicas)).result()


@dataclass
class SetupConfig:
    """What ``mvs setup`` creates (its flags; the URL and CA come from the environment: a URL may carry a
    password, never in argv)."""

    regions: tuple[str, ...] = field(
        default=(), metadata=flag(f"a region served (repeatable; none: {DEFAULT_REGION})", name="region")
    )
    hub_servers: int = field(
        default=1, metadata=flag("servers of the hub's JetStream cluster: every store gets min(3, N) replicas")
    )


def build_parser() -> argparse.ArgumentParser:
    """CLI of the setup."""
    p = argparse.ArgumentParser(prog="mvs setup", description=__doc__.splitlines()[0].strip("`: "))
    add_config_arguments(p, SetupConfig)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: the URL and CA from the environment (a URL may carry a password: never in argv)."""
    config = config_from_args(SetupConfig, build_parser().parse_args(argv))
    ca = os.environ.get(NATS_CA_ENV)
    if config.hub_servers < 1:
        raise SystemExit(f"mvs setup: --hub-servers must be at least 1, got {config.hub_servers}")
    url = os.environ.get(NATS_URL_ENV, DEFAULT_NATS_URL)
    regions = config.regions or (DEFAULT_REGION,)
    created = run_setup(url, regions, Path(ca) if ca else None, min(3, config.hub_servers))
    print(f"created {', '.join(created)}" if created else "every bucket and stream exists already")


if __name__ == "__main__":
    main()
