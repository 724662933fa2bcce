# -*- test-case-name: tests.web.test_topics,tests.mqtt.test_outcomes -*-
"""
Errors are values: one exception type carrying the HTTP status, the error code of
the error codes and a message for the client.

Raise L{GatewayError} anywhere in the core; each HTTP API renders it in exactly one
place (its own JSON shape).
"""

from __future__ import annotations

import enum

from gateway.mqtt.outcomes import Outcome, PublishFailed


class Code(enum.Enum):
    """The error codes of API 1 (C{POST /topics/...})."""

    InvalidPath = "InvalidPath"
    InvalidTopic = "InvalidTopic"
    InvalidQoS = "InvalidQoS"
    InvalidRetained = "InvalidRetained"
    InvalidParameter = "InvalidParameter"
    UnsupportedProperty = "UnsupportedProperty"
    PayloadTooLarge = "PayloadTooLarge"
    HeadersTooLarge = "HeadersTooLarge"
    Unauthorized = "Unauthorized"
    Forbidden = "Forbidden"
    MethodNotAllowed = "MethodNotAllowed"
    RateLimited = "RateLimited"
    BrokerUnavailable = "BrokerUnavailable"
    BrokerRejected = "BrokerRejected"
    InternalError = "InternalError"
    # Beyond the documented codes: malformed HTTP and over-long request targets.
    BadRequest = "BadRequest"
    UriTooLong = "UriTooLong"
    # The shared limits (Redis) are unreachable and the gateway fails closed.
    Unavailable = "ServiceUnavailable"

    @property
    def status(self) -> int:
        """The HTTP status this code is sent with unless an error says otherwise."""
        return _STATUS.get(self, 400)


_STATUS = {
    Code.PayloadTooLarge: 413,
    Code.HeadersTooLarge: 431,
    Code.Unauthorized: 401,
    Code.Forbidden: 403,
    Code.MethodNotAllowed: 405,
    Code.RateLimited: 429,
    Code.BrokerUnavailable: 503,
    Code.BrokerRejected: 502,
    Code.InternalError: 500,
    Code.UriTooLong: 414,
    Code.Unavailable: 503,
}


#: The challenge sent with every 401.
REALM = 'Basic realm="mqtt-http-gateway"'


