"""
Fakes shared by the tests: one base for every stand-in L{IPublisher}.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from zope.interface import implementer

from gateway.interfaces import IPublisher
from gateway.model import Identity, Message, PublishResult
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

    def connection_closed(self, connection_id: str) -> None:
        """Nothing is kept per connection."""
