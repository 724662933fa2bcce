# -*- test-case-name: tests.web.test_aliyun -*-
"""
The answers of the Alibaba Cloud API in Alibaba's shape: JSON with a
C{RequestId} (also in C{x-acs-request-id}), and L{error_response}, the one place
its errors are rendered, with the C{Code} and status Alibaba's SDKs expect.
"""

from __future__ import annotations

import json
import uuid

from gateway.auth.aliyun_errors import Reason, SignatureError
from gateway.errors import Code, GatewayError
from gateway.web.aliyun_requests import AliyunError
from gateway.web.messages import AccessLogFields, HTTPResponse

__all__ = [
    "alibaba_status_and_code",
    "error_response",
    "json_response",
    "new_request_id",
]

_JSON = "application/json;charset=utf-8"

# Alibaba's codes for the core's errors (API 1's codes); see error_response.
_BY_CODE: dict[Code, tuple[int, str]] = {
    Code.Unauthorized: (400, "CheckAccountInfoFailed"),
    Code.Forbidden: (400, "PermissionCheckFailed"),
    Code.RateLimited: (429, "SystemOverFlow"),
    Code.BrokerUnavailable: (500, "SendMessageFailed"),
    Code.BrokerRejected: (500, "SendMessageFailed"),
    Code.InternalError: (500, "InternalError"),
    Code.InvalidTopic: (400, "InvalidParameter.MqttTopic"),
    Code.PayloadTooLarge: (413, "InvalidParameter.Payload"),
    Code.InvalidPath: (404, "ApiNotSupport"),
    Code.MethodNotAllowed: (405, "UnsupportedHTTPMethod"),
    Code.Unavailable: (503, "ServiceUnavailable"),
}
_BY_REASON: dict[Reason, str] = {
    Reason.MALFORMED: "CheckAccountInfoFailed",
    Reason.UNKNOWN_KEY: "CheckAccountInfoFailed",
    Reason.BAD_SIGNATURE: "CheckAccountInfoFailed",
    Reason.BAD_TIMESTAMP: "InvalidTimeStamp.Format",
    Reason.EXPIRED: "InvalidTimeStamp.Expired",
    Reason.NONCE_USED: "SignatureNonceUsed",
}
# HTTP-level refusals keep their status (the request never reached the API).
_HTTP_STATUSES = (413, 414, 431, 505)


def alibaba_status_and_code(error: GatewayError) -> tuple[int, str]:
    """
    The HTTP status and Alibaba C{Code} for C{error}:

      - this API's own refusals (L{AliyunError}) as they are;
      - signature failures: C{CheckAccountInfoFailed} (unsigned, unknown
        AccessKeyId, wrong signature), C{InvalidTimeStamp.Format},
        C{InvalidTimeStamp.Expired}, C{SignatureNonceUsed}; all 400;
      - the core's: 401 -> C{CheckAccountInfoFailed}, 403 (the ACL or the broker
        refuses) -> 400 C{PermissionCheckFailed}, 429 -> C{SystemOverFlow},
        503/502 (broker unreachable, silent or refusing) -> 500
        C{SendMessageFailed}, 500 -> C{InternalError};
      - any other 4xx -> C{ParameterCheckFailed}, any other 5xx -> C{InternalError}.
    """
    if isinstance(error, AliyunError):
        return error.status, error.aliyun_code
    if isinstance(error, SignatureError):
        return 400, _BY_REASON[error.reason]
    known = _BY_CODE.get(error.code)
    if known is not None:
        return known
    if error.status >= 500 and error.status not in _HTTP_STATUSES:
        return 500, "InternalError"
    status = error.status if error.status in _HTTP_STATUSES else 400
    return status, "ParameterCheckFailed"


def new_request_id() -> str:
    """A fresh RequestId, an upper-case UUID as Alibaba's."""
    return str(uuid.uuid4()).upper()


def json_response(
    status: int,
    body: dict[str, str],
    headers: list[tuple[str, str]],
    log: AccessLogFields,
) -> HTTPResponse:
    """
    C{body} (which holds the C{RequestId}) as JSON with C{status}, the request
    id also in C{x-acs-request-id}, and C{headers} after those.
    """
    request_id = body["RequestId"]
    return HTTPResponse(
        status=status,
        headers=(
            ("Content-Type", _JSON),
            ("x-acs-request-id", request_id),
            *headers,
        ),
        body=json.dumps(body).encode(),
        log=log,
    )


def error_response(error: GatewayError, log: AccessLogFields) -> HTTPResponse:
    """
    The one rendering of an API 2 error: JSON C{{"RequestId", "Code", "Message"}}
    with the status of L{alibaba_status_and_code}.

    A wait (C{retry_after}) is sent as C{Retry-After} (seconds) and, with
    C{SystemOverFlow}, also as C{x-acs-retry-after} (milliseconds), from which
    the C{alibabacloud} SDKs raise a C{ThrottlingException} carrying the wait.
    """
    status, code = alibaba_status_and_code(error)
    headers = list(error.headers)
    if error.retry_after is not None:
        seconds = max(1, error.retry_after)
        headers.append(("Retry-After", str(seconds)))
        if code == "SystemOverFlow":
            headers.append(("x-acs-retry-after", str(seconds * 1000)))
    body = {"RequestId": new_request_id(), "Code": code, "Message": error.message}
    return json_response(status, body, headers, log)
