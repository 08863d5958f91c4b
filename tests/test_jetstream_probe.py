"""The JetStream probe stops when its task is cancelled, wherever the cancel lands: nats-py swallows a cancellation
that arrives while it flushes a publish, and a probe that went on after it kept ``mvs gateway`` on a port in use
alive instead of exiting with its one-line error (asyncio.run waits for every cancelled task)."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from streaming.buckets import STYLE_BUCKET
from streaming.jetstream_health import JetStreamProbe, probe_subject

CANCELS = 200
STOP_S = 2.0


async def test_a_cancelled_probe_stops_wherever_the_cancel_lands(nc: NATS) -> None:
    probe = JetStreamProbe(nc, nc.jetstream(), probe_subject(STYLE_BUCKET), "test", every_s=0.0)
    for i in range(CANCELS):
        task = asyncio.create_task(probe.run())
        for _ in range(i % 7):  # the cancel lands at another point of the publish each time
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STOP_S)
        assert done, f"cancel {i}: the probe went on probing"
    assert probe.available
