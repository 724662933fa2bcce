# -*- test-case-name: tests.web.test_emqx -*-
"""
API 3: EMQX 5's HTTP publish API, C{POST /api/v5/publish} (one JSON message) and
C{POST /api/v5/publish/bulk} (a JSON array of them), so that back-ends written for
EMQX change only their base URL.

L{parse_message} and L{parse_batch} turn a body into L{Message}s without I/O;
L{EMQXAPI} hands them, with the sender's claim, to the same core as API 1 (Basic
credentials or a client certificate, the ACL, the rate limits, the delivery promise
for every message), and L{render_error}, L{item_result} and L{batch_response} are the
one place this API's answers are shaped:

  - a published message: C{{"id": "<32 hex>"}} (200);
  - one the broker took but no subscriber matched (MQTT 5 reason code 0x10):
    C{{"reason_code": 16, "message": "no_matching_subscribers"}} (202);
  - a refused request: C{{"code": "BAD_REQUEST", "message": "..."}} with its status
    (400, 401, 403, 413, 429, 503 ...);
  - in a batch, every message's own result in request order (a failed one as
    C{{"reason_code": ..., "message": ...}}), and the status of the whole: 200 when
    every message was delivered, 202 when some matched no subscriber and none
    failed, otherwise the status of the first failure.

Where EMQX's behaviour is not the gateway's, the gateway keeps its own promise: a 200
means the broker acknowledged the message (QoS 1 and 2) or it was written to the
broker (QoS 0), as for API 1.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults

from gateway.core import Gateway
from gateway.errors import Code, GatewayError
from gateway.model import Message, PublishResult
from gateway.mqtt.strings import MAX_STRING_BYTES, string_problem, topic_problem
from gateway.web.claims import request_claim
from gateway.web.messages import API, AccessLogFields, HTTPRequest, HTTPResponse

#: The paths of the two operations.
PUBLISH_PATH = b"/api/v5/publish"
BULK_PATH = b"/api/v5/publish/bulk"
PATHS = (PUBLISH_PATH, BULK_PATH)

#: The MQTT 5 reason code of a message no subscriber matched.
NO_MATCHING_SUBSCRIBERS = 0x10
MAX_U32 = 4294967295
_JSON = (("Content-Type", "application/json"),)
_NO_LOG = AccessLogFields(api=API.EMQX)

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


# The EMQX error code of each of the gateway's codes (EMQX's names where it has
# one: BAD_REQUEST, FORBIDDEN, SERVICE_UNAVAILABLE, INTERNAL_ERROR ...).
_EMQX_CODES: dict[Code, str] = {
    Code.InvalidPath: "NOT_FOUND",
    Code.PayloadTooLarge: "PAYLOAD_TOO_LARGE",
    Code.HeadersTooLarge: "HEADERS_TOO_LARGE",
    Code.Forbidden: "FORBIDDEN",
    Code.MethodNotAllowed: "METHOD_NOT_ALLOWED",
    Code.RateLimited: "TOO_MANY_REQUESTS",
    Code.BrokerUnavailable: "SERVICE_UNAVAILABLE",
    Code.BrokerRejected: "BAD_GATEWAY",
    Code.InternalError: "INTERNAL_ERROR",
    Code.UriTooLong: "URI_TOO_LONG",
}

# The MQTT reason code (and its name) a failed message of a batch is shown with.
_REASONS: dict[Code, tuple[int, str]] = {
    # Broker mode: the broker refused the sender's credentials at CONNECT.
    Code.Unauthorized: (0x86, "bad_username_or_password"),
    Code.Forbidden: (0x87, "not_authorized"),
    Code.InvalidTopic: (0x90, "topic_name_invalid"),
    Code.RateLimited: (0x97, "quota_exceeded"),
    # EMQX shows a message too large as quota_exceeded (0x95 is no PUBACK code).
    Code.PayloadTooLarge: (0x97, "packet_too_large"),
    Code.InvalidQoS: (0x9B, "qos_not_supported"),
    # An MQTT 3.1.1 broker cannot carry the message's MQTT 5 properties.
    Code.UnsupportedProperty: (0x83, "unsupported_property"),
    Code.BrokerUnavailable: (0x83, "failed_to_dispatch"),
}
_UNSPECIFIED = (0x80, "unspecified_error")


def emqx_code(error: GatewayError, credentials_sent: bool = True) -> str:
    """
    The EMQX C{code} of an error: C{BAD_REQUEST} for any 400,
    C{AUTHORIZATION_HEADER_ERROR} (no credentials) or C{BAD_API_KEY_OR_SECRET}
    for a 401, C{FORBIDDEN}, C{TOO_MANY_REQUESTS}, C{SERVICE_UNAVAILABLE},
    C{PAYLOAD_TOO_LARGE}, C{BAD_GATEWAY} ... for the others.
    """
    if error.status == 401:
        return (
            "BAD_API_KEY_OR_SECRET"
            if credentials_sent
            else "AUTHORIZATION_HEADER_ERROR"
        )
    if error.status == 400:
        return "BAD_REQUEST"
    return _EMQX_CODES.get(error.code, "INTERNAL_ERROR")


def render_error(
    error: GatewayError,
    log: AccessLogFields = _NO_LOG,
    *,
    credentials_sent: bool = True,
) -> HTTPResponse:
    """
    The one rendering of a refused request: JSON C{{"code", "message"}} with the
    error's status and headers (C{Retry-After}, C{WWW-Authenticate}, C{Allow}).
    """
    body = {"code": emqx_code(error, credentials_sent), "message": error.message}
    return HTTPResponse(
        status=error.status,
        headers=_JSON + tuple(error.response_headers()),
        body=json.dumps(body).encode(),
        log=log,
    )


@attrs.frozen
class ItemResult:
    """
    One message's outcome: the HTTP status it stands for, its JSON result, and
    the error when it failed.
    """

    status: int
    body: dict[str, object]
    error: GatewayError | None = None


def item_result(outcome: PublishResult | GatewayError) -> ItemResult:
    """
    A message's result as EMQX shows it: C{{"id"}} (200) when delivered,
    C{{"reason_code": 16, "message": "no_matching_subscribers"}} (202) when the
    broker matched no subscriber, C{{"reason_code", "message"}} with the
    failure's status otherwise (403 C{not_authorized}, 429 C{quota_exceeded},
    503 C{failed_to_dispatch}, 400 C{unsupported_property} for MQTT 5
    properties over an MQTT 3.1.1 broker ...).
    """
    if isinstance(outcome, GatewayError):
        reason, name = _REASONS.get(outcome.code, _UNSPECIFIED)
        return ItemResult(
            outcome.status, {"reason_code": reason, "message": name}, outcome
        )
    if outcome.reason_code == NO_MATCHING_SUBSCRIBERS:
        return ItemResult(
            202,
            {
                "reason_code": NO_MATCHING_SUBSCRIBERS,
                "message": "no_matching_subscribers",
            },
        )
    return ItemResult(200, {"id": outcome.message_id})


def batch_response(results: Sequence[ItemResult], log: AccessLogFields) -> HTTPResponse:
    """
    The answer to a batch: every message's result in request order, with 200 when
    all were delivered, 202 when some matched no subscriber and none failed, and
    otherwise the status (and C{Retry-After}) of the first failure.
    """
    status, headers = 200, list(_JSON)
    for result in results:
        if result.error is not None:
            status = result.status
            headers += result.error.response_headers()
            break
        if result.status == 202:
            status = 202
    body = json.dumps([result.body for result in results]).encode()
    return HTTPResponse(status=status, headers=tuple(headers), body=body, log=log)


def single_response(result: ItemResult, log: AccessLogFields) -> HTTPResponse:
    """
    The answer to one message: C{{"id"}} (200), the no-subscribers result (202),
    or the failure as L{render_error} renders it.
    """
    if result.error is not None:
        return render_error(result.error, log)
    return HTTPResponse(
        status=result.status,
        headers=_JSON,
        body=json.dumps(result.body).encode(),
        log=log,
    )


def _failed_item(failure: Any) -> ItemResult:
    failure.trap(GatewayError)
    return item_result(failure.value)


class EMQXAPI:
    """
    The adapter of API 3: request in, response out, the core in between.

    @ivar core: the one message path (the same as API 1's).
    @ivar max_batch: the most messages one bulk request may carry.
    """

    def __init__(self, core: Gateway, max_batch: int = 1000) -> None:
        self.core = core
        self.max_batch = max_batch

    def handle(self, request: HTTPRequest) -> HTTPResponse | Deferred[HTTPResponse]:
        """Answer one request to L{PUBLISH_PATH} or L{BULK_PATH}."""
        sent = request.header(b"authorization") is not None
        if request.method != "POST":
            return render_error(
                GatewayError(
                    Code.MethodNotAllowed,
                    f"{request.method} is not allowed here; use POST",
                    headers=(("Allow", "POST"),),
                )
            )
        bulk = request.path == BULK_PATH
        try:
            identity = self.core.identify(request_claim(request))
            value = decode_json(request.body)
            messages = (
                parse_batch(value, self.max_batch) if bulk else [parse_message(value)]
            )
        except GatewayError as e:
            return render_error(e, credentials_sent=sent)
        log = AccessLogFields(
            api=API.EMQX, client_id=identity.client_id, user=identity.username
        )
        # Identified once for the request, whose messages are sent each on its own.
        published = [
            d.addCallbacks(item_result, _failed_item)
            for d in self.core.publish_each(identity, messages)
        ]
        if not bulk:
            return published[0].addCallback(self._single, log)
        return gatherResults(published).addCallback(batch_response, log)

    @staticmethod
    def _single(result: ItemResult, log: AccessLogFields) -> HTTPResponse:
        message_id = result.body.get("id")
        if isinstance(message_id, str):
            log = attrs.evolve(log, message_id=message_id)
        return single_response(result, log)

    def render_error(self, request: HTTPRequest, error: GatewayError) -> HTTPResponse:
        """Render an error the HTTP server found before this adapter ran."""
        return render_error(
            error, credentials_sent=request.header(b"authorization") is not None
        )
