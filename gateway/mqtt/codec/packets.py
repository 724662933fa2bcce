# -*- test-case-name: tests.mqtt.test_codec -*-
"""
The MQTT packets a publishing client and a broker exchange, as frozen values,
and the protocol levels they are encoded at.
"""

from __future__ import annotations

import attrs

__all__ = [
    "MQTT_3_1_1",
    "MQTT_5",
    "NO_PROPERTIES",
    "Connack",
    "Connect",
    "Disconnect",
    "MalformedPacket",
    "Packet",
    "PingReq",
    "PingResp",
    "Properties",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "Will",
]

MQTT_3_1_1 = 4
MQTT_5 = 5


class MalformedPacket(ValueError):
    """
    The bytes received are not a valid MQTT packet.

    @ivar reason_code: the MQTT 5 reason code to close the connection with: 0x81
        (malformed packet), 0x82 (protocol error), 0x84 (unsupported protocol
        version, CONNECT only) or 0x95 (packet too large).
    """

    def __init__(self, message: str, reason_code: int = 0x81) -> None:
        super().__init__(message)
        self.reason_code = reason_code


# Not slotted: a frozen slotted class sets its 27 attributes one call at a time,
# which doubles the cost of creating one on every request.
@attrs.frozen(slots=False)
class Properties:
    """
    The MQTT 5 properties of a packet; C{None} or C{()} for each one absent.

    C{subscription_identifiers} and C{user_properties} may repeat and keep their
    order. Which properties a packet may carry is decided by the packet type.
    """

    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None


NO_PROPERTIES = Properties()


@attrs.frozen
class Will:
    """The message the broker publishes if the client goes away unannounced."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Connect:
    """CONNECT; C{protocol_level} decides how it is encoded."""

    client_id: str
    protocol_level: int = MQTT_5
    clean_start: bool = True
    keepalive: int = 60
    username: str | None = None
    password: bytes | None = attrs.field(default=None, repr=False)
    will: Will | None = None
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Connack:
    """CONNACK; at level 4 C{reason_code} is the return code (0 to 5)."""

    session_present: bool = False
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Publish:
    """PUBLISH; C{packet_id} is set exactly when C{qos} is 1 or 2."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class _Acknowledgement:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class PubAck(_Acknowledgement):
    """PUBACK: the answer to a QoS 1 PUBLISH."""


@attrs.frozen
class PubRec(_Acknowledgement):
    """PUBREC: the first answer to a QoS 2 PUBLISH."""


@attrs.frozen
class PubRel(_Acknowledgement):
    """PUBREL: the sender's answer to PUBREC."""


@attrs.frozen
class PubComp(_Acknowledgement):
    """PUBCOMP: the last answer to a QoS 2 PUBLISH."""


@attrs.frozen
class PingReq:
    """PINGREQ."""


@attrs.frozen
class PingResp:
    """PINGRESP."""


@attrs.frozen
class Disconnect:
    """DISCONNECT; the reason code and properties exist in MQTT 5 only."""

    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


_Ack = PubAck | PubRec | PubRel | PubComp
Packet = Connect | Connack | Publish | _Ack | PingReq | PingResp | Disconnect

_ACK_TYPES: dict[int, type[_Ack]] = {
    0x40: PubAck,
    0x50: PubRec,
    0x62: PubRel,  # PUBREL's fixed header flags are 0b0010
    0x70: PubComp,
}
