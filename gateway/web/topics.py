# -*- test-case-name: tests.web.test_topics -*-
"""
API 1: C{POST /topics/{topic}?qos=&retained=&...} (Tencent TDMQ style).

L{parse_publish} turns a request into a L{Message} and the sender's claimed ids,
without I/O; L{TopicsAPI} hands them to the core and renders the answer.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet.defer import Deferred

from gateway.auth.identify import Claim
from gateway.core import Gateway
from gateway.errors import Code, GatewayError, method_not_allowed
from gateway.memo import ShortMemo
from gateway.model import Message, PublishResult
from gateway.mqtt.strings import MAX_STRING_BYTES, string_problem, topic_problem
from gateway.web.claims import request_claim
from gateway.web.messages import API, AccessLogFields, HTTPRequest, HTTPResponse
from gateway.web.numbers import bounded_integer
from gateway.web.urlencoded import form_fields

TOPICS_PREFIX = b"/topics/"
MAX_U32 = 4294967295
_JSON = (("Content-Type", "application/json"),)

_LOG = AccessLogFields(api=API.TOPICS)


@attrs.frozen
class PublishRequest:
    """
    What a C{POST /topics/...} asks for.

    @ivar client_id: the C{client_id} parameter, C{None} when absent.
    @ivar username: the C{username} parameter, C{None} when absent.
    """

    message: Message
    client_id: str | None = None
    username: str | None = None


def _invalid(name: str, why: str, code: Code = Code.InvalidParameter) -> GatewayError:
    return GatewayError(code, f"invalid parameter {name!r}: {why}", parameter=name)


def _decode(raw: bytes, what: str, code: Code = Code.InvalidParameter) -> str:
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid(what, "not UTF-8", code) from None
    return text


# Topics of recent paths: a device posts to the same few paths again and again.
_TOPICS: ShortMemo[bytes, str] = ShortMemo()


def parse_topic(path: bytes) -> str:
    """
    The topic named by a C{/topics/...} path: percent-decoded UTF-8 that
    L{topic_problem} accepts (not empty, no wildcards, no control characters or
    non-characters, at most 65535 bytes and 200 levels).

    @raise GatewayError: C{InvalidTopic}.
    """
    topic = _TOPICS.get(path)
    if topic is None:
        topic = _TOPICS.remember(path, _parse_topic(path))
    return topic


def _parse_topic(path: bytes) -> str:
    try:
        topic = unquote_to_bytes(path[len(TOPICS_PREFIX) :]).decode("utf-8")
    except UnicodeDecodeError:
        raise GatewayError(Code.InvalidTopic, "the topic is not valid UTF-8") from None
    problem = topic_problem(topic)
    if problem is not None:
        raise GatewayError(Code.InvalidTopic, f"the topic {problem}", parameter="topic")
    return topic


def parse_query(query: bytes) -> dict[str, tuple[str, str]]:
    """
    The query string's parameters: lower-cased name -> (name as sent, value).
    Values are percent-decoded UTF-8 (C{+} is a space, as in every query string).

    @raise GatewayError: C{InvalidParameter} for a parameter given twice or not
        UTF-8.
    """
    params: dict[str, tuple[str, str]] = {}
    for raw_name, raw_value in form_fields(query):
        name = _decode(raw_name, "name")
        key = name.lower()
        if key in params:
            raise _invalid(name, "given more than once")
        params[key] = (name, _decode(raw_value, name))
    return params


def _string(name: str, value: str) -> str:
    problem = string_problem(value)
    if problem is not None:
        raise _invalid(name, problem)
    return value


def _binary(name: str, value: str) -> bytes:
    data = value.encode()
    if len(data) > MAX_STRING_BYTES:
        raise _invalid(name, f"longer than {MAX_STRING_BYTES} bytes")
    return data


def _qos(name: str, value: str) -> int:
    if value not in ("0", "1", "2"):
        raise _invalid(name, "must be 0, 1 or 2", Code.InvalidQoS)
    return int(value)


def _retained(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise _invalid(name, "must be true or false", Code.InvalidRetained)
    return lowered == "true"


def _client_id(name: str, value: str) -> str:
    if not value:
        raise _invalid(name, "must not be empty")
    return _string(name, value)


def _response_topic(name: str, value: str) -> str:
    if not value:
        raise _invalid(name, "must not be empty")
    if "+" in value or "#" in value:
        raise _invalid(name, "a response topic cannot contain '+' or '#'")
    return _string(name, value)


def _integer(name: str, value: str, low: int, high: int) -> int:
    number = bounded_integer(value, low, high)
    if number is None:
        raise _invalid(name, f"must be an integer from {low} to {high}")
    return number


# lower-cased parameter name -> (Message/PublishRequest field, parser)
_PARAMETERS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "qos": ("qos", _qos),
    "retained": ("retain", _retained),
    "client_id": ("client_id", _client_id),
    "username": ("username", _string),
    "responsetopic": ("response_topic", _response_topic),
    "correlationdata": ("correlation_data", _binary),
    "contenttype": ("content_type", _string),
    "payloadformatindicator": (
        "payload_format_indicator",
        lambda n, v: _integer(n, v, 0, 1),
    ),
    "messageexpiryinterval": (
        "message_expiry_interval",
        lambda n, v: _integer(n, v, 0, MAX_U32),
    ),
}
_USER_PROPERTY = "userprop."
# The N of UserProp.N.Key/Value only orders the properties; any 32-bit N will do.
_MAX_USER_PROPERTY = MAX_U32


def _user_properties(
    found: dict[int, dict[str, str]], names: dict[int, str]
) -> tuple[tuple[str, str], ...]:
    properties = []
    for index in sorted(found):
        pair = found[index]
        if "key" not in pair or "value" not in pair:
            missing = "Value" if "key" in pair else "Key"
            raise _invalid(names[index], f"UserProp.{index}.{missing} is missing")
        properties.append((pair["key"], pair["value"]))
    return tuple(properties)


def parse_publish(request: HTTPRequest) -> PublishRequest:
    """
    Read a C{POST /topics/...} request into a L{PublishRequest}.

    Parameters come from the query string only, names matched case-insensitively;
    the body is the payload byte for byte.

    @raise GatewayError: 400 with the code of the first problem found.
    """
    topic = parse_topic(request.path)
    fields: dict[str, Any] = {}
    user_found: dict[int, dict[str, str]] = {}
    user_names: dict[int, str] = {}
    for key, (name, value) in parse_query(request.query).items():
        known = _PARAMETERS.get(key)
        if known is not None:
            field, parse = known
            fields[field] = parse(name, value)
            continue
        if key.startswith(_USER_PROPERTY):
            index, _, part = key[len(_USER_PROPERTY) :].partition(".")
            if part in ("key", "value"):
                number = bounded_integer(index, 1, _MAX_USER_PROPERTY)
                if number is None:
                    raise _invalid(
                        name,
                        f"N in UserProp.N.{part.title()} must be an integer "
                        f"from 1 to {_MAX_USER_PROPERTY}",
                    )
                user_found.setdefault(number, {})[part] = _string(name, value)
                user_names[number] = name
                continue
        raise _invalid(name, "unknown parameter")
    client_id = fields.pop("client_id", None)
    username = fields.pop("username", None)
    if fields.get("payload_format_indicator") == 1:
        try:
            request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid(
                "PayloadFormatIndicator", "1 declares a UTF-8 payload; the body is not"
            ) from None
    message = Message(
        topic=topic,
        payload=request.body,
        user_properties=_user_properties(user_found, user_names),
        **fields,
    )
    return PublishRequest(message, client_id, username)


def error_response(error: GatewayError, log: AccessLogFields) -> HTTPResponse:
    """
    The one rendering of an API 1 error: JSON C{{"code", "message",
    "request_id"}} with the error's status and headers.
    """
    body = json.dumps(
        {
            "code": error.code.value,
            "message": error.message,
            "request_id": uuid.uuid4().hex,
        }
    ).encode()
    return HTTPResponse(
        status=error.status,
        headers=_JSON + tuple(error.response_headers()),
        body=body,
        log=log,
    )


class TopicsAPI:
    """
    The adapter of API 1: request in, response out, the core in between.

    @ivar core: the one message path (identify, authorize, publish).
    """

    def __init__(self, core: Gateway) -> None:
        self.core = core

    def handle(self, request: HTTPRequest) -> HTTPResponse | Deferred[HTTPResponse]:
        """Answer one request to C{/topics/...}."""
        if request.method != "POST":
            return error_response(method_not_allowed(request.method), _LOG)
        try:
            asked = parse_publish(request)
            submitted = self.core.submit(
                claim_of(request, asked), lambda: [asked.message]
            )
        except GatewayError as e:
            return error_response(e, _LOG)
        identity = submitted.identity

        def done(result: PublishResult) -> HTTPResponse:
            return HTTPResponse(
                status=200,
                headers=(("X-Message-Id", result.message_id),),
                log=AccessLogFields(
                    API.TOPICS, identity.client_id, identity.username, result.message_id
                ),
            )

        def failed(failure: Any) -> HTTPResponse:
            failure.trap(GatewayError)
            log = AccessLogFields(API.TOPICS, identity.client_id, identity.username)
            return error_response(failure.value, log)

        return submitted.results[0].addCallbacks(done, failed)

    def render_error(self, request: HTTPRequest, error: GatewayError) -> HTTPResponse:
        """Render an error the HTTP server found before this adapter ran."""
        return error_response(error, _LOG)


def claim_of(request: HTTPRequest, asked: PublishRequest) -> Claim:
    """
    What a request says about its sender: Basic credentials, the verified client
    certificate's CN, the C{client_id} and C{username} parameters.

    @raise GatewayError: 401 for an unreadable C{Authorization} header.
    """
    return request_claim(request, asked.client_id, asked.username)
