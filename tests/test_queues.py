"""Latest-wins queue: bounded, drops counted, precious items kept while others can go."""

from __future__ import annotations

import asyncio

import pytest

from streaming.queues import LatestQueue


async def test_newest_wins_and_drops_are_counted() -> None:
    q: LatestQueue[int] = LatestQueue(2)
    assert q.put(1) is None and q.put(2) is None
    assert q.put(3) == 1
    assert q.dropped == 1 and len(q) == 2
    assert [await q.get(), await q.get()] == [2, 3]


async def test_precious_items_survive_while_others_can_be_dropped() -> None:
    q: LatestQueue[tuple[int, bool]] = LatestQueue(2, precious=lambda item: item[1])
    q.put((0, True))
    q.put((1, False))
    assert q.put((2, False)) == (1, False)
    assert q.put((3, True)) == (2, False)
    assert q.put((4, False)) == (0, True)  # all precious: the oldest goes
    assert q.drain() == [(3, True), (4, False)]


async def test_get_waits_for_put() -> None:
    q: LatestQueue[str] = LatestQueue(1)
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    q.put("x")
    assert await asyncio.wait_for(getter, 1) == "x"


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LatestQueue(0)