class GatewayError(Exception):
    """
    A request the gateway refuses or cannot complete.

    @ivar code: the error code.
    @ivar status: the HTTP status (the code's status unless overridden, e.g. a
        broker reason code mapped to 403).
    @ivar message: a sentence for the client; never contains a password or payload.
    @ivar retry_after: whole seconds for a C{Retry-After} header, or C{None}.
    @ivar headers: further response headers (e.g. C{Allow}, C{WWW-Authenticate}).
    @ivar parameter: the request parameter at fault, when there is one.
    """

    def __init__(
        self,
        code: Code,
        message: str,
        *,
        status: int | None = None,
        retry_after: int | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        parameter: str | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.status = code.status if status is None else status
        self.retry_after = retry_after
        self.headers = headers
        self.parameter = parameter

    def __repr__(self) -> str:
        return f"GatewayError({self.code.name}, {self.status}, {self.message!r})"

    def response_headers(self) -> list[tuple[str, str]]:
        """
        The headers an HTTP response carrying this error must have: its own, the
        Basic challenge with a 401, C{Retry-After} when it has a wait.
        """
        headers = list(self.headers)
        if self.status == 401:
            headers.append(("WWW-Authenticate", REALM))
        if self.retry_after is not None:
            headers.append(("Retry-After", str(max(1, self.retry_after))))
        return headers


def method_not_allowed(method: str) -> GatewayError:
    """
    A request with another method than C{POST} to an API that takes only
    C{POST} (405 with C{Allow: POST}).
    """
    return GatewayError(
        Code.MethodNotAllowed,
        f"{method} is not allowed here; use POST",
        headers=(("Allow", "POST"),),
    )


def broker_unavailable(message: str, retry_after: int = 1) -> GatewayError:
    """
    The broker could not be reached or did not acknowledge in time (503).
    """
    return GatewayError(Code.BrokerUnavailable, message, retry_after=retry_after)


# MQTT 5 reason codes (PUBACK/PUBREC/PUBCOMP, and the DISCONNECT a broker sends
# before closing on a message) and what they mean to an HTTP client.
_REASON_CODES: dict[int, tuple[Code, int, str]] = {
    0x81: (Code.InvalidParameter, 400, "the broker found the message malformed"),
    0x87: (Code.Forbidden, 403, "the broker did not authorize this publish"),
    0x90: (Code.InvalidTopic, 400, "the broker refused the topic name"),
    0x99: (Code.InvalidParameter, 400, "the broker refused the payload format"),
    0x95: (Code.PayloadTooLarge, 413, "the broker refused the packet as too large"),
    0x97: (Code.RateLimited, 429, "the broker's quota is exceeded"),
    0x9A: (Code.InvalidRetained, 400, "the broker does not take retained messages"),
    0x9B: (Code.InvalidQoS, 400, "the broker does not take this QoS"),
}


def from_reason_code(reason_code: int) -> GatewayError:
    """
    The error for a broker's failure reason code (>= 0x80) on a publish.
    """
    code, status, message = _REASON_CODES.get(
        reason_code,
        (Code.BrokerRejected, 502, "the broker refused the message"),
    )
    retry_after = 1 if status == 429 else None
    return GatewayError(
        code,
        f"{message} (reason code 0x{reason_code:02X})",
        status=status,
        retry_after=retry_after,
    )


# CONNACK refusals, when the gateway connects as the sender (broker mode): MQTT 5
# reason codes and MQTT 3.1.1 return codes. "Not authorized" at CONNECT is 401, not
# 403: no topic is involved yet, and Mosquitto (like other brokers) answers a wrong
# password with it rather than with "bad user name or password".
_CONNACK_5: dict[int, tuple[Code, str]] = {
    0x85: (Code.InvalidParameter, "the broker refused the client id"),
    0x86: (Code.Unauthorized, "the broker refused the user name or password"),
    0x87: (Code.Unauthorized, "the broker did not authorize this client"),
    0x88: (Code.BrokerUnavailable, "the broker is unavailable"),
    0x89: (Code.BrokerUnavailable, "the broker is busy"),
    0x8A: (Code.Forbidden, "the broker has banned this client"),
    0x8C: (Code.Unauthorized, "the broker refused the authentication method"),
    0x97: (Code.RateLimited, "the broker's quota is exceeded"),
    0x9F: (Code.RateLimited, "the broker's connection rate is exceeded"),
}
_CONNACK_3_1_1: dict[int, tuple[Code, str]] = {
    2: (Code.InvalidParameter, "the broker refused the client id"),
    3: (Code.BrokerUnavailable, "the broker is unavailable"),
    4: (Code.Unauthorized, "the broker refused the user name or password"),
    5: (Code.Unauthorized, "the broker did not authorize this client"),
}


def from_connack_code(code: int, protocol_level: int) -> GatewayError:
    """
    The error for a broker's refusal of a CONNECT made as the sender.

    401 (with C{WWW-Authenticate}) for bad credentials or a client that is not
    authorized to connect (brokers such as Mosquitto say so for a wrong password),
    403 for a banned client, 400 for a client id the broker refuses, 429 (with
    C{Retry-After}) for quotas and connection rates, 503 (with C{Retry-After}) for a
    broker that is unavailable or busy, 502 for anything else.

    @param code: the CONNACK reason code (MQTT 5, >= 0x80) or return code
        (MQTT 3.1.1, 1 to 5).
    @param protocol_level: the level of the refused CONNECT (4 or 5). A code below
        0x80 is read as a 3.1.1 return code whatever the level, since MQTT 5 has
        no failure codes there.
    """
    table = _CONNACK_3_1_1 if protocol_level == 4 or code < 0x80 else _CONNACK_5
    code_, message = table.get(
        code, (Code.BrokerRejected, "the broker refused the connection")
    )
    retry_after = 1 if code_ in (Code.RateLimited, Code.BrokerUnavailable) else None
    return GatewayError(
        code_,
        f"{message} (CONNACK code 0x{code:02X})",
        retry_after=retry_after,
        parameter="client_id" if code_ is Code.InvalidParameter else None,
    )


def from_publish_failure(failure: PublishFailed) -> GatewayError:
    """
    The one mapping of the broker side's failures (L{PublishFailed}) to what an
    HTTP client is told: 503 with C{Retry-After} when no session could take the
    message or none acknowledged it in time, the mapped status of a broker
    reason code, 400 naming C{qos} or C{retained} for what the broker does not
    offer, 413 for its size limit, 400 for what MQTT cannot carry, 502 for a
    message the broker closed the connection on without saying why.
    """
    outcome, message = failure.outcome, failure.message
    code = failure.reason_code
    if outcome in (Outcome.UNAVAILABLE, Outcome.TIMEOUT, Outcome.SESSION_LOST):
        return broker_unavailable(message, retry_after=failure.retry_after or 1)
    if outcome is Outcome.CONNECT_REFUSED and code is not None:
        return from_connack_code(code, failure.protocol_level)
    closed = outcome in (Outcome.REASON_CODE, Outcome.CLOSED_ON)
    if closed and code is not None and code >= 0x80:
        error = from_reason_code(code)
        return GatewayError(
            error.code,
            f"{message} ({error.message})" if message else error.message,
            status=error.status,
            retry_after=error.retry_after,
        )
    simple = _OUTCOMES.get(outcome, (Code.BrokerRejected, None))
    return GatewayError(simple[0], message, parameter=simple[1])


_OUTCOMES: dict[Outcome, tuple[Code, str | None]] = {
    Outcome.QOS_LIMIT: (Code.InvalidQoS, "qos"),
    Outcome.RETAIN_LIMIT: (Code.InvalidRetained, "retained"),
    Outcome.SIZE_LIMIT: (Code.PayloadTooLarge, None),
    Outcome.UNSUPPORTED_PROPERTY: (Code.UnsupportedProperty, None),
    Outcome.UNSENDABLE: (Code.InvalidParameter, None),
}
