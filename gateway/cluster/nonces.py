# -*- test-case-name: tests.cluster.test_nonces -*-
"""
The SendMessage nonce cache shared by every process of every host: a nonce
accepted by one is a replay to all.

Replay protection across hosts needs one C{SET key 1 NX PX ttl} per signed
request: nothing local can know what another host accepted a moment ago. That
is the price of API 2 only; the message paths of APIs 1 and 3 never wait for
Redis. The local L{NonceCache} is consulted first (a replay to this process is
refused without a round trip) and keeps every nonce, so while Redis is down
(C{on_redis_error = "open"}) this process still refuses replays it has seen.
"""

from __future__ import annotations

import hashlib
import math

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from gateway.auth.nonce_cache import NonceCache
from gateway.cluster.redis import KEY_PREFIX, SharedStore
from gateway.errors import GatewayError

__all__ = ["SharedNonces"]


class SharedNonces:
    """
    L{NonceCache.add}, for the fleet: answers with a L{Deferred}.

    @ivar local: this process's cache.
    """

    def __init__(self, store: SharedStore, local: NonceCache | None = None) -> None:
        self.store = store
        self.local = NonceCache() if local is None else local

    def add(self, nonce: str, until: float, now: float) -> Deferred[bool]:
        """
        Remember C{nonce} until at least C{until}, here and in Redis.

        @return: fires with C{False} for a replay (seen here or anywhere),
            else C{True}; fails with a 503 L{GatewayError} while Redis is down
            with C{"closed"}, or a 429 when the local cache is full.
        """
        try:
            if not self.local.add(nonce, until, now):
                return succeed(False)
            if not self.store.health.usable():
                return succeed(True)
        except GatewayError as e:
            return fail(e)
        # Hashed: nonces are chosen by clients and may be long.
        digest = hashlib.sha256(nonce.encode("utf-8")).hexdigest()
        ttl_ms = math.ceil((until - now) * 1000)
        d = self.store.set_if_absent(f"{KEY_PREFIX}nonce:{digest}", ttl_ms)
        return d.addErrback(self._unanswered)

    def _unanswered(self, failure: Failure) -> bool:
        # Redis went down during the call: "closed" raises its 503 here.
        self.store.health.usable()
        return True
