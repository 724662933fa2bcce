# -*- test-case-name: tests.web.test_emqx -*-
"""
The answers of the EMQX API in EMQX's shape: a refused request as
C{{"code", "message"}} (L{render_error}), each message's result (L{item_result}),
and the answers to one message (L{single_response}) and to a batch
(L{batch_response}).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import attrs

from gateway.errors import Code, GatewayError
from gateway.model import PublishResult
from gateway.web.messages import API, AccessLogFields, HTTPResponse

__all__ = [
    "NO_MATCHING_SUBSCRIBERS",
    "ItemResult",
    "batch_response",
    "emqx_code",
    "item_result",
    "render_error",
    "single_response",
]

#: The MQTT 5 reason code of a message no subscriber matched.
NO_MATCHING_SUBSCRIBERS = 0x10
_JSON = (("Content-Type", "application/json"),)
_NO_LOG = AccessLogFields(api=API.EMQX)

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
    Code.Unavailable: "SERVICE_UNAVAILABLE",
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
