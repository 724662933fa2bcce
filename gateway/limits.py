# -*- test-case-name: tests.test_limits -*-
"""
Token buckets: how many messages (or failed logins) may pass, and for how long a
refused caller should wait; and how fast a queue drains (L{DrainRate}), to tell
how long a newcomer would wait in it.

Pure code: time is passed in as a number, so the buckets are tested to the token.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from gateway.config import LimitsConfig
from gateway.errors import Code, GatewayError
from gateway.model import Identity


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


class KeyedBucket(Protocol):
    """What L{KeyedBuckets} keeps per key: a L{TokenBucket}, or a bucket like it."""

    def wait(self, now: float) -> float:
        """The seconds until a token is there (C{0.0} if one is there now)."""

    def take(self, now: float) -> object:
        """Take a token."""

    def full(self, now: float) -> bool:
        """Whether the bucket may be forgotten (it is the same as a new one)."""


class KeyedBuckets:
    """
    One bucket per key (client id, source address ...): a L{TokenBucket},
    created full on first use, or what C{make(key, now)} creates. The table
    cannot grow without bound: whenever a key is added, least recently used
    buckets that are full are dropped (a full bucket is the same as none), and
    beyond C{max_keys} the least recently used one goes. Keys are often chosen
    by clients, so adding one costs amortized constant time however full the
    table is.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        max_keys: int = 100_000,
        *,
        make: Callable[[str, float], KeyedBucket] | None = None,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._make = make or (lambda _, now: TokenBucket(rate, burst, now))
        self._buckets: OrderedDict[str, KeyedBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: str, now: float) -> KeyedBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            self._prune(now)
            bucket = self._buckets[key] = self._make(key, now)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def take(self, key: str, now: float) -> object:
        """L{TokenBucket.take} on C{key}'s bucket."""
        return self._bucket(key, now).take(now)

    def wait(self, key: str, now: float) -> float:
        """L{TokenBucket.wait} on C{key}'s bucket, without creating one."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.wait(now)

    def _prune(self, now: float) -> None:
        # From the least recently used end: every bucket is dropped at most once.
        buckets = self._buckets
        while buckets:
            key = next(iter(buckets))
            if len(buckets) < self.max_keys and not buckets[key].full(now):
                return
            del buckets[key]


def retry_after(wait: float) -> int:
    """Seconds for a C{Retry-After} header: the wait rounded up, at least 1."""
    return max(1, math.ceil(wait))


class Bucket(Protocol):
    """What L{RateLimiter} needs of its whole-gateway bucket."""

    def wait(self, now: float) -> float:
        """The seconds until a token is there (C{0.0} if one is there now)."""

    def take(self, now: float) -> object:
        """Take the token L{wait} found."""


class Buckets(Protocol):
    """What L{RateLimiter} needs of its per-client buckets."""

    def __len__(self) -> int:
        """How many keys are tracked."""

    def wait(self, key: str, now: float) -> float:
        """L{Bucket.wait} for C{key}."""

    def take(self, key: str, now: float) -> object:
        """L{Bucket.take} for C{key}."""


class RateLimiter:
    """
    The message rate limits of C{[limits]}: one bucket for the
    whole gateway (C{rate}/C{burst}) and one per client id
    (C{client_rate}/C{client_burst}); a rate of C{0} turns its limit off.

    A message passes only when both buckets hold a token, and then takes one from
    each; a refused message takes nothing, so refusals do not push the next
    allowed message further away. Per-client buckets live in a L{KeyedBuckets}
    of at most C{max_clients} entries.

    To change the limits (C{SIGHUP}), replace the limiter: a new one starts with
    full buckets.

    @ivar refused: how many messages L{check} has refused (for metrics).
    """

    def __init__(
        self,
        limits: LimitsConfig,
        *,
        max_clients: int = 100_000,
        total: Bucket | None = None,
        clients: Buckets | None = None,
    ) -> None:
        """
        @param limits: the rates and bursts (rates above 0 have bursts of at least
            1, as L{gateway.config} guarantees).
        @param max_clients: the most per-client buckets kept at once.
        @param total: the whole-gateway bucket instead of a local one (e.g. one
            shared by several processes).
        @param clients: the per-client buckets instead of local ones.
        """
        self.limits = limits
        self.refused = 0
        self._total: Bucket | None = total
        if limits.rate > 0 and total is None:
            # Stamped at 0, the bucket is full at whatever time comes first.
            self._total = TokenBucket(limits.rate, limits.burst, now=0.0)
        self._clients: Buckets | None = clients
        if limits.client_rate > 0 and clients is None:
            self._clients = KeyedBuckets(
                limits.client_rate, limits.client_burst, max_keys=max_clients
            )

    @property
    def tracked_clients(self) -> int:
        """How many per-client buckets are kept right now."""
        return 0 if self._clients is None else len(self._clients)

    def check(self, identity: Identity, now: float) -> None:
        """
        Let one message from C{identity} pass at time C{now}, or refuse it; the
        per-client bucket is its client id's.

        @raise GatewayError: C{RateLimited} (429) with C{retry_after} the whole
            seconds (at least 1) until both buckets have a token again; nothing is
            taken then.
        """
        client_id = identity.client_id
        total, clients = self._total, self._clients
        wait = 0.0 if total is None else total.wait(now)
        client_wait = 0.0 if clients is None else clients.wait(client_id, now)
        if wait or client_wait:
            self.refused += 1
            if client_wait > wait:
                why = f"client {client_id!r} is over its rate limit"
            else:
                why = "the gateway is over its rate limit"
            raise GatewayError(
                Code.RateLimited,
                why,
                retry_after=retry_after(max(wait, client_wait)),
            )
        if total is not None:
            total.take(now)
        if clients is not None:
            clients.take(client_id, now)


class DrainRate:
    """
    How fast a queue drains while something waits in it: departures per second
    over stretches of at least C{interval} seconds in which the queue was never
    empty (then departures are limited by the consumer, not by the traffic);
    the estimate is the average of each such sample and the previous estimate.
    A shorter stretch that ended with the queue empty shows the consumer is at
    least that fast, so it can only raise the estimate.

    Call L{departed} for each message leaving the queue and L{waiting} whenever
    its length may have changed.

    @ivar rate: the estimate in messages per second, C{None} before the first
        sample.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.rate: float | None = None
        self._since: float | None = None
        self._count = 0

    def departed(self, count: int = 1) -> None:
        """C{count} messages left the queue."""
        self._count += count

    def waiting(self, backlog: bool, now: float) -> None:
        """Whether something waits in the queue at time C{now}."""
        since, rate = self._since, self.rate
        if since is not None:
            elapsed = now - since
            if elapsed >= self.interval:
                sample = self._count / elapsed
                self.rate = sample if rate is None else (rate + sample) / 2
                since = None
            elif not backlog:
                if rate is not None and elapsed > 0 and self._count / elapsed > rate:
                    self.rate = self._count / elapsed
                since = None
        if since is None:
            self._count = 0
            since = now if backlog else None
        self._since = since

    def wait(self, length: int, now: float) -> float | None:
        """
        The seconds a newcomer behind C{length} messages would wait, or C{None}
        while there is no estimate yet.
        """
        self.waiting(length > 0, now)
        rate = self.rate
        if rate is None:
            return None
        return math.inf if rate <= 0 else length / rate
