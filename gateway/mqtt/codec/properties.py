# -*- test-case-name: tests.mqtt.test_codec -*-
"""
MQTT 5 properties, driven by one table: which property may appear in which
packet, how each is written and read, and the bounds of its value.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any, NamedTuple

from gateway.mqtt.codec.fields import (
    _MAX_VARINT,
    _U16,
    _U32,
    _binary,
    _Buffer,
    _pair,
    _read_binary,
    _read_byte,
    _read_pair,
    _read_string,
    _read_u16,
    _read_u32,
    _read_varint,
    _string,
    _truncated,
    _varint,
)
from gateway.mqtt.codec.packets import NO_PROPERTIES, MalformedPacket, Properties

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
