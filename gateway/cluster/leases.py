# -*- test-case-name: tests.cluster.test_leases -*-
"""
Message rate limits shared by every process of every host: a token bucket in
Redis (L{gateway.cluster.scripts.LEASE}) that processes take tokens from in
batches, C{leases}, and spend locally, so that no request waits for Redis.

Sizing. A lease is C{LEASE_SECONDS} (10 ms) of the configured rate, at least 1
token and at most the burst: C{size = clamp(ceil(rate * 0.01), 1, burst)}. A
process asks for the next lease when it holds less than half of one, so the
fleet makes about C{2 * rate / size} = 200 script calls a second at full rate,
whatever the number of processes, and one call per C{size / 2} messages in each.

A process may run ahead of its leases by up to C{size} tokens (a debt, repaid
from the next lease before anything else): its first message after a pause
passes at once instead of waiting for Redis. Every token spent was taken from
the shared bucket except these debts, so over any T seconds a fleet of N
processes admits at most C{rate * T + burst + N * size} messages: with
C{size = rate / 100}, N processes add N% of one second of the rate, i.e. within
10% of C{rate * T + burst} up to N = 10 for T >= 1 s (and more for longer
windows).

Unspent tokens are forgotten C{LEASE_LIFETIME} (1 s) after their lease arrived,
so a process that goes quiet cannot later spend tokens taken long ago; what an
idle process holds (at most C{2 * size}) is lost to the fleet, never added, so
the error is on the strict side. While the shared bucket is empty a process asks
again only when the script says half a lease will be there.

L{Lease} is the pure policy (tested with a fake clock); L{LeasedBucket} runs it
against a L{SharedStore}; L{SharedBucket} and L{SharedBuckets} are what
L{gateway.limits.RateLimiter} uses, falling back to local buckets while Redis is
down (C{on_redis_error = "open"}) or refusing with 503 (C{"closed"}). The local
buckets enforce the process's own share of the limits (a worker's 1/N, see
L{gateway.workers.policy.divided_limits}), so that one host keeps the limits
during an outage; each host counting alone, a fleet of H hosts may admit up to
H times them until Redis answers again.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.cluster.redis import KEY_PREFIX, SharedStore
from gateway.cluster.scripts import LEASE
from gateway.config import LimitsConfig
from gateway.limits import KeyedBuckets, RateLimiter, TokenBucket

__all__ = [
    "LEASE_LIFETIME",
    "LEASE_SECONDS",
    "Lease",
    "LeasedBucket",
    "SharedBucket",
    "SharedBuckets",
    "lease_size",
    "shared_rate_limiter",
]

#: A lease is this many seconds of the configured rate.
LEASE_SECONDS = 0.01
#: Seconds after which unspent leased tokens are forgotten.
LEASE_LIFETIME = 1.0


def lease_size(rate: float, burst: float) -> int:
    """Tokens per lease for a bucket of C{rate}/C{burst} (see the module)."""
    return max(1, min(math.ceil(rate * LEASE_SECONDS), int(burst)))


class Lease:
    """
    The tokens this process holds of one shared bucket: C{balance} can go down
    to C{-size} (a debt) before messages are refused.

    @ivar size: tokens per lease.
    @ivar balance: tokens held (negative: owed).
    @ivar asking: whether a lease is on its way.
    """

    def __init__(self, rate: float, size: int, lifetime: float = LEASE_LIFETIME):
        self.rate = rate
        self.size = size
        self.lifetime = lifetime
        self.balance = 0
        self.asking = False
        self._expires = -math.inf
        self._next_ask = -math.inf

    def wait(self, now: float) -> float:
        """C{0.0} when a message may pass now, else the seconds to wait."""
        self._expire(now)
        if self.balance > -self.size:
            return 0.0
        return max(self._next_ask - now, 1.0 / self.rate)

    def take(self) -> None:
        """Spend one token (L{wait} said one may)."""
        self.balance -= 1

    def want(self, now: float) -> tuple[int, int]:
        """
        What to ask the shared bucket for now: C{(want, need)} tokens, a full
        lease plus the debt, granted only when C{need} are there; C{(0, 0)}
        when there is no need to ask.
        """
        self._expire(now)
        if self.asking or now < self._next_ask or 2 * self.balance >= self.size:
            return 0, 0
        want = self.size - self.balance
        return want, min(want, max(1, self.size // 2))

    def granted(self, tokens: int, wait: float, now: float) -> None:
        """The shared bucket gave C{tokens}; else asking is useless for C{wait}."""
        self.asking = False
        self._expire(now)
        if tokens > 0:
            self.balance += tokens
            self._expires = now + self.lifetime
        self._next_ask = now + wait

    def failed(self) -> None:
        """The ask went unanswered (Redis is down)."""
        self.asking = False

    def _expire(self, now: float) -> None:
        if self.balance > 0 and now >= self._expires:
            self.balance = 0


class LeasedBucket:
    """One shared bucket (a Redis key) spent through a L{Lease}."""

    def __init__(
        self,
        store: SharedStore,
        key: str,
        rate: float,
        burst: float,
        clock: IReactorTime,
    ) -> None:
        self.store = store
        self.key = key
        self.rate = rate
        self.burst = burst
        self.lease = Lease(rate, lease_size(rate, burst))
        self._clock = clock

    def wait(self, now: float) -> float:
        """L{Lease.wait}, asking for the next lease when it is due."""
        self._ask(now)
        return self.lease.wait(now)

    def take(self, now: float) -> None:
        """Spend a token, asking for the next lease when it is due."""
        self.lease.take()
        self._ask(now)

    def full(self, now: float) -> bool:
        """
        Never: a lease stands for the fleet's bucket, which this process cannot
        see refilled, so it is forgotten only as the least recently used.
        """
        return False

    def _ask(self, now: float) -> None:
        lease = self.lease
        want, need = lease.want(now)
        if not want or not self.store.health.up:
            return
        lease.asking = True
        d = self.store.run(LEASE, [self.key], [self.rate, self.burst, want, need])
        d.addCallbacks(self._granted, self._failed)

    def _granted(self, reply: Any) -> None:
        tokens, wait_ms = reply
        self.lease.granted(int(tokens), int(wait_ms) / 1000.0, self._clock.seconds())

    def _failed(self, failure: Failure) -> None:
        self.lease.failed()


class SharedBucket:
    """
    The whole fleet's bucket, with the interface of L{TokenBucket} that
    L{RateLimiter} uses; the bucket C{local} decides while Redis is down.
    """

    def __init__(
        self,
        store: SharedStore,
        rate: float,
        burst: float,
        clock: IReactorTime,
        local: TokenBucket,
    ) -> None:
        self.health = store.health
        self.shared = LeasedBucket(store, KEY_PREFIX + "rate", rate, burst, clock)
        self.local = local

    def wait(self, now: float) -> float:
        """
        @raise GatewayError: 503 while Redis is down with C{"closed"}.
        """
        if self.health.usable():
            return self.shared.wait(now)
        return self.local.wait(now)

    def take(self, now: float) -> None:
        """Take the token L{wait} found."""
        if self.health.up:
            self.shared.take(now)
        else:
            self.local.take(now)


class SharedBuckets:
    """
    One shared bucket per client id, with the interface of L{KeyedBuckets}
    that L{RateLimiter} uses, kept in a L{KeyedBuckets} of leases: at most
    C{max_keys}, the least recently used dropped first (forgetting a lease loses
    its tokens, or at most one lease of debt); the buckets of C{local} decide
    while Redis is down.
    """

    def __init__(
        self,
        store: SharedStore,
        rate: float,
        burst: float,
        clock: IReactorTime,
        *,
        local: KeyedBuckets,
        max_keys: int = 100_000,
    ) -> None:
        self.health = store.health
        self.local = local

        def lease(key: str, now: float) -> LeasedBucket:
            return LeasedBucket(store, f"{KEY_PREFIX}client:{key}", rate, burst, clock)

        self._leases = KeyedBuckets(rate, burst, max_keys, make=lease)

    def __len__(self) -> int:
        return len(self._leases) if self.health.up else len(self.local)

    def wait(self, key: str, now: float) -> float:
        """
        @raise GatewayError: 503 while Redis is down with C{"closed"}.
        """
        if not self.health.usable():
            return self.local.wait(key, now)
        return self._leases.wait(key, now)

    def take(self, key: str, now: float) -> None:
        """Take the token L{wait} found."""
        if self.health.up:
            self._leases.take(key, now)
        else:
            self.local.take(key, now)


def shared_rate_limiter(
    limits: LimitsConfig,
    store: SharedStore,
    clock: IReactorTime,
    *,
    alone: LimitsConfig | None = None,
    max_clients: int = 100_000,
) -> RateLimiter:
    """
    A L{RateLimiter} of C{limits} whose buckets are shared through C{store}.

    @param alone: the limits enforced locally while Redis is down with
        C{"open"} (this process's share of C{limits}); C{limits} when C{None}.
    """
    if alone is None:
        alone = limits
    total = None
    if limits.rate > 0:
        local = TokenBucket(alone.rate, alone.burst, now=0.0)
        total = SharedBucket(store, limits.rate, limits.burst, clock, local)
    clients = None
    if limits.client_rate > 0:
        clients = SharedBuckets(
            store,
            limits.client_rate,
            limits.client_burst,
            clock,
            local=KeyedBuckets(alone.client_rate, alone.client_burst, max_clients),
            max_keys=max_clients,
        )
    return RateLimiter(limits, max_clients=max_clients, total=total, clients=clients)
