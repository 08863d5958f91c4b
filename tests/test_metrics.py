"""Every service exposes Prometheus metrics: scrape a real worker process after it served requests; a worker's
metrics come up only once it serves (readiness)."""

from __future__ import annotations

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from deploy.launch import ServiceProcess, http_answers
from deploy.nats_servers import NatsServer, free_port
from edge_worker.service import WorkerConfig
from mobile_sim.sources import default_style_photo, sample_photo
from streaming.cli import ServiceOptions
from streaming.gateway.stylize_client import discover_workers
from streaming.images import encode_jpeg
from streaming.protocol import stylize_subject
from streaming.style_store import StyleStore
from tests.support import ask_worker, stylize_request

pytestmark = pytest.mark.slow  # a worker process


WAIT_S = 30.0


async def test_worker_process_serves_its_metrics(nats_server: NatsServer, nc: NATS, region: str) -> None:
    port = free_port()
    config = WorkerConfig(nats_url=nats_server.url, region=region, worker_id="m1", metrics_port=port)
    proc = ServiceProcess(config, options=ServiceOptions(log_level="warning")).start()
    try:
        # Metrics are the readiness signal: up only once the worker serves.
        await proc.wait_ready(http_answers(f"http://127.0.0.1:{port}/metrics"), WAIT_S)
        assert await discover_workers(nc, region, 0.2), "metrics were up before the worker served"
        style_id = await (await StyleStore.open(nc.jetstream())).put(encode_jpeg(default_style_photo()))
        request = stylize_request(
            style_id, image=encode_jpeg(sample_photo()), out_width=64, out_height=64, budget_ms=5000.0
        )
        assert (await ask_worker(nc, region, request, timeout_s=10)).ok
        await nc.request(stylize_subject(region), b"junk", timeout=10)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
    finally:
        await proc.stop_async()
    assert f'mvs_worker_requests_total{{outcome="ok",region="{region}"}} 1.0' in text
    assert f'mvs_worker_requests_total{{outcome="malformed",region="{region}"}} 1.0' in text
    assert "mvs_worker_inference_seconds_bucket" in text
