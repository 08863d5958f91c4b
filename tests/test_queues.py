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
    for _ in range(3):
        await asyncio.sleep(0)  # let the getter run until it waits (no time passes: loop turns)
    assert not getter.done()
    q.put("x")
    assert await asyncio.wait_for(getter, 1) == "x"


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LatestQueue(0)


async def test_a_full_batch_leaves_at_once_with_what_is_queued() -> None:
    q: LatestQueue[int] = LatestQueue(8)
    for i in range(5):
        q.put(i)
    assert await asyncio.wait_for(q.get_batch(3, max_wait_s=60), 1) == [0, 1, 2]
    assert await asyncio.wait_for(q.get_batch(3, max_wait_s=0), 1) == [3, 4]


async def test_a_lone_item_leaves_after_the_wait() -> None:
    q: LatestQueue[int] = LatestQueue(8)
    q.put(7)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await q.get_batch(4, max_wait_s=0.05) == [7]
    assert loop.time() - start >= 0.05


async def test_items_arriving_within_the_wait_join_the_batch() -> None:
    q: LatestQueue[int] = LatestQueue(8)
    batch = asyncio.create_task(q.get_batch(3, max_wait_s=60))
    for i in range(3):
        await asyncio.sleep(0)
        q.put(i)
    assert await asyncio.wait_for(batch, 5) == [0, 1, 2]  # full: it does not wait out the 60 s
