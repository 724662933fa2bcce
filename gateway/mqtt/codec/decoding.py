# -*- test-case-name: tests.mqtt.test_codec -*-
"""
Bytes to packets: the L{Decoder} of one direction of an MQTT byte stream, and
a parser for each packet type.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.mqtt.codec.fields import (
    _Buffer,
    _read_binary,
    _read_byte,
    _read_string,
    _read_u16,
    _topic_problem,
    _truncated,
)
from gateway.mqtt.codec.packets import (
    _ACK_TYPES,
    MQTT_3_1_1,
    MQTT_5,
    NO_PROPERTIES,
    Connack,
    Connect,
    Disconnect,
    MalformedPacket,
    Packet,
    PingReq,
    PingResp,
    Properties,
    Publish,
    Will,
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
    _read_properties,
)

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
