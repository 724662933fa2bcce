# -*- test-case-name: tests.web.test_emqx -*-
"""
Reading EMQX 5 publish requests, without I/O: a JSON body into one L{Message}
(L{parse_message}) or a batch of them (L{parse_batch}), refusing anything EMQX would
not take or the gateway could not send, with a 400 naming the field at fault.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from typing import Any

from gateway.errors import Code, GatewayError
from gateway.model import Message
from gateway.mqtt.strings import MAX_STRING_BYTES, string_problem, topic_problem

__all__ = ["decode_json", "parse_batch", "parse_message"]

MAX_U32 = 4294967295

# The request's fields and the properties' fields; "encoding" is EMQX's alias of
# payload_encoding, "clientid" a field EMQX accepts and ignores since 5.0.14.
_FIELDS = frozenset(
    {"topic", "payload", "payload_encoding", "encoding", "qos", "retain"}
    | {"properties", "clientid"}
)


def _bad(where: str, why: str) -> GatewayError:
    """A 400 naming the field at fault (C{[3].properties.qos}, ...)."""
    return GatewayError(Code.InvalidParameter, f"{where} {why}", parameter=where)


def _text(where: str, value: object, rule: Callable[[str], str | None]) -> str:
    """C{value} when it is a string that C{rule} finds no problem with."""
    if not isinstance(value, str):
        raise _bad(where, f"must be a string, not {_json_type(value)}")
    problem = rule(value)
    if problem is not None:
        raise _bad(where, problem)
    return value


def _string(where: str, value: object) -> str:
    return _text(where, value, string_problem)


def _topic(where: str, value: object) -> str:
    return _text(where, value, topic_problem)


def _integer(where: str, value: object, low: int, high: int) -> int:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not low <= value <= high
    ):
        raise _bad(where, f"must be an integer from {low} to {high}")
    return value


def _boolean(where: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(where, "must be true or false")
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string"


def _object(where: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, f"must be a JSON object, not {_json_type(value)}")
    return value


def _payload(where: str, value: object, encoding: str) -> bytes:
    if not isinstance(value, str):
        raise _bad(where, f"must be a string, not {_json_type(value)}")
    if encoding == "base64":
        try:
            return base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise _bad(where, "is not valid base64") from None
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(where, "holds a lone surrogate (\\uD800-\\uDFFF)") from None


def _correlation_data(where: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise _bad(where, f"must be a string, not {_json_type(value)}")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(where, "holds a lone surrogate (\\uD800-\\uDFFF)") from None
    if len(data) > MAX_STRING_BYTES:
        raise _bad(where, f"is longer than {MAX_STRING_BYTES} bytes")
    return data


def _user_properties(where: str, value: object) -> tuple[tuple[str, str], ...]:
    pairs = []
    for key, item in _object(where, value).items():
        _string(f"{where} key {key[:64]!r}", key)
        pairs.append((key, _string(f"{where}.{key[:64]}", item)))
    return tuple(pairs)


def _given(fields: Mapping[str, Any], name: str) -> Any:
    """A field's value; C{None} (absent or JSON null) means "not given"."""
    return fields.get(name)


# Each property (a Message field of the same name) and how it is read.
_PROPERTY_PARSERS: dict[str, Callable[[str, object], Any]] = {
    "payload_format_indicator": lambda w, v: _integer(w, v, 0, 1),
    "message_expiry_interval": lambda w, v: _integer(w, v, 0, MAX_U32),
    "response_topic": _topic,
    "correlation_data": _correlation_data,
    "user_properties": _user_properties,
    "content_type": _string,
}


def _properties(where: str, value: object, payload: bytes) -> dict[str, Any]:
    properties = _object(where, value)
    for name in properties:
        if name not in _PROPERTY_PARSERS:
            raise _bad(f"{where}.{name[:64]}", "is not a known property")
    found: dict[str, Any] = {}
    for name, parse in _PROPERTY_PARSERS.items():
        given = _given(properties, name)
        if given is not None:
            found[name] = parse(f"{where}.{name}", given)
    if found.get("payload_format_indicator") == 1:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(
                f"{where}.payload_format_indicator",
                "is 1, which declares a UTF-8 payload; the payload is not UTF-8",
            ) from None
    return found


