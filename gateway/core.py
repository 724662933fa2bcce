# -*- test-case-name: tests.test_core -*-
"""
The one path every message takes, whichever HTTP API it came in by.

Nothing here knows HTTP: the API adapters hand over an L{Identity} and a L{Message}
and get back a L{PublishResult} or a L{GatewayError}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from gateway.errors import GatewayError
from gateway.interfaces import IPublisher
from gateway.model import Identity, Message, PublishResult


class Gateway:
    """
    The core: checks a message and hands it to the publisher.

    @ivar publisher: where accepted messages go.
    """

    _log = Logger()

    def __init__(self, publisher: IPublisher) -> None:
        self.publisher = publisher

    def publish(self, identity: Identity, message: Message) -> Deferred[PublishResult]:
        """
        Send C{message} for C{identity}.

        @return: fires with the broker's L{PublishResult}, or fails with a
            L{GatewayError}.
        """
        try:
            return self.publisher.publish(message, identity)
        except GatewayError as e:
            return fail(e)
