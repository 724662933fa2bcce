# -*- test-case-name: tests.mqtt.test_session,tests.test_status -*-
"""
The shared publisher: every message goes out over the gateway's own broker session
(C{[auth] mode = "gateway"}).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.errors import from_publish_failure
from gateway.interfaces import IPublisher
from gateway.model import Identity, Message, PublishResult
from gateway.mqtt.outcomes import PublishFailed
from gateway.mqtt.session import BrokerSession
from gateway.status import PublisherStatus, StatusObserver


def as_gateway_error(failure: Failure) -> Failure:
    """A broker-side L{PublishFailed} as the L{GatewayError} HTTP clients get."""
    if isinstance(failure.value, PublishFailed):
        return Failure(from_publish_failure(failure.value))
    return failure


def sender_properties(identity: Identity) -> tuple[tuple[str, str], ...]:
    """
    The MQTT 5 user properties that tell subscribers who sent a message:
    C{http-client-id}, and C{http-username} when the sender has a user name.
    """
    if identity.username is None:
        return (("http-client-id", identity.client_id),)
    return (
        ("http-client-id", identity.client_id),
        ("http-username", identity.username),
    )


@implementer(IPublisher)
class SharedPublisher:
    """
    Publishes every sender's messages over one L{BrokerSession}, appending the
    sender's identity as user properties (after the sender's own, omitted on
    MQTT 3.1.1). The session is a service of its own, started and stopped by the
    service tree.
    """

    def __init__(self, session: BrokerSession) -> None:
        self.session = session

    @property
    def connected(self) -> bool:
        """C{True} while the broker session is up."""
        return self.session.connected

    def status(self) -> PublisherStatus:
        """The session's state."""
        return self.session.status()

    def observe(self, observer: StatusObserver) -> Callable[[], None]:
        """Hear of the session going up or down."""
        return self.session.observe(observer)

    def publish(self, message: Message, identity: Identity) -> Deferred[PublishResult]:
        """Send C{message} for C{identity}; see L{IPublisher.publish}."""
        return self.session.publish(message, sender_properties(identity)).addErrback(
            as_gateway_error
        )
