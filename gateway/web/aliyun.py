# -*- test-case-name: tests.web.test_aliyun -*-
"""
API 2: Alibaba Cloud ApsaraMQ for MQTT C{SendMessage} (OnsMqtt 2020-04-20, OpenAPI
RPC style), answered as the official SDKs expect it.

The SDKs send C{POST /} with every parameter in the query string and an empty body,
signed with ACS3-HMAC-SHA256 (the action then in C{x-acs-action}) or with the
HMAC-SHA1 scheme (C{Action} among the parameters). L{parse_send_message} reads the
parameters without I/O, L{gateway.auth.aliyun_signature} checks the signature, and
L{AliyunAPI} hands a L{Claim} (the verified AccessKeyId) and a L{Message} to the same
core as API 1, then answers C{{"MsgId", "RequestId"}} or Alibaba's error shape
(L{error_response}, the one place errors of this API are rendered).

C{SendMessage} has no QoS or retain parameter. The message is published with QoS 1,
not retained: ApsaraMQ answers with a C{MsgId} once it has stored the message,
which is what a QoS 1 PUBACK promises, and a 200 here likewise means the broker
has acknowledged it.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from gateway.auth.aliyun_signature import (
    Reason,
    SignatureError,
    SignedRequest,
    Verifier,
)
from gateway.auth.identify import Claim
from gateway.config import AliyunConfig
from gateway.core import Gateway
from gateway.errors import Code, GatewayError
from gateway.model import Message, PublishResult
from gateway.mqtt.strings import MAX_STRING_BYTES, topic_problem
from gateway.web.messages import API, AccessLogFields, HTTPRequest, HTTPResponse

#: The path the API is served on.
ALIYUN_PATH = b"/"
ACTION = "SendMessage"
VERSION = "2020-04-20"
#: What C{SendMessage} implies for the MQTT message (no parameters say otherwise).
QOS = 1
RETAIN = False
_METHODS = ("GET", "POST")
_JSON = "application/json;charset=utf-8"
_FORM = b"application/x-www-form-urlencoded"

_LOG = AccessLogFields(api=API.ALIYUN)


class AliyunError(GatewayError):
    """
    An error with its own Alibaba code (C{InvalidParameter.MqttTopic},
    C{ApiNotSupport}, ...), for the refusals only this API makes.

    @ivar aliyun_code: the C{Code} of the JSON answer.
    """

    def __init__(
        self,
        aliyun_code: str,
        message: str,
        *,
        status: int = 400,
        code: Code = Code.InvalidParameter,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(code, message, status=status, headers=headers)
        self.aliyun_code = aliyun_code


def invalid(name: str, message: str) -> AliyunError:
    """A 400 C{InvalidParameter.<name>}."""
    return AliyunError(f"InvalidParameter.{name}", message)


@attrs.frozen
class SendMessage:
    """
    What a C{SendMessage} call asks for.

    @ivar instance_id: the C{InstanceId} parameter.
    @ivar topic: the C{MqttTopic} parameter.
    @ivar payload: the C{Payload} parameter's bytes (base64-decoded when so
        configured).
    """

    instance_id: str
    topic: str
    payload: bytes


def parse_parameters(encoded: bytes) -> dict[str, bytes]:
    """
    The parameters of a query string or form body: name -> percent-decoded value
    (C{+} is a space). Names are case-sensitive, as Alibaba's are.

    @raise AliyunError: 400 for a name that is not UTF-8 or given twice.
    """
    params: dict[str, bytes] = {}
    if not encoded:
        return params
    for field in encoded.replace(b"+", b" ").split(b"&"):
        if not field:
            continue
        raw_name, _, raw_value = field.partition(b"=")
        try:
            name = unquote_to_bytes(raw_name).decode("utf-8")
        except UnicodeDecodeError:
            raise AliyunError(
                "ParameterCheckFailed", "a parameter name is not UTF-8"
            ) from None
        if name in params:
            raise invalid(name, f"{name} is given more than once")
        params[name] = unquote_to_bytes(raw_value)
    return params


def signed_request(request: HTTPRequest) -> SignedRequest:
    """
    The parts of C{request} that its signature covers: the query's parameters, a
    form body's parameters (a parameter in both is refused), headers and body.

    @raise AliyunError: 400 for unreadable or repeated parameters.
    """
    query = parse_parameters(request.query)
    form: dict[str, bytes] = {}
    content_type = request.header(b"content-type") or b""
    if request.body and content_type.lower().startswith(_FORM):
        form = parse_parameters(request.body)
        for name in form.keys() & query.keys():
            raise invalid(name, f"{name} is given more than once")
    return SignedRequest(
        method=request.method,
        path=request.path.decode("latin-1"),
        query=query,
        form=form,
        headers=request.headers,
        body=request.body,
    )


def check_action(request: SignedRequest) -> None:
    """
    Refuse anything but C{SendMessage} of version 2020-04-20. The signed
    C{Action}/C{Version} parameters win over the C{x-acs-action}/C{x-acs-version}
    headers (which only the ACS3 scheme signs).

    @raise AliyunError: 404 C{ApiNotSupport}.
    """
    params = {**request.query, **request.form}
    action = params.get("Action") or request.header(b"x-acs-action")
    version = params.get("Version") or request.header(b"x-acs-version")
    if action != ACTION.encode():
        what = "no Action" if not action else f"the action {_show(action)}"
        raise _api_not_supported(f"{what} is not supported; only {ACTION} is")
    if version is not None and version != VERSION.encode():
        raise _api_not_supported(
            f"{ACTION} of version {_show(version)} is not supported; only {VERSION}"
        )


def _api_not_supported(message: str) -> AliyunError:
    return AliyunError("ApiNotSupport", message, status=404, code=Code.InvalidPath)


def _show(value: bytes) -> str:
    return repr(value.decode("utf-8", "replace")[:64])


def _required(params: Mapping[str, bytes], name: str) -> bytes:
    value = params.get(name)
    if value is None:
        raise invalid(name, f"{name} is mandatory for this action")
    return value


def _utf8(name: str, value: bytes) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(name, f"{name} is not valid UTF-8") from None
    if "\x00" in text:
        raise invalid(name, f"{name} contains U+0000")
    return text


def parse_send_message(
    params: Mapping[str, bytes],
    payload_encoding: str = "raw",
    max_payload: int | None = None,
) -> SendMessage:
    """
    Read C{InstanceId}, C{MqttTopic} and C{Payload} (all required). Other
    parameters are ignored, as Alibaba ignores them.

    @param payload_encoding: C{"raw"}: the Payload's bytes are the MQTT payload;
        C{"base64"}: they are base64, decoded.
    @param max_payload: the largest payload in bytes, or C{None}.
    @raise AliyunError: 400 C{InvalidParameter.<Name>} for a missing or invalid one.
    """
    instance_id = _utf8("InstanceId", _required(params, "InstanceId"))
    if not instance_id:
        raise invalid("InstanceId", "InstanceId must not be empty")
    topic = _utf8("MqttTopic", _required(params, "MqttTopic"))
    problem = topic_problem(topic)
    if problem is not None:
        raise invalid("MqttTopic", f"MqttTopic {problem}")
    payload = _required(params, "Payload")
    if payload_encoding == "base64":
        try:
            payload = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise invalid("Payload", "Payload is not valid base64") from None
    if max_payload is not None and len(payload) > max_payload:
        raise invalid("Payload", f"Payload is larger than {max_payload} bytes")
    return SendMessage(instance_id, topic, payload)


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


def _json(
    status: int,
    body: dict[str, str],
    headers: list[tuple[str, str]],
    log: AccessLogFields,
) -> HTTPResponse:
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
    return _json(status, body, headers, log)


class AliyunAPI:
    """
    The adapter of API 2: request in, response out, the core in between.

    @ivar core: the one message path (the same as API 1's).
    @ivar config: the C{[aliyun]} settings: the InstanceId served, the AccessKeys,
        the Payload's encoding.
    @ivar verifier: checks signatures, times and nonces.
    @ivar max_payload: the largest MQTT payload accepted, or C{None}.
    """

    def __init__(
        self,
        core: Gateway,
        config: AliyunConfig,
        clock: IReactorTime,
        *,
        max_payload: int | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.core = core
        self.config = config
        self.verifier = Verifier(config.access_keys) if verifier is None else verifier
        self.max_payload = max_payload
        self._clock = clock

    def handle(self, request: HTTPRequest) -> HTTPResponse | Deferred[HTTPResponse]:
        """Answer one request to C{/}."""
        if request.method not in _METHODS:
            return error_response(
                AliyunError(
                    "UnsupportedHTTPMethod",
                    f"{request.method} is not supported; use POST",
                    status=405,
                    code=Code.MethodNotAllowed,
                    headers=(("Allow", ", ".join(_METHODS)),),
                ),
                _LOG,
            )
        log = _LOG
        try:
            signed = signed_request(request)
            check_action(signed)
            access_key_id = self.authenticate(signed, request.peer)
            log = AccessLogFields(
                api=API.ALIYUN, client_id=access_key_id, user=access_key_id
            )
            asked = parse_send_message(
                {**signed.query, **signed.form},
                self.config.payload_encoding,
                self.max_payload,
            )
            if asked.instance_id != self.config.instance_id:
                raise AliyunError(
                    "InstancePermissionCheckFailed",
                    "the InstanceId is not the instance this gateway serves",
                    code=Code.Forbidden,
                )
        except GatewayError as e:
            return error_response(e, log)
        claim = Claim(
            # The secret is for broker mode, where the broker authenticates the key.
            access_key=(
                access_key_id,
                self.config.access_keys[access_key_id].encode("utf-8"),
            ),
            peer=request.peer,
            connection_id=request.connection_id,
            keep_alive=request.keep_alive,
            connection=request.connection,
        )
        message = Message(
            topic=asked.topic, payload=asked.payload, qos=QOS, retain=RETAIN
        )

        def done(result: PublishResult) -> HTTPResponse:
            body = {"MsgId": result.message_id, "RequestId": new_request_id()}
            return _json(
                200,
                body,
                [],
                AccessLogFields(API.ALIYUN, log.client_id, log.user, result.message_id),
            )

        def failed(failure: Any) -> HTTPResponse:
            failure.trap(GatewayError)
            return error_response(failure.value, log)

        return self.core.submit(claim, message).addCallbacks(done, failed)

    def authenticate(self, request: SignedRequest, peer: str) -> str:
        """
        The AccessKeyId that signed C{request}.

        @raise SignatureError: see L{Verifier.verify}; unknown keys, wrong
            signatures and replays count as failed authentications of C{peer}'s
            address.
        @raise GatewayError: 429 while that address has failed too often.
        """
        now = self._clock.seconds()
        return self.core.attempt(peer, now, lambda: self.verifier.verify(request, now))

    def render_error(self, request: HTTPRequest, error: GatewayError) -> HTTPResponse:
        """Render an error the HTTP server found before this adapter ran."""
        return error_response(error, _LOG)


def max_target_bytes(max_payload: int) -> int:
    """
    The longest request target that can carry a C{SendMessage} whose Payload and
    MqttTopic are as long as allowed, every byte percent-encoded (C{%XX}).
    """
    return 3 * (max_payload + MAX_STRING_BYTES) + 4096
