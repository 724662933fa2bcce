# -*- test-case-name: tests.mqtt.test_outcomes -*-
"""
How a publish can fail, in MQTT's terms: the broker session's errors say what
happened at the broker, never which HTTP status or request parameter that means.
The HTTP side maps them once (L{gateway.errors.from_publish_failure}).
"""

from __future__ import annotations

import enum


class Outcome(enum.Enum):
    """What went wrong with a message at the broker side."""

    #: No broker session can take it now (unreachable, queue full, shutting
    #: down, the connection lost before the broker read a QoS 0 message).
    UNAVAILABLE = "unavailable"
    #: No acknowledgement within the publish timeout.
    TIMEOUT = "timeout"
    #: The broker lost the session of a QoS 2 message: delivered or not, unknown.
    SESSION_LOST = "session-lost"
    #: The broker answered with a failure reason code (C{reason_code}).
    REASON_CODE = "reason-code"
    #: Above the QoS the broker grants (announced, or shown by a PUBACK to QoS 2).
    QOS_LIMIT = "qos-limit"
    #: The broker does not take retained messages.
    RETAIN_LIMIT = "retain-limit"
    #: Larger than the broker's packet size limit (announced, or learned).
    SIZE_LIMIT = "size-limit"
    #: MQTT 5 properties on a session that speaks 3.1.1.
    UNSUPPORTED_PROPERTY = "unsupported-property"
    #: Not sendable as MQTT at all (a string or field the codec refuses).
    UNSENDABLE = "unsendable"
    #: The broker closes the connection on this message (C{reason_code}: the
    #: reason of its DISCONNECT, when it sent one).
    CLOSED_ON = "closed-on"
    #: The broker refused the sender's CONNECT (broker mode; C{reason_code} is
    #: the CONNACK code at C{protocol_level}).
    CONNECT_REFUSED = "connect-refused"


class PublishFailed(Exception):
    """
    A message the broker side did not take.

    @ivar outcome: what happened.
    @ivar message: a sentence for the client; never a password or a payload.
    @ivar reason_code: the broker's reason code, where one is part of it.
    @ivar retry_after: seconds after which trying again makes sense, if known.
    @ivar protocol_level: the protocol level of a refused CONNECT.
    """

    def __init__(
        self,
        outcome: Outcome,
        message: str,
        *,
        reason_code: int | None = None,
        retry_after: int | None = None,
        protocol_level: int = 5,
    ) -> None:
        super().__init__(outcome, message)
        self.outcome = outcome
        self.message = message
        self.reason_code = reason_code
        self.retry_after = retry_after
        self.protocol_level = protocol_level

    def __repr__(self) -> str:
        return f"PublishFailed({self.outcome.name}, {self.message!r})"


def unavailable(message: str, retry_after: int = 1) -> PublishFailed:
    """No session can take the message now (a 503 to HTTP clients)."""
    return PublishFailed(Outcome.UNAVAILABLE, message, retry_after=retry_after)


def broker_busy(connack_code: int, protocol_level: int) -> bool:
    """Whether a CONNACK refusal says the broker is unavailable or busy (worth
    trying the next broker) rather than refusing the client itself."""
    if protocol_level == 4 or connack_code < 0x80:
        return connack_code == 3  # 3.1.1: server unavailable
    return connack_code in (0x88, 0x89)  # MQTT 5: unavailable, busy
