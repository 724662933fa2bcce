# -*- test-case-name: tests.mqtt.test_codec -*-
"""
The primitive fields of MQTT packets: integers, variable byte integers,
binary data, UTF-8 strings and string pairs, written and read.
"""

from __future__ import annotations

import struct

from gateway.memo import ShortMemo
from gateway.mqtt.codec.packets import MalformedPacket
from gateway.mqtt.strings import string_problem

_MAX_VARINT = 268_435_455
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_Buffer = bytes | bytearray


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


# Encoded short strings: topics, property names and client ids come again and
# again, and checking and encoding one costs more than finding it here.
_ENCODED: ShortMemo[str, bytes] = ShortMemo()


def _string(value: str) -> bytes:
    encoded = _ENCODED.get(value)
    if encoded is not None:
        return encoded
    # Strict brokers close the connection on such a string: never write one.
    problem = string_problem(value)
    if problem is not None:
        raise ValueError(f"The MQTT string {value[:40]!r}... {problem}.")
    data = value.encode()
    return _ENCODED.remember(value, _U16.pack(len(data)) + data)


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


def _topic_problem(topic: str, empty_allowed: bool) -> str | None:
    if "+" in topic or "#" in topic:
        return f"The topic {topic!r} contains a wildcard."
    return None if topic or empty_allowed else "A topic is empty."
