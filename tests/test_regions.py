"""Regions as NATS leaf nodes of a cloud hub: stylize traffic stays local, stores live in the hub."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from deploy.nats_servers import HUB_DOMAIN, NatsHubAndLeaves
from edge_worker.service import StylizerWorker, WorkerConfig
from mobile_sim.client import Phone, PhoneConfig
from streaming.gateway.server import Gateway, GatewayConfig
from streaming.ice import LOOPBACK

FRAMES = 30


@pytest.fixture
def cluster() -> Iterator[NatsHubAndLeaves]:
    with NatsHubAndLeaves(["eu", "us"]) as c:
        yield c


def _worker(url: str, region: str, worker_id: str) -> StylizerWorker:
    return StylizerWorker(
        WorkerConfig(nats_url=url, region=region, worker_id=worker_id, threads=1, js_domain=HUB_DOMAIN)
    )


@pytest.fixture
async def eu_gateway(cluster: NatsHubAndLeaves) -> AsyncIterator[Gateway]:
    gateway = Gateway(
        GatewayConfig(port=0, nats_url=cluster.leaves["eu"].url, region="eu", js_domain=HUB_DOMAIN, ice_hosts=LOOPBACK)
    )
    await gateway.start()
    yield gateway
    await gateway.stop()


async def _stream(gateway: Gateway) -> dict[str, object]:
    config = PhoneConfig(gateway_urls=(gateway.url,), frames=FRAMES, size=(320, 180), region="eu", ice_hosts=LOOPBACK)
    report = (await Phone(config).run()).report
    assert report["frames"]["output"] == FRAMES  # type: ignore[index]
    return report["key_frames"]  # type: ignore[return-value]


@pytest.mark.slow
async def test_edge_workers_serve_their_region_first_and_the_cloud_takes_over(
    cluster: NatsHubAndLeaves, eu_gateway: Gateway
) -> None:
    local = _worker(cluster.leaves["eu"].url, "eu", "eu-edge")
    cloud = _worker(cluster.hub.url, "eu", "eu-cloud")  # overflow capacity in the hub
    other = _worker(cluster.leaves["us"].url, "us", "us-edge")
    for w in (local, cloud, other):
        await w.start()
    try:
        keys = await _stream(eu_gateway)  # the style went to the hub's object store through the leaf
        assert keys["ok"] == keys["marked"] and keys["workers"] == ["eu-edge"], keys
        await local.stop()  # the edge site loses its worker
        keys = await _stream(eu_gateway)
        assert keys["ok"] == keys["marked"] and keys["workers"] == ["eu-cloud"], keys
        assert other.served == 0
    finally:
        for w in (cloud, other):
            await w.stop()