def parse_message(value: object, where: str = "") -> Message:
    """
    Read one EMQX publish request (a decoded JSON object) into a L{Message}:
    C{topic} and C{payload} are required; C{payload_encoding} (or its alias
    C{encoding}) is C{"plain"} (the payload's UTF-8 bytes, the default) or
    C{"base64"}; C{qos} is 0 (the default, as EMQX's), 1 or 2; C{retain} is
    C{false} by default; C{properties} may hold C{payload_format_indicator},
    C{message_expiry_interval}, C{response_topic}, C{correlation_data} (sent as
    its UTF-8 bytes), C{user_properties} (an object of strings, sent in its order)
    and C{content_type}. C{clientid} is accepted and ignored, as EMQX 5 does. A
    field that is JSON C{null} counts as absent; any other field is refused, so
    that a typo is never ignored. Every string must be a valid MQTT string.

    @param where: the prefix naming this message in errors, e.g. C{"[3]."}.
    @raise GatewayError: 400 whose message names the field at fault.
    """
    fields = _object(where.rstrip(".") or "the body", value)
    for name in fields:
        if name not in _FIELDS:
            raise _bad(f"{where}{name[:64]}", "is not a field of a publish request")
    if "payload_encoding" in fields and "encoding" in fields:
        raise _bad(f"{where}encoding", "and payload_encoding are both given")
    topic = _given(fields, "topic")
    if topic is None:
        raise _bad(f"{where}topic", "is required")
    payload = _given(fields, "payload")
    if payload is None:
        raise _bad(f"{where}payload", "is required")
    encoding_name = "encoding" if "encoding" in fields else "payload_encoding"
    encoding = _given(fields, encoding_name)
    if encoding is None:
        encoding = "plain"
    if encoding not in ("plain", "base64"):
        raise _bad(f"{where}{encoding_name}", 'must be "plain" or "base64"')
    qos = _given(fields, "qos")
    retain = _given(fields, "retain")
    body = _payload(f"{where}payload", payload, encoding)
    properties = _given(fields, "properties")
    return Message(
        topic=_topic(f"{where}topic", topic),
        payload=body,
        qos=0 if qos is None else _integer(f"{where}qos", qos, 0, 2),
        retain=False if retain is None else _boolean(f"{where}retain", retain),
        **(
            {}
            if properties is None
            else _properties(f"{where}properties", properties, body)
        ),
    )


def decode_json(body: bytes) -> object:
    """
    The JSON value of a request body (UTF-8, -16 or -32).

    @raise GatewayError: 400 for a body that is not JSON (including numbers too
        long to read, nesting too deep, C{NaN} and C{Infinity}).
    """

    def no_constants(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(body, parse_constant=no_constants)
    except (ValueError, RecursionError) as e:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors.
        reason = e.msg if isinstance(e, json.JSONDecodeError) else "unreadable"
        raise GatewayError(
            Code.BadRequest, f"the body is not valid JSON: {reason}"
        ) from None


def parse_batch(value: object, max_batch: int) -> list[Message]:
    """
    Read a bulk request (a decoded JSON array of publish requests): every item is
    read with L{parse_message} before anything is published, so one malformed item
    refuses the whole batch.

    @raise GatewayError: 400 naming the index (from 0) and field of the first
        malformed item, or for a body that is not a non-empty array; 413 for more
        than C{max_batch} items.
    """
    if not isinstance(value, list):
        raise _bad("the body", f"must be a JSON array, not {_json_type(value)}")
    if not value:
        raise _bad("the body", "is an empty array; send at least one message")
    if len(value) > max_batch:
        raise GatewayError(
            Code.PayloadTooLarge,
            f"the batch has {len(value)} messages; at most {max_batch} are allowed",
        )
    return [parse_message(item, f"[{index}].") for index, item in enumerate(value)]
