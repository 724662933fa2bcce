"""
The seams of the gateway, as zope interfaces.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from gateway.model import Identity, Message, PublishResult
from gateway.status import PublisherStatus, StatusObserver


class IPublisher(Interface):
    """
    Something that takes a message to an MQTT broker.

    Two providers exist: the shared publisher (the gateway's own broker sessions) and
    the pass-through publisher (one broker session per sender). The web layer knows
    only this interface.
    """

    connected = Attribute("C{True} while a broker session is up.")

    def status() -> PublisherStatus:
        """The state of the broker connection now."""

    def observe(observer: StatusObserver) -> Callable[[], None]:
        """
        Call C{observer} with the new L{PublisherStatus} whenever the connection
        state changes (up, down, another broker or protocol level); returns the
        way to stop.
        """

    def publish(message: Message, identity: Identity) -> Deferred[PublishResult]:
        """
        Send C{message} on behalf of C{identity}.

        @return: a L{Deferred} that fires with a L{PublishResult} once the broker has
            taken the message, or fails with a
            L{gateway.errors.GatewayError} (503 when the broker is unreachable or
            silent past the publish timeout, the mapped status for a broker reason
            code). It never fires later than the publish timeout plus one second.
        """
