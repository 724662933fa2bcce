# -*- test-case-name: tests.mqtt.test_codec -*-
"""
Packets to bytes: L{encode} for every packet value, and the message path's
fast form (L{message_properties}, L{encode_message}) that builds a PUBLISH
without a packet value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.mqtt.codec.fields import (
    _MAX_VARINT,
    _U16,
    _U32,
    _binary,
    _pair,
    _string,
    _topic_problem,
    _varint,
)
from gateway.mqtt.codec.packets import (
    _ACK_TYPES,
    MQTT_3_1_1,
    MQTT_5,
    NO_PROPERTIES,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Properties,
    Publish,
    _Ack,
)
from gateway.mqtt.codec.properties import (
    _ACK,
    _CONNACK,
    _CONNECT,
    _DISCONNECT,
    _PUBLISH,
    _WILL,
    _Context,
    _encode_properties,
)

# -- encoding


def _frame(first: int, parts: list[bytes]) -> bytes:
    length = sum(map(len, parts))
    if length > _MAX_VARINT:
        raise ValueError(f"A remaining length of {length} is more than MQTT allows.")
    return b"".join((bytes((first,)), _varint(length), *parts))


def _check_range(value: int, low: int, high: int, what: str) -> None:
    if not low <= value <= high:
        raise ValueError(f"{what} {value!r} is not between {low} and {high}.")


def _is_empty(props: Properties) -> bool:
    return props is NO_PROPERTIES or props == NO_PROPERTIES


def _no_properties_at_4(props: Properties, level: int) -> None:
    if level == MQTT_3_1_1 and not _is_empty(props):
        raise ValueError("MQTT 3.1.1 packets have no properties.")


def _encode_connect(packet: Connect, _: int) -> bytes:
    level = packet.protocol_level
    _check_range(level, MQTT_3_1_1, MQTT_5, "Protocol level")
    _check_range(packet.keepalive, 0, 65535, "Keepalive")
    _no_properties_at_4(packet.properties, level)
    flags = 0x02 if packet.clean_start else 0
    payload = [_string(packet.client_id)]
    will = packet.will
    if will is not None:
        _check_range(will.qos, 0, 2, "Will QoS")
        if problem := _topic_problem(will.topic, False):
            raise ValueError(problem)
        _no_properties_at_4(will.properties, level)
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        if level == MQTT_5:
            payload.append(_encode_properties(will.properties, _WILL))
        payload += [_string(will.topic), _binary(will.payload)]
    if packet.username is not None:
        flags |= 0x80
        payload.append(_string(packet.username))
    if packet.password is not None:
        if level == MQTT_3_1_1 and packet.username is None:
            raise ValueError("MQTT 3.1.1 allows a password only with a user name.")
        flags |= 0x40
        payload.append(_binary(packet.password))
    header = b"\x00\x04MQTT" + bytes((level, flags)) + _U16.pack(packet.keepalive)
    if level == MQTT_5:
        header += _encode_properties(packet.properties, _CONNECT)
    return _frame(0x10, [header, *payload])


def _encode_connack(packet: Connack, level: int) -> bytes:
    _check_range(packet.reason_code, 0, 255, "Reason code")
    _no_properties_at_4(packet.properties, level)
    parts = [bytes((int(packet.session_present), packet.reason_code))]
    if level == MQTT_5:
        parts.append(_encode_properties(packet.properties, _CONNACK))
    return _frame(0x20, parts)


def _encode_publish(packet: Publish, level: int) -> bytes:
    qos = packet.qos
    _check_range(qos, 0, 2, "QoS")
    _no_properties_at_4(packet.properties, level)
    alias = level == MQTT_5 and packet.properties.topic_alias is not None
    if problem := _topic_problem(packet.topic, alias):
        raise ValueError(problem)
    first = 0x30 | qos << 1 | (0x08 if packet.dup else 0) | (1 if packet.retain else 0)
    parts = [_string(packet.topic)]
    if qos:
        if packet.packet_id is None:
            raise ValueError(f"A QoS {qos} PUBLISH needs a packet id.")
        _check_range(packet.packet_id, 1, 65535, "Packet id")
        parts.append(_U16.pack(packet.packet_id))
    elif packet.packet_id is not None:
        raise ValueError("A QoS 0 PUBLISH has no packet id.")
    elif packet.dup:
        raise ValueError("A QoS 0 PUBLISH cannot be a duplicate.")
    if level == MQTT_5:
        parts.append(_encode_properties(packet.properties, _PUBLISH))
    parts.append(packet.payload)
    return _frame(first, parts)


_ACK_FIRST_BYTES = {cls: first for first, cls in _ACK_TYPES.items()}


def _encode_ack(packet: _Ack, level: int) -> bytes:
    _check_range(packet.packet_id, 1, 65535, "Packet id")
    _check_range(packet.reason_code, 0, 255, "Reason code")
    _no_properties_at_4(packet.properties, level)
    first = _ACK_FIRST_BYTES[type(packet)]
    parts = [_U16.pack(packet.packet_id)]
    if level == MQTT_5:
        parts += _reason_and_properties(packet.reason_code, packet.properties, _ACK)
    return _frame(first, parts)


def _encode_disconnect(packet: Disconnect, level: int) -> bytes:
    _check_range(packet.reason_code, 0, 255, "Reason code")
    _no_properties_at_4(packet.properties, level)
    if level == MQTT_3_1_1:
        return b"\xe0\x00"
    parts = _reason_and_properties(packet.reason_code, packet.properties, _DISCONNECT)
    return _frame(0xE0, parts)


def _reason_and_properties(
    reason_code: int, props: Properties, context: _Context
) -> list[bytes]:
    """The MQTT 5 short forms: leave out what is zero and empty at the end."""
    if _is_empty(props):
        return [bytes((reason_code,))] if reason_code else []
    return [bytes((reason_code,)), _encode_properties(props, context)]


_ENCODERS: dict[type, Callable[[Any, int], bytes]] = {
    Connect: _encode_connect,
    Connack: _encode_connack,
    Publish: _encode_publish,
    **dict.fromkeys(_ACK_FIRST_BYTES, _encode_ack),
    PingReq: lambda packet, level: b"\xc0\x00",
    PingResp: lambda packet, level: b"\xd0\x00",
    Disconnect: _encode_disconnect,
}


def encode(packet: Packet, protocol_level: int) -> bytes:
    """
    The complete bytes of C{packet} as sent at C{protocol_level}.

    A L{Connect} is encoded at its own C{protocol_level}. At level 4 the
    properties must be empty and the reason codes of acknowledgements and
    L{Disconnect} are not sent. At level 5 the short forms are used: an
    acknowledgement with reason code 0 and no properties is the packet id alone,
    a L{Disconnect} with reason code 0 and no properties has nothing after the
    fixed header.

    @raise ValueError: if the packet cannot be sent as it is: a value out of
        range, a string longer than 65535 bytes or containing U+0000, a
        wildcard in a topic name, a packet id missing (QoS 1 and 2) or present
        (QoS 0), properties the packet type cannot carry, or more than
        268435455 bytes after the fixed header.
    @raise TypeError: if C{packet} is not one of the packet classes.
    """
    if protocol_level not in (MQTT_3_1_1, MQTT_5):
        raise ValueError(f"Unknown MQTT protocol level {protocol_level!r}.")
    encoder = _ENCODERS.get(type(packet))
    if encoder is None:
        raise TypeError(f"{packet!r} is not an MQTT packet.")
    return encoder(packet, protocol_level)


def message_properties(
    *,
    payload_format_indicator: int | None = None,
    message_expiry_interval: int | None = None,
    content_type: str | None = None,
    response_topic: str | None = None,
    correlation_data: bytes | None = None,
    user_properties: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """
    The MQTT 5 property block of an application message's PUBLISH (length
    included), as L{encode} writes it for a L{Publish} with these properties,
    built without a L{Properties} value: the message path's fast form.

    @raise ValueError: as L{encode} does for a value it cannot send.
    """
    parts = []
    if payload_format_indicator is not None:
        if payload_format_indicator not in (0, 1):
            raise ValueError(
                f"payload_format_indicator cannot be {payload_format_indicator!r}."
            )
        parts.append(b"\x01\x01" if payload_format_indicator else b"\x01\x00")
    if message_expiry_interval is not None:
        if not 0 <= message_expiry_interval <= 0xFFFFFFFF:
            raise ValueError(
                f"message_expiry_interval cannot be {message_expiry_interval!r}."
            )
        parts.append(b"\x02" + _U32.pack(message_expiry_interval))
    if content_type is not None:
        parts.append(b"\x03" + _string(content_type))
    if response_topic is not None:
        parts.append(b"\x08" + _string(response_topic))
    if correlation_data is not None:
        parts.append(b"\x09" + _binary(correlation_data))
    for pair in user_properties:
        parts.append(b"\x26" + _pair(pair))
    body = b"".join(parts)
    return _varint(len(body)) + body


def encode_message(
    topic: str,
    payload: bytes,
    *,
    qos: int,
    retain: bool,
    packet_id: int | None,
    properties: bytes | None,
) -> bytes:
    """
    The bytes of an application message's PUBLISH (not DUP): at MQTT 5 when
    C{properties} is a block from L{message_properties}, at MQTT 3.1.1 when it
    is C{None}. The same bytes as L{encode} of the equivalent L{Publish}.

    @raise ValueError: as L{encode} does.
    """
    if "+" in topic or "#" in topic or not topic:
        raise ValueError(f"The topic {topic!r} cannot be published to.")
    first = 0x30 | qos << 1 | (1 if retain else 0)
    head = _string(topic)
    if qos:
        if packet_id is None or not 1 <= packet_id <= 65535:
            raise ValueError(f"A QoS {qos} PUBLISH needs a packet id.")
        head += _U16.pack(packet_id)
    if properties is not None:
        head += properties
    length = len(head) + len(payload)
    if length > _MAX_VARINT:
        raise ValueError(f"A remaining length of {length} is more than MQTT allows.")
    return b"".join((bytes((first,)), _varint(length), head, payload))


def as_duplicate(data: bytes) -> bytes:
    """A QoS 1/2 PUBLISH's bytes with the DUP flag set (a retransmission)."""
    return bytes((data[0] | 0x08,)) + data[1:]
