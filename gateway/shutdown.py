# -*- test-case-name: tests.integration.test_resilience -*-
"""
Graceful shutdown: stop accepting, let the requests in flight
finish, then close the broker sessions.

Twisted's L{MultiService} stops all its children at once, so the broker session
would fail the requests still waiting for it while the listeners close. Built
with L{StopInOrder} as the root and a L{DrainHTTP} between the publishing
services and the listeners, the tree stops as a drain should::

    root = StopInOrder()
    session.setServiceParent(root)             # started first, stopped last
    DrainHTTP([factory], timeout).setServiceParent(root)
    listener.setServiceParent(root)            # started last, stopped first

The listeners stop listening, L{DrainHTTP} waits until every request already
taken has its answer (the session is still up, so its message reaches the
broker), and only then does the session DISCONNECT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

__all__ = ["DrainHTTP", "Drainable", "StopInOrder"]

_log = Logger()


class Drainable(Protocol):
    """What L{DrainHTTP} drains (L{gateway.web.server.HTTPServerFactory})."""

    @property
    def open_connections(self) -> int:
        """How many connections are open."""

    def drain(self, timeout: float) -> Deferred[None]:
        """Take no new requests, answer those taken, close; fire when done."""


class StopInOrder(MultiService):
    """
    A L{MultiService} whose children stop one at a time, the last added first,
    each once the one stopped before it has finished (Twisted's own stops them
    all at once). A child that fails to stop is logged and does not hold up the
    others. Children start as in a L{MultiService}: in the order added.
    """

    def stopService(self) -> Deferred[None]:
        """
        Stop the children in reverse order, one after the other.

        @return: fires with C{None} once the last one has stopped.
        """
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_each(list(self)[::-1]))

    async def _stop_each(self, services: list[Service]) -> None:
        for service in services:
            try:
                await maybeDeferred(service.stopService)
            except Exception:
                _log.failure("Stopping {service!r} failed", service=service)


class DrainHTTP(Service):
    """
    Drains HTTP servers when stopped: see L{gateway.web.server.HTTPServerFactory.drain}.
    Stopping fires once every connection has closed, or after C{timeout} seconds
    (connections still open then are aborted).

    @ivar factories: the servers to drain.
    @ivar timeout: the most seconds a drain may take.
    """

    def __init__(self, factories: Sequence[Drainable], timeout: float) -> None:
        self.factories = tuple(factories)
        self.timeout = timeout

    def stopService(self) -> Deferred[None]:
        """
        Drain every factory.

        @return: fires with C{None} when all are drained.
        """
        super().stopService()
        open_connections = sum(f.open_connections for f in self.factories)
        if open_connections:
            _log.info(
                "Draining {count} open HTTP connection(s) (at most {timeout:g} s)",
                count=open_connections,
                timeout=self.timeout,
            )
        drains = [factory.drain(self.timeout) for factory in self.factories]
        return DeferredList(drains, consumeErrors=True).addCallback(lambda _: None)
