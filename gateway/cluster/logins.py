# -*- test-case-name: tests.cluster.test_logins -*-
"""
Failed authentications per source address, counted for the whole fleet.

A failure is rare, so each one costs a script call
(L{gateway.cluster.scripts.FAILURE}) that counts it in the address's shared
bucket and answers whether the address is now blocked. A request must not wait
for Redis, though, so L{SharedFailures.wait} only reads a local table of blocked
addresses: filled from those answers and replaced every C{refresh} seconds
(0.5 s) from the shared blocked set (L{gateway.cluster.scripts.BLOCKED}), one
call per interval whatever the traffic. An address blocked through another
process is thus refused here within one refresh; one whose failures all came
here, at once, since this process also keeps its own count, which can only be
stricter than the fleet's (it counts a subset of the same failures).

While Redis is down the local count alone decides, with either
C{on_redis_error}: refusing every password check with 503 would protect
nothing that the local count does not.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from gateway.auth.identify import FAILURE_BURST, FAILURE_RATE
from gateway.cluster.redis import KEY_PREFIX, SharedStore
from gateway.cluster.scripts import BLOCKED, FAILURE
from gateway.limits import KeyedBuckets

__all__ = ["SharedFailures"]

_BLOCKED_KEY = KEY_PREFIX + "login-blocked"


class SharedFailures(Service):
    """
    The failed-login buckets of L{gateway.auth.identify.Authenticator} (its
    C{failures}), shared: C{burst} failures at once, then C{rate} a second, per
    address, across every process pointed at the same Redis. As a service it
    refreshes the blocked table while it runs.

    @ivar blocked: address -> the local time it may try again.
    """

    def __init__(
        self,
        store: SharedStore,
        clock: IReactorTime,
        *,
        rate: float = FAILURE_RATE,
        burst: float = FAILURE_BURST,
        refresh: float = 0.5,
        max_blocked: int = 100_000,
    ) -> None:
        self.store = store
        self.rate = rate
        self.burst = burst
        self.max_blocked = max_blocked
        self.local = KeyedBuckets(rate, burst)
        self.blocked: dict[str, float] = {}
        self._clock = clock
        self._refresh = refresh
        self._loop = LoopingCall(self._fetch)
        self._loop.clock = clock

    def __len__(self) -> int:
        return len(self.local)

    def startService(self) -> None:
        """Start refreshing the blocked table."""
        super().startService()
        self._loop.start(self._refresh, now=True)

    def stopService(self) -> None:
        """Stop refreshing it."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def wait(self, host: str, now: float) -> float:
        """The seconds until C{host} may try again (C{0.0}: now); no I/O."""
        local = self.local.wait(host, now)
        if not self.store.health.usable(may_refuse=False):
            return local
        until = self.blocked.get(host)
        if until is not None and until <= now:
            del self.blocked[host]
            until = None
        return max(local, 0.0 if until is None else until - now)

    def take(self, host: str, now: float) -> None:
        """Count a failure of C{host}, here and (when Redis is up) fleet-wide."""
        self.local.take(host, now)
        if not self.store.health.up:
            return
        d = self.store.run(
            FAILURE,
            [f"{KEY_PREFIX}login:{host}", _BLOCKED_KEY],
            [self.rate, self.burst, host],
        )
        d.addCallbacks(lambda wait_ms: self._learn(host, wait_ms), lambda _: None)

    def _learn(self, host: str, wait_ms: Any) -> None:
        if int(wait_ms) > 0 and len(self.blocked) < self.max_blocked:
            self.blocked[host] = self._clock.seconds() + int(wait_ms) / 1000.0

    def _fetch(self) -> None:
        if not self.store.health.up:
            return
        d = self.store.run(BLOCKED, [_BLOCKED_KEY], [self.max_blocked])
        d.addCallbacks(self._replace, lambda _: None)

    def _replace(self, reply: Any) -> None:
        now = self._clock.seconds()
        items = list(reply)
        self.blocked = {
            str(host): now + int(wait_ms) / 1000.0
            for host, wait_ms in zip(items[::2], items[1::2], strict=True)
        }
