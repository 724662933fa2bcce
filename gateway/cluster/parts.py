# -*- test-case-name: tests.cluster.test_config -*-
"""
The shared state of C{[cluster]} as the service tree assembles it: the Redis
connection and the failed-login refresh as services, the nonce cache, and how
to build the rate limiter of a C{[limits]} (again on every reload).
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.service import MultiService

from gateway.cluster.leases import shared_rate_limiter
from gateway.cluster.logins import SharedFailures
from gateway.cluster.nonces import SharedNonces
from gateway.cluster.redis import RedisStore
from gateway.config import ClusterConfig, LimitsConfig
from gateway.limits import RateLimiter

__all__ = ["Shared", "shared_state"]


@attrs.frozen
class Shared:
    """What the gateway shares through one Redis."""

    store: RedisStore
    failures: SharedFailures
    nonces: SharedNonces
    reactor: Any

    def limiter(
        self, limits: LimitsConfig, alone: LimitsConfig | None = None
    ) -> RateLimiter:
        """
        A rate limiter of C{limits} for the fleet, enforcing C{alone} (default:
        C{limits}) locally while Redis is unreachable with C{"open"}.
        """
        return shared_rate_limiter(limits, self.store, self.reactor, alone=alone)


def shared_state(
    config: ClusterConfig, parent: MultiService, reactor: Any
) -> Shared | None:
    """
    The shared state of C{config}, its services under C{parent}; C{None} when
    no Redis is configured (everything stays local).
    """
    if config.redis is None:
        return None
    store = RedisStore(config.redis, reactor, policy=config.on_redis_error)
    store.setName("redis")
    store.setServiceParent(parent)
    failures = SharedFailures(store, reactor)
    failures.setServiceParent(parent)
    return Shared(store, failures, SharedNonces(store), reactor)
