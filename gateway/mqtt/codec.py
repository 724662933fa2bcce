# -*- test-case-name: tests.mqtt.test_codec -*-
"""
MQTT 3.1.1 (protocol level 4) and MQTT 5 (level 5) packets as values, without I/O.

L{encode} turns a packet into bytes; a L{Decoder} turns a byte stream back into
packets. Only the packets a publishing client and a broker exchange are supported:
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK and AUTH are rejected.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from operator import attrgetter
from typing import Any, NamedTuple

import attrs

from gateway.mqtt.strings import string_problem

MQTT_3_1_1 = 4
MQTT_5 = 5

_MAX_VARINT = 268_435_455
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_Buffer = bytes | bytearray


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


# -- primitive fields.  Readers take (buffer, position, end) and return the value
# and the position after it; they never read at or beyond end.


def _truncated() -> MalformedPacket:
    return MalformedPacket("The packet ends in the middle of a field.")


def _varint(value: int) -> bytes:
    if value < 128:
        return bytes((value,))
    out = bytearray()
    while value > 127:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _binary(value: bytes) -> bytes:
    if len(value) > 65535:
        raise ValueError(f"A field of {len(value)} bytes is longer than MQTT allows.")
    return _U16.pack(len(value)) + value


def _string(value: str) -> bytes:
    # Strict brokers close the connection on such a string: never write one.
    problem = string_problem(value)
    if problem is not None:
        raise ValueError(f"The MQTT string {value[:40]!r}... {problem}.")
    data = value.encode()
    return _U16.pack(len(data)) + data


def _pair(value: tuple[str, str]) -> bytes:
    name, text = value
    return _string(name) + _string(text)


def _read_byte(m: _Buffer, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise _truncated()
    return m[pos], pos + 1


def _read_u16(m: _Buffer, pos: int, end: int) -> tuple[int, int]:
    if pos + 2 > end:
        raise _truncated()
    return m[pos] << 8 | m[pos + 1], pos + 2


def _read_u32(m: _Buffer, pos: int, end: int) -> tuple[int, int]:
    if pos + 4 > end:
        raise _truncated()
    return int.from_bytes(m[pos : pos + 4]), pos + 4


def _read_varint(m: _Buffer, pos: int, end: int) -> tuple[int, int]:
    if pos < end and m[pos] < 0x80:
        return m[pos], pos + 1
    value = shift = 0
    for i in range(pos, min(pos + 4, end)):
        byte = m[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0:
                raise MalformedPacket("A variable byte integer has a needless 0 byte.")
            return value, i + 1
        shift += 7
    if end - pos >= 4:
        raise MalformedPacket("A variable byte integer is longer than 4 bytes.")
    raise _truncated()


def _read_field(m: _Buffer, pos: int, end: int) -> tuple[_Buffer, int]:
    """Read a length-prefixed field (binary data or a string) as raw bytes."""
    start = pos + 2
    if start > end:
        raise _truncated()
    stop = start + (m[pos] << 8 | m[pos + 1])
    if stop > end:
        raise _truncated()
    return m[start:stop], stop


def _read_binary(m: _Buffer, pos: int, end: int) -> tuple[bytes, int]:
    data, pos = _read_field(m, pos, end)
    return bytes(data), pos


def _read_string(m: _Buffer, pos: int, end: int) -> tuple[str, int]:
    data, pos = _read_field(m, pos, end)
    try:
        value = data.decode()
    except UnicodeDecodeError:
        raise MalformedPacket("A string is not valid UTF-8.") from None
    if "\x00" in value:
        raise MalformedPacket("A string contains U+0000.")
    return value, pos


def _read_pair(m: _Buffer, pos: int, end: int) -> tuple[tuple[str, str], int]:
    name, pos = _read_string(m, pos, end)
    value, pos = _read_string(m, pos, end)
    return (name, value), pos


# -- properties, driven by one table


class _Kind(NamedTuple):
    read: Callable[[_Buffer, int, int], tuple[Any, int]]
    write: Callable[[Any], bytes]
    high: int | None  # the largest value, for integers


_BYTE = _Kind(_read_byte, lambda v: bytes((v,)), 255)
_TWO = _Kind(_read_u16, _U16.pack, 65535)
_FOUR = _Kind(_read_u32, _U32.pack, 2**32 - 1)
_VARIABLE = _Kind(_read_varint, _varint, _MAX_VARINT)
_STRING = _Kind(_read_string, _string, None)
_BINARY = _Kind(_read_binary, _binary, None)
_PAIR = _Kind(_read_pair, _pair, None)


class _Spec(NamedTuple):
    ident: int
    name: str
    kind: _Kind
    low: int
    high: int | None
    write: Callable[[Any], bytes]  # one property, identifier included
    repeats: bool = False


def _spec(ident: int, name: str, kind: _Kind, low: int = 0, high: int = -1) -> _Spec:
    prefix, write, top = bytes((ident,)), kind.write, kind.high if high < 0 else high

    def checked(value: Any) -> bytes:
        if top is not None and not low <= value <= top:
            raise ValueError(f"{name} cannot be {value!r}.")
        return prefix + write(value)

    return _Spec(ident, name, kind, low, top, checked)


_PROPERTIES = (
    _spec(0x01, "payload_format_indicator", _BYTE, 0, 1),
    _spec(0x02, "message_expiry_interval", _FOUR),
    _spec(0x03, "content_type", _STRING),
    _spec(0x08, "response_topic", _STRING),
    _spec(0x09, "correlation_data", _BINARY),
    _spec(0x0B, "subscription_identifiers", _VARIABLE, 1)._replace(repeats=True),
    _spec(0x11, "session_expiry_interval", _FOUR),
    _spec(0x12, "assigned_client_identifier", _STRING),
    _spec(0x13, "server_keep_alive", _TWO),
    _spec(0x15, "authentication_method", _STRING),
    _spec(0x16, "authentication_data", _BINARY),
    _spec(0x17, "request_problem_information", _BYTE, 0, 1),
    _spec(0x18, "will_delay_interval", _FOUR),
    _spec(0x19, "request_response_information", _BYTE, 0, 1),
    _spec(0x1A, "response_information", _STRING),
    _spec(0x1C, "server_reference", _STRING),
    _spec(0x1F, "reason_string", _STRING),
    _spec(0x21, "receive_maximum", _TWO, 1),
    _spec(0x22, "topic_alias_maximum", _TWO),
    _spec(0x23, "topic_alias", _TWO, 1),
    _spec(0x24, "maximum_qos", _BYTE, 0, 1),
    _spec(0x25, "retain_available", _BYTE, 0, 1),
    _spec(0x26, "user_properties", _PAIR)._replace(repeats=True),
    _spec(0x27, "maximum_packet_size", _FOUR, 1),
    _spec(0x28, "wildcard_subscription_available", _BYTE, 0, 1),
    _spec(0x29, "subscription_identifier_available", _BYTE, 0, 1),
    _spec(0x2A, "shared_subscription_available", _BYTE, 0, 1),
)

_REPEATING = [spec.name for spec in _PROPERTIES if spec.repeats]


def _getter(names: list[str]) -> Callable[[Properties], tuple[Any, ...]]:
    get = attrgetter(*names)
    return get if len(names) > 1 else lambda props: (get(props),)


class _Context:
    """The properties one kind of packet may carry, with fast accessors."""

    def __init__(self, packet: str, *idents: int) -> None:
        self.packet = packet
        self.specs = {spec.ident: spec for spec in _PROPERTIES if spec.ident in idents}
        self.order = tuple(self.specs.values())
        self.values = _getter([spec.name for spec in self.order])
        others = [spec for spec in _PROPERTIES if spec.ident not in idents]
        self.others = _getter([spec.name for spec in others])
        self.absent = tuple(() if spec.repeats else None for spec in others)


_CONNECT = _Context("CONNECT", 0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27)
_WILL = _Context("a will", 0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26)
_PUBLISH = _Context("PUBLISH", 0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26)
_ACK = _Context("an acknowledgement", 0x1F, 0x26)
_DISCONNECT = _Context("DISCONNECT", 0x11, 0x1C, 0x1F, 0x26)
# fmt: off
_CONNACK = _Context(
    "CONNACK", 0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x24,
    0x25, 0x26, 0x27, 0x28, 0x29, 0x2A,
)
# fmt: on


def _encode_properties(props: Properties, context: _Context) -> bytes:
    if props is NO_PROPERTIES:
        return b"\x00"
    if context.others(props) != context.absent:
        raise ValueError(f"{props!r} has properties {context.packet} cannot carry.")
    parts: list[bytes] = []
    for spec, value in zip(context.order, context.values(props), strict=True):
        if value is None or value == ():
            continue
        if spec.repeats:
            parts += map(spec.write, value)
        else:
            parts.append(spec.write(value))
    body = b"".join(parts)
    return _varint(len(body)) + body


def _read_properties(
    m: _Buffer, pos: int, end: int, context: _Context
) -> tuple[Properties, int]:
    length, pos = _read_varint(m, pos, end)
    if not length:
        return NO_PROPERTIES, pos
    stop = pos + length
    if stop > end:
        raise _truncated()
    found: dict[str, Any] = {}
    while pos < stop:
        # Identifiers are variable byte integers, but one of 128 or more (two
        # bytes) would not be one of ours anyway.
        spec = context.specs.get(m[pos])
        if spec is None:
            raise MalformedPacket(f"{context.packet} has property 0x{m[pos]:02X}.")
        value, pos = spec.kind.read(m, pos + 1, stop)
        if spec.high is not None and not spec.low <= value <= spec.high:
            raise MalformedPacket(f"{spec.name} is {value}.", 0x82)
        if spec.repeats:
            found.setdefault(spec.name, []).append(value)
        elif spec.name in found:
            raise MalformedPacket(f"{spec.name} appears twice.", 0x82)
        else:
            found[spec.name] = value
    for name in _REPEATING:
        if name in found:
            found[name] = tuple(found[name])
    return Properties(**found), pos


# -- encoding


def _frame(first: int, parts: list[bytes]) -> bytes:
    length = sum(map(len, parts))
    if length > _MAX_VARINT:
        raise ValueError(f"A remaining length of {length} is more than MQTT allows.")
    return b"".join((bytes((first,)), _varint(length), *parts))


def _topic_problem(topic: str, empty_allowed: bool) -> str | None:
    if "+" in topic or "#" in topic:
        return f"The topic {topic!r} contains a wildcard."
    return None if topic or empty_allowed else "A topic is empty."


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


_ACK_TYPES: dict[int, type[_Ack]] = {
    0x40: PubAck,
    0x50: PubRec,
    0x62: PubRel,  # PUBREL's fixed header flags are 0b0010
    0x70: PubComp,
}
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


# -- decoding.  Parsers take (buffer, start, end, first byte, level).


def _expect_end(pos: int, end: int, what: str) -> None:
    if pos != end:
        raise MalformedPacket(f"{what} has {end - pos} bytes more than its fields.")


def _parse_connect(m: _Buffer, pos: int, end: int, first: int, _: int) -> Connect:
    name, pos = _read_string(m, pos, end)
    if name not in ("MQTT", "MQIsdp"):
        raise MalformedPacket(f"CONNECT names protocol {name!r}, not MQTT.")
    if pos + 4 > end:
        raise _truncated()
    level, flags = m[pos], m[pos + 1]
    if name != "MQTT" or level not in (MQTT_3_1_1, MQTT_5):
        raise MalformedPacket(f"CONNECT asks for {name} level {level}.", 0x84)
    keepalive = m[pos + 2] << 8 | m[pos + 3]
    pos += 4
    if flags & 0x01:
        raise MalformedPacket("CONNECT sets the reserved flag.")
    will_qos = flags >> 3 & 3
    if will_qos == 3 or (not flags & 0x04 and flags & 0x38):
        raise MalformedPacket("CONNECT has an impossible will QoS or retain flag.")
    if level == MQTT_3_1_1 and flags & 0xC0 == 0x40:
        raise MalformedPacket("MQTT 3.1.1 CONNECT has a password but no user name.")
    props = NO_PROPERTIES
    if level == MQTT_5:
        props, pos = _read_properties(m, pos, end, _CONNECT)
    client_id, pos = _read_string(m, pos, end)
    will = None
    if flags & 0x04:
        will_props = NO_PROPERTIES
        if level == MQTT_5:
            will_props, pos = _read_properties(m, pos, end, _WILL)
        topic, pos = _read_string(m, pos, end)
        if problem := _topic_problem(topic, False):
            raise MalformedPacket(problem)
        payload, pos = _read_binary(m, pos, end)
        will = Will(topic, payload, will_qos, bool(flags & 0x20), will_props)
    username = password = None
    if flags & 0x80:
        username, pos = _read_string(m, pos, end)
    if flags & 0x40:
        password, pos = _read_binary(m, pos, end)
    _expect_end(pos, end, "CONNECT")
    clean = bool(flags & 0x02)
    return Connect(client_id, level, clean, keepalive, username, password, will, props)


def _parse_connack(m: _Buffer, pos: int, end: int, first: int, level: int) -> Connack:
    if end - pos < 2:
        raise _truncated()
    if m[pos] & 0xFE:
        raise MalformedPacket("CONNACK sets reserved acknowledge flags.")
    session_present, reason_code = bool(m[pos]), m[pos + 1]
    props, pos = NO_PROPERTIES, pos + 2
    if level == MQTT_5:
        props, pos = _read_properties(m, pos, end, _CONNACK)
    _expect_end(pos, end, "CONNACK")
    return Connack(session_present, reason_code, props)


def _parse_publish(m: _Buffer, pos: int, end: int, first: int, level: int) -> Publish:
    qos = first >> 1 & 3
    if qos == 3:
        raise MalformedPacket("PUBLISH has QoS 3.")
    dup = bool(first & 0x08)
    if dup and not qos:
        raise MalformedPacket("A QoS 0 PUBLISH has the DUP flag.")
    topic, pos = _read_string(m, pos, end)
    packet_id = None
    if qos:
        packet_id, pos = _read_u16(m, pos, end)
        if not packet_id:
            raise MalformedPacket("PUBLISH has packet id 0.", 0x82)
    props = NO_PROPERTIES
    if level == MQTT_5:
        props, pos = _read_properties(m, pos, end, _PUBLISH)
    if problem := _topic_problem(topic, props.topic_alias is not None):
        raise MalformedPacket(problem, 0x82 if not topic and level == MQTT_5 else 0x81)
    payload = bytes(m[pos:end])
    return Publish(topic, payload, qos, bool(first & 1), dup, packet_id, props)


def _parse_ack(m: _Buffer, pos: int, end: int, first: int, level: int) -> _Ack:
    cls = _ACK_TYPES[first]
    packet_id, pos = _read_u16(m, pos, end)
    if not packet_id:
        raise MalformedPacket(f"{cls.__name__} has packet id 0.", 0x82)
    if pos == end:
        return cls(packet_id)
    if level == MQTT_3_1_1:
        raise MalformedPacket(f"MQTT 3.1.1 {cls.__name__} is longer than 2 bytes.")
    reason_code, props, pos = _parse_reason(m, pos, end, _ACK)
    _expect_end(pos, end, cls.__name__)
    return cls(packet_id, reason_code, props)


def _parse_reason(
    m: _Buffer, pos: int, end: int, context: _Context
) -> tuple[int, Properties, int]:
    reason_code, pos = _read_byte(m, pos, end)
    if pos == end:
        return reason_code, NO_PROPERTIES, pos
    props, pos = _read_properties(m, pos, end, context)
    return reason_code, props, pos


def _parse_disconnect(
    m: _Buffer, pos: int, end: int, first: int, level: int
) -> Disconnect:
    if pos == end:
        return Disconnect()
    if level == MQTT_3_1_1:
        raise MalformedPacket("MQTT 3.1.1 DISCONNECT has a body.")
    reason_code, props, pos = _parse_reason(m, pos, end, _DISCONNECT)
    _expect_end(pos, end, "DISCONNECT")
    return Disconnect(reason_code, props)


def _parse_ping(m: _Buffer, pos: int, end: int, first: int, level: int) -> Packet:
    _expect_end(pos, end, "PINGREQ" if first == 0xC0 else "PINGRESP")
    return PingReq() if first == 0xC0 else PingResp()


_Parser = Callable[[_Buffer, int, int, int, int], Packet]
# For each first byte of a fixed header: the parser of the packet.  Flags other
# than these are malformed; PUBLISH's flags are checked by its parser.
_PARSERS: dict[int, _Parser] = {
    0x10: _parse_connect,
    0x20: _parse_connack,
    **{0x30 | flags: _parse_publish for flags in range(16)},
    **dict.fromkeys(_ACK_TYPES, _parse_ack),
    0xC0: _parse_ping,
    0xD0: _parse_ping,
    0xE0: _parse_disconnect,
}
_UNSUPPORTED = {
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    15: "AUTH",
}


def _unexpected(first: int) -> MalformedPacket:
    name = _UNSUPPORTED.get(first >> 4)
    if name is not None:
        return MalformedPacket(f"{name} is not supported.", 0x82)
    return MalformedPacket(f"0x{first:02X} does not start an MQTT packet.")


class Decoder:
    """
    An incremental decoder of one direction of an MQTT byte stream.

    @ivar protocol_level: how packets other than CONNECT are parsed (4 or 5).
        Decoding a L{Connect} sets it to the CONNECT's level, as the rest of the
        stream then speaks that level.
    @ivar max_packet_size: the largest packet accepted, fixed header included.
    """

    def __init__(
        self, protocol_level: int = MQTT_5, max_packet_size: int = 268_435_460
    ) -> None:
        self.protocol_level = protocol_level
        self.max_packet_size = max_packet_size
        self._buffer = bytearray()
        self._error: MalformedPacket | None = None

    def feed(self, data: bytes) -> list[Packet]:
        """
        Append C{data}; return every packet now complete, in order, possibly
        none, and keep the rest buffered.

        @raise MalformedPacket: if the stream is not valid MQTT, with reason
            code 0x95 as soon as a fixed header announces a packet larger than
            C{max_packet_size}. The decoder is then unusable: every later call
            raises the same error.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        if buffer:
            buffer += data
            source: _Buffer = buffer
        else:
            # The common case, whole packets: parse them without copying.
            source = data if type(data) is bytes else bytes(data)
        packets: list[Packet] = []
        try:
            used = self._parse(source, packets)
        except MalformedPacket as e:
            self._error = e
            self._buffer = bytearray()
            raise
        if source is buffer:
            del buffer[:used]
        elif used < len(source):
            buffer += source[used:]
        return packets

    def _parse(self, m: _Buffer, packets: list[Packet]) -> int:
        """Parse whole packets from C{m}; return how many bytes they took."""
        size = len(m)
        pos = 0
        while pos < size:
            first = m[pos]
            parser = _PARSERS.get(first)
            if parser is None:
                raise _unexpected(first)
            length = shift = 0
            start = pos + 1
            while True:
                if start >= size:
                    return pos
                byte = m[start]
                start += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                if shift == 28:
                    raise MalformedPacket("The remaining length has over 4 bytes.")
            if byte == 0 and shift:
                raise MalformedPacket("The remaining length has a needless 0 byte.")
            end = start + length
            if end - pos > self.max_packet_size:
                raise MalformedPacket(
                    f"A packet of {end - pos} bytes is larger than the maximum of "
                    f"{self.max_packet_size}.",
                    0x95,
                )
            if end > size:
                return pos
            packet = parser(m, start, end, first, self.protocol_level)
            if type(packet) is Connect:
                self.protocol_level = packet.protocol_level
            packets.append(packet)
            pos = end
        return pos
