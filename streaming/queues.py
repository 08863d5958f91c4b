"""A bounded asyncio queue where the newest item wins: when full, the oldest is dropped and counted.

Optionally some items are worth more (a key frame): they are dropped only when nothing else is queued.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestQueue(Generic[T]):
    """Bounded FIFO for live data: ``put`` never blocks; overflow drops the oldest item."""

    def __init__(self, maxsize: int, precious: Callable[[T], bool] | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._precious = precious
        self._ready = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> T | None:
        """Append ``item``; return the item dropped to make room, if any.

        The oldest item not marked precious goes first; the oldest precious one only if all are.
        """
        dropped = None
        if len(self._items) >= self._maxsize:
            victim = 0
            if self._precious is not None:
                victim = next((i for i, queued in enumerate(self._items) if not self._precious(queued)), 0)
            dropped = self._items[victim]
            del self._items[victim]
            self.dropped += 1
        self._items.append(item)
        self._ready.set()
        return dropped

    def clear(self) -> list[T]:
        """Remove and return every queued item (not counted as dropped: the caller accounts for them)."""
        items = list(self._items)
        self._items.clear()
        return items

    async def get(self) -> T:
        """Wait for and remove the oldest item."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    async def get_batch(self, max_items: int, max_wait_s: float) -> list[T]:
        """A dynamic batch: wait for the oldest item, then at most ``max_wait_s`` for more, up to ``max_items``.

        Items already queued are taken at once; the wait only covers items that have not arrived yet
        (Triton's dynamic batcher: a batch leaves when full or when its first item has waited long enough).
        """
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        batch = [await self.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_s
        while len(batch) < max_items:
            if self._items:
                batch.append(self._items.popleft())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return batch

    def drain(self) -> list[T]:
        """Remove and return everything queued."""
        items = list(self._items)
        self._items.clear()
        return items
