# -*- test-case-name: tests.cluster.test_store -*-
"""
The connection to the Redis server of C{[cluster] redis}, as a service of the
tree: one txredisapi connection opened when started (reconnecting with a short
back-off while Redis is away) and closed when stopped.

Every call is bounded by a timeout on the given clock; a failed or late call
marks Redis down in L{RedisHealth}, and while it is down a C{PING} every
C{probe} seconds notices its return. Scripts go as C{EVALSHA}, falling back to
C{EVAL} when Redis does not know them (a new connection, a restarted server).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import txredisapi
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from gateway.cluster.health import RedisHealth
from gateway.cluster.scripts import Script
from gateway.config import RedisAddress

__all__ = ["KEY_PREFIX", "RedisStore", "SharedStore"]

#: Every key the gateway keeps in Redis starts with this, so that one database
#: can serve other programs too.
KEY_PREFIX = "mqtt-http-gateway:"


class SharedStore(Protocol):
    """What the shared limits and caches need of Redis."""

    health: RedisHealth

    def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run C{script} atomically; a L{Deferred} of its answer."""

    def set_if_absent(self, key: str, ttl_ms: int) -> Deferred[bool]:
        """C{SET key 1 NX PX ttl_ms}: whether the key was absent (and is set now)."""


def _connect(address: RedisAddress, reactor: Any, timeout: float) -> Any:
    factory = txredisapi.RedisFactory(
        f"{address.host}:{address.port}",
        address.db,
        1,
        isLazy=True,
        password=address.password,
        username=address.username,
    )
    # A restarted Redis is noticed within a few seconds, not minutes.
    factory.maxDelay = 2.0
    factory.initialDelay = 0.25
    factory.startConnecting(
        HostnameEndpoint(reactor, address.host, address.port, timeout=timeout)
    )
    return factory.handler


class RedisStore(Service):
    """
    The shared store: L{SharedStore} over one Redis connection.

    @ivar health: up or down, as the last call went.
    @ivar timeout: seconds a call may take before Redis counts as down.
    """

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        *,
        policy: str = "open",
        timeout: float = 0.5,
        probe: float = 1.0,
        connect: Callable[[RedisAddress, Any, float], Any] = _connect,
    ) -> None:
        self.address = address
        self.health = RedisHealth(policy, f"Redis at {address.display}")
        self.timeout = timeout
        self._reactor: IReactorTime = reactor
        self._connect = connect
        self._connection: Any = None
        self._probe = LoopingCall(self._ping)
        self._probe.clock = reactor
        self._probe_interval = probe

    def startService(self) -> None:
        """Open the connection (calls wait for it, up to their timeout)."""
        super().startService()
        self._connection = self._connect(self.address, self._reactor, self.timeout)

    def stopService(self) -> Deferred[None]:
        """Stop probing and close the connection."""
        super().stopService()
        if self._probe.running:
            self._probe.stop()
        connection, self._connection = self._connection, None
        if connection is None:
            return succeed(None)
        d: Deferred[None] = connection.disconnect()
        return d

    def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run C{script} (see L{SharedStore.run})."""
        return self._call(lambda c: c.eval(script.source, list(keys), list(args)))

    def set_if_absent(self, key: str, ttl_ms: int) -> Deferred[bool]:
        """C{SET key 1 NX PX ttl_ms} (see L{SharedStore.set_if_absent})."""
        d: Deferred[Any] = self._call(
            lambda c: c.set(key, 1, pexpire=max(1, ttl_ms), only_if_not_exists=True)
        )
        return d.addCallback(lambda reply: reply is not None)

    def _call(self, command: Callable[[Any], Deferred[Any]]) -> Deferred[Any]:
        connection = self._connection
        if connection is None:
            return fail(txredisapi.ConnectionError("not connected"))
        d = maybeDeferred(command, connection)
        d.addTimeout(self.timeout, self._reactor)
        d.addCallbacks(self._answered, self._failed)
        return d

    def _answered(self, reply: Any) -> Any:
        self.health.succeeded()
        if self._probe.running:
            self._probe.stop()
        return reply

    def _failed(self, failure: Failure) -> Failure:
        if failure.check(defer.TimeoutError):
            why = f"no answer within {self.timeout:g} s"
        else:
            why = failure.getErrorMessage() or repr(failure.value)
        self.health.failed(why)
        if not self._probe.running and self.running:
            self._probe.start(self._probe_interval, now=False)
        return failure

    def _ping(self) -> None:
        self._call(lambda c: c.ping()).addErrback(lambda _: None)
