# -*- test-case-name: tests.mqtt.test_window -*-
"""
The values the in-flight window keeps: a message waiting for the broker
(L{Pending}) and its PUBLISH at a protocol level (L{encode}), the limits a
broker announces (L{BrokerLimits}) and what it showed of itself (L{Learned}).
"""

from __future__ import annotations

import math

import attrs
from twisted.internet.defer import Deferred

from gateway.model import Message, PublishResult
from gateway.mqtt import codec
from gateway.mqtt.outcomes import Outcome, PublishFailed


@attrs.frozen
class BrokerLimits:
    """
    What the broker allows: what its MQTT 5 CONNACK announces (3.1.1 brokers
    announce nothing), narrowed by what it has shown (L{Learned}).
    """

    receive_maximum: int = 65535
    maximum_packet_size: int | None = None
    maximum_qos: int = 2
    retain_available: bool = True

    @classmethod
    def from_connack(cls, connack: codec.Connack, level: int) -> BrokerLimits:
        """The limits a CONNACK announces, defaults for what it leaves out."""
        if level != codec.MQTT_5:
            return cls()
        p = connack.properties
        return cls(
            receive_maximum=p.receive_maximum or 65535,
            maximum_packet_size=p.maximum_packet_size,
            maximum_qos=2 if p.maximum_qos is None else p.maximum_qos,
            retain_available=p.retain_available != 0,
        )

    def narrowed(self, learned: Learned) -> BrokerLimits:
        """These limits, with what the broker showed by its behaviour."""
        size = self.maximum_packet_size
        if learned.packet_size is not None:
            size = (
                learned.packet_size if size is None else min(size, learned.packet_size)
            )
        return attrs.evolve(
            self,
            maximum_packet_size=size,
            maximum_qos=min(self.maximum_qos, learned.qos),
        )


@attrs.define
class Learned:
    """What one broker showed of itself, kept across connections."""

    qos: int = 2  # the highest QoS it honours (RabbitMQ: 1)
    packet_size: int | None = None  # it closed the connection on larger packets
    largest_taken: int = 0  # the largest packet it confirmed
    # Packets it closed the connection on that were larger than any it took: two
    # make a size limit (one may have failed for its content, a deep topic, say).
    too_large: list[int] = attrs.Factory(list)


@attrs.define(eq=False)
class Pending:
    """A message a caller waits for (or did, before its request timed out)."""

    message: Message
    extra_properties: tuple[tuple[str, str], ...]
    message_id: str
    deferred: Deferred[PublishResult]
    queued_at: float = 0.0
    deadline: float = math.inf
    data: bytes = b""  # the PUBLISH, encoded at the connection's level
    packet_id: int | None = None
    released: bool = False  # QoS 2: PUBREC received, PUBREL sent
    on_wire: bool = False  # sent on the current connection, not yet confirmed
    strikes: int = 0  # connection losses it was on the wire unconfirmed for
    first_sent: float | None = None

    @property
    def waiting(self) -> bool:
        return not self.deferred.called

    def succeed(self, reason_code: int = 0) -> None:
        if not self.deferred.called:
            self.deferred.callback(PublishResult(self.message_id, reason_code))

    def fail(self, failure: PublishFailed) -> None:
        if not self.deferred.called:
            self.deferred.errback(failure)


def encode(pending: Pending, level: int, packet_id: int | None) -> bytes:
    """
    The PUBLISH of a message at a protocol level, the sender's properties last.

    @raise PublishFailed: C{UNSUPPORTED_PROPERTY} for MQTT 5 properties on a
        3.1.1 session, C{UNSENDABLE} for what no broker would take.
    """
    m = pending.message
    if level == codec.MQTT_3_1_1:
        if m.has_mqtt5_properties():
            raise PublishFailed(
                Outcome.UNSUPPORTED_PROPERTY,
                "the broker speaks MQTT 3.1.1, which cannot carry MQTT 5 properties",
            )
        properties = None
    try:
        if level != codec.MQTT_3_1_1:
            properties = codec.message_properties(
                payload_format_indicator=m.payload_format_indicator,
                message_expiry_interval=m.message_expiry_interval,
                content_type=m.content_type,
                response_topic=m.response_topic,
                correlation_data=m.correlation_data,
                user_properties=m.user_properties + pending.extra_properties,
            )
        return codec.encode_message(
            m.topic,
            m.payload,
            qos=m.qos,
            retain=m.retain,
            packet_id=packet_id,
            properties=properties,
        )
    except ValueError as e:
        raise PublishFailed(
            Outcome.UNSENDABLE, f"the message cannot be sent over MQTT: {e}"
        ) from None
