"""Token buckets: how many messages one phone may send the gateway a second, how many offers one client address may
make (issue 22). Pure computation."""

from __future__ import annotations

from collections import OrderedDict


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; :meth:`take` spends one when there is one."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, got {rate} and {burst}")
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._at = now

    def take(self, now: float) -> bool:
        """Spend one token at time ``now`` (seconds, monotonic); False when the bucket is empty."""
        self._refill(now)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def wait_s(self, now: float) -> float:
        """Seconds from ``now`` until a token is there (0 when one is)."""
        self._refill(now)
        return max(0.0, (1 - self._tokens) / self._rate)

    def _refill(self, now: float) -> None:
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now


class KeyedTokenBuckets:
    """A :class:`TokenBucket` per key (a client address); beyond ``max_keys`` the least recently used is forgotten
    (its next request starts with a full bucket), so memory stays bounded whatever the number of addresses."""

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        TokenBucket(rate, burst, 0.0)  # the same checks, before any key is seen
        self._rate, self._burst, self._max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        """Spend one of ``key``'s tokens at ``now``: 0.0 when it had one, else the seconds until it will."""
        bucket = self._buckets.pop(key, None) or TokenBucket(self._rate, self._burst, now)
        self._buckets[key] = bucket
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return 0.0 if bucket.take(now) else bucket.wait_s(now)

    def __len__(self) -> int:
        return len(self._buckets)
