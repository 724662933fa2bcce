# -*- test-case-name: tests.test_limits -*-
"""
Token buckets: how many messages (or failed logins) may pass, and for how long a
refused caller should wait.

Pure code: time is passed in as a number, so the buckets are tested to the token.
"""

from __future__ import annotations

import math
from collections import OrderedDict


class TokenBucket:
    """
    A bucket of C{burst} tokens refilled at C{rate} tokens per second.

    @ivar rate: tokens per second (must be > 0).
    @ivar burst: the most tokens the bucket holds (at least 1).
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._stamp = now

    def _refill(self, now: float) -> float:
        if now > self._stamp:
            self._tokens = min(
                self.burst, self._tokens + (now - self._stamp) * self.rate
            )
            self._stamp = now
        return self._tokens

    def take(self, now: float) -> float:
        """
        Take one token if there is one.

        @return: C{0.0} when a token was taken, else the seconds until one will be
            there (nothing is taken then).
        """
        tokens = self._refill(now)
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        return (1.0 - tokens) / self.rate

    def wait(self, now: float) -> float:
        """The seconds until a token is there (C{0.0} if one is there now)."""
        tokens = self._refill(now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled completely (it can then be forgotten)."""
        return self._refill(now) >= self.burst


class KeyedBuckets:
    """
    One L{TokenBucket} per key (client id, source address ...), created full on
    first use. The table cannot grow without bound: buckets that have refilled are
    dropped, and beyond C{max_keys} the least recently used one goes.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def take(self, key: str, now: float) -> float:
        """L{TokenBucket.take} on C{key}'s bucket."""
        return self._bucket(key, now).take(now)

    def wait(self, key: str, now: float) -> float:
        """L{TokenBucket.wait} on C{key}'s bucket, without creating one."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.wait(now)

    def _prune(self, now: float) -> None:
        full = [key for key, bucket in self._buckets.items() if bucket.full(now)]
        for key in full:
            del self._buckets[key]
        while len(self._buckets) >= self.max_keys:
            self._buckets.popitem(last=False)


def retry_after(wait: float) -> int:
    """Seconds for a C{Retry-After} header: the wait rounded up, at least 1."""
    return max(1, math.ceil(wait))
