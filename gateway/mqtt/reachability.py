# -*- test-case-name: tests.mqtt.test_passthrough -*-
"""
Whether any of the brokers can be reached, found with bare TCP connections (no
MQTT session) and asked again every interval until one answers: readiness that
comes back without traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from gateway.mqtt.connector import Broker

__all__ = ["ReachabilityProbe"]


class ReachabilityProbe:
    """
    Whether any broker accepts a TCP connection; asked again every C{interval}
    seconds until one does.
    """

    def __init__(
        self,
        brokers: Sequence[Broker],
        clock: IReactorTime,
        interval: float,
        report: Callable[[bool], None],
    ) -> None:
        """
        @param interval: seconds between rounds while no broker answers, and
            each connection's timeout.
        @param report: told the answer of each round (C{True}: one answered).
        """
        self._brokers = brokers
        self._clock = clock
        self._interval = interval
        self._report = report
        self._round: Deferred[bool] | None = None
        self._next: IDelayedCall | None = None

    def check(self) -> None:
        """Start finding out, unless already finding out."""
        if self._round is None and self._next is None:
            self._start()

    def stop(self) -> None:
        """Stop asking."""
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        running, self._round = self._round, None
        if running is not None:
            running.cancel()

    def _start(self) -> None:
        self._next = None
        self._round = d = self._try(0)
        d.addCallback(self._done)
        d.addErrback(_ignore_stopped)

    def _try(self, index: int) -> Deferred[bool]:
        if index == len(self._brokers):
            return succeed(False)
        d = self._brokers[index].endpoint.connect(_CLOSE_AT_ONCE)
        d.addTimeout(self._interval, self._clock)

        def answered(protocol: Protocol) -> bool:
            if protocol.transport is not None:
                protocol.transport.loseConnection()
            return True

        def next_one(failure: Failure) -> Deferred[bool]:
            if self._round is None:
                raise _Stopped()
            return self._try(index + 1)

        return d.addCallbacks(answered, next_one)

    def _done(self, reachable: bool) -> None:
        self._round = None
        self._report(reachable)
        if not reachable:
            self._next = self._clock.callLater(self._interval, self._start)


class _Stopped(Exception):
    """The probe was stopped mid-round."""


def _ignore_stopped(failure: Failure) -> None:
    failure.trap(_Stopped)


class _CloseAtOnce(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


_CLOSE_AT_ONCE = Factory.forProtocol(_CloseAtOnce)
_CLOSE_AT_ONCE.noisy = False
