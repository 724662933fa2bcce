# -*- test-case-name: tests.cluster.test_health -*-
"""
Whether Redis is usable now, and what a decision that needs it does while it
is not (C{[cluster] on_redis_error}).

Pure bookkeeping: the connection (L{gateway.cluster.redis}) reports each
call's outcome; the shared limits and caches ask L{RedisHealth.usable} before
relying on Redis. An outage is logged once when it starts and once when it
ends, however many calls fail in between.
"""

from __future__ import annotations

from twisted.logger import Logger

from gateway.errors import Code, GatewayError

__all__ = ["RedisHealth", "redis_unavailable"]

_log = Logger()


def redis_unavailable() -> GatewayError:
    """The 503 of C{on_redis_error = "closed"} while Redis is unreachable."""
    return GatewayError(
        Code.Unavailable,
        "the shared rate limits are unreachable; try again shortly",
        retry_after=1,
    )


class RedisHealth:
    """
    Up or down, as the last call to Redis went; up until a call fails.

    @ivar policy: C{"open"}: decide locally while down; C{"closed"}: refuse.
    @ivar up: whether the last call succeeded.
    @ivar outages: how many times Redis went down.
    @ivar fallbacks: decisions taken without Redis because it was down (local
        limits or caches with C{"open"}, 503s with C{"closed"}).
    """

    def __init__(self, policy: str = "open", name: str = "Redis") -> None:
        self.policy = policy
        self.name = name
        self.up = True
        self.outages = 0
        self.fallbacks = 0

    def failed(self, why: str) -> None:
        """A call failed (unreachable, timed out, refused)."""
        if self.up:
            self.up = False
            self.outages += 1
            _log.warn(
                "{name} is unreachable ({why}); {what} until it answers again",
                name=self.name,
                why=why,
                what="using local rate limits and caches"
                if self.policy == "open"
                else "refusing requests that need it with 503",
            )

    def succeeded(self) -> None:
        """A call succeeded."""
        if not self.up:
            self.up = True
            _log.info("{name} answers again; limits are shared", name=self.name)

    def usable(self, *, may_refuse: bool = True) -> bool:
        """
        Whether to rely on Redis for one decision now; C{False} (counted as a
        fallback) means decide locally.

        @param may_refuse: whether the decision is one C{"closed"} refuses
            (C{False} for decisions whose local form is only ever stricter).
        @raise GatewayError: 503 while down with C{"closed"}, when C{may_refuse}.
        """
        if self.up:
            return True
        self.fallbacks += 1
        if may_refuse and self.policy == "closed":
            raise redis_unavailable()
        return False
