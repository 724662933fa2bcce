# -*- test-case-name: tests.mqtt.test_passthrough -*-
"""
L{OneShotSession}: one sender's session in broker mode, a single connection
(the next broker tried only while none answers) whose refusal or loss fails
every waiting message and ends the session.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from gateway.mqtt.connector import Broker, SessionSettings
from gateway.mqtt.outcomes import Outcome, PublishFailed, broker_busy, unavailable
from gateway.mqtt.protocol import ConnectFailed
from gateway.mqtt.session import BrokerSession


class OneShotSession(BrokerSession):
    """
    One sender's session in broker mode: it starts clean, ends with its
    connection, and logs nothing of its own (such sessions come and go with every
    HTTP/1.0 request; their outcome is in the HTTP answers).

    A broker that cannot be reached (or says it is unavailable) passes the session
    to the next one not yet tried; any other refusal, the last broker's failure
    or a lost connection ends the session: L{when_ended} fires with the
    L{PublishFailed} every waiting message failed with (C{CONNECT_REFUSED} with
    the CONNACK code, or C{UNAVAILABLE}).
    """

    def __init__(
        self,
        brokers: Sequence[Broker],
        settings: SessionSettings,
        **kw: object,
    ) -> None:
        super().__init__(brokers, attrs.evolve(settings, resumable=False), **kw)  # type: ignore[arg-type]
        self._tried = 0

    def _say(self, level: LogLevel, format: str, **kw: object) -> None:
        """Nothing: a sender's session's outcome is in its HTTP answers."""

    def _attempt_failed(self, failure: Failure, broker: Broker) -> None:
        self._connecting = None
        if not self.running:
            return
        self._tried += 1
        why = failure.value
        if isinstance(why, ConnectFailed) and why.reason_code is not None:
            reason = PublishFailed(
                Outcome.CONNECT_REFUSED,
                str(why),
                reason_code=why.reason_code,
                protocol_level=why.protocol_level,
            )
            unavailable_broker = broker_busy(why.reason_code, why.protocol_level)
        else:
            reason = unavailable("no MQTT broker is reachable")
            unavailable_broker = True
        if unavailable_broker and self._tried < len(self.brokers):
            self._index = (self._index + 1) % len(self.brokers)
            self._attempt()
        else:
            self._end(reason)

    def _connection_gone(self) -> None:
        self._end(unavailable("the connection to the broker was lost"))
