"""
Fakes shared by the tests: one base for every stand-in L{IPublisher}.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from zope.interface import implementer

from gateway.interfaces import IPublisher
from gateway.model import Connection, Identity, Message, PublishResult
from gateway.status import PublisherStatus, StatusObserver, StatusObservers


@implementer(IPublisher)
class PublisherFake:
    """
    The parts of L{IPublisher} a stand-in broker seldom cares about: always
    connected unless told otherwise, observable, nothing kept per connection.
    Subclasses define L{publish}.
    """

    connected = True

    def __init__(self) -> None:
        self.observers = StatusObservers()

    def status(self) -> PublisherStatus:
        """Connected or not, as L{connected} says."""
        return PublisherStatus(connected=bool(self.connected))

    def observe(self, observer: StatusObserver) -> Callable[[], None]:
        """Observers hear what L{set_connected} changes."""
        return self.observers.observe(observer)

    def set_connected(self, connected: bool) -> None:
        """Go up or down, telling the observers."""
        self.connected = connected
        self.observers.notify(self.status())

    def publish(self, message: Message, identity: Identity) -> Deferred[PublishResult]:
        """Subclasses answer."""
        raise NotImplementedError


class Connections:
    """
    Connection handles by name, for tests that speak of "connection c1": the
    same name gives the same handle until it is closed.
    """

    def __init__(self) -> None:
        self._open: dict[str, Connection] = {}

    def named(self, name: str) -> Connection:
        """The open handle called C{name} (a new one if there is none)."""
        connection = self._open.get(name)
        if connection is None:
            connection = self._open[name] = Connection(name)
        return connection

    def close(self, name: str) -> None:
        """Close the connection called C{name} (a new one, if none is open)."""
        self.named(name).close()
        del self._open[name]

    def forget(self) -> None:
        """Drop every handle (between tests), closing none."""
        self._open.clear()
