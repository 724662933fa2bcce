# -*- test-case-name: tests.web.test_aliyun,tests.auth.test_aliyun_signature -*-
"""
Reading an Alibaba Cloud C{SendMessage} call, without I/O: its parameters (query
string and form body), the parts its signature covers, the action asked for, and
the message it describes. Every refusal is an L{AliyunError} or a
L{GatewayError} carrying Alibaba's code.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from urllib.parse import unquote_to_bytes

import attrs

from gateway.auth.aliyun_signature import SignedRequest
from gateway.errors import Code, GatewayError
from gateway.mqtt.strings import topic_problem
from gateway.web.messages import HTTPRequest
from gateway.web.urlencoded import form_fields

__all__ = [
    "ACTION",
    "VERSION",
    "AliyunError",
    "SendMessage",
    "check_action",
    "invalid",
    "parse_parameters",
    "parse_send_message",
    "signed_request",
]

ACTION = "SendMessage"
VERSION = "2020-04-20"
_FORM = b"application/x-www-form-urlencoded"


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
    for raw_name, raw_value in form_fields(encoded):
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
