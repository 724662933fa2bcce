# -*- test-case-name: tests.web.test_aliyun -*-
"""
API 2: Alibaba Cloud ApsaraMQ for MQTT C{SendMessage} (OnsMqtt 2020-04-20, OpenAPI
RPC style), answered as the official SDKs expect it.

The SDKs send C{POST /} with every parameter in the query string and an empty body,
signed with ACS3-HMAC-SHA256 (the action then in C{x-acs-action}) or with the
HMAC-SHA1 scheme (C{Action} among the parameters). L{gateway.web.aliyun_requests}
reads the parameters without I/O, L{gateway.auth.aliyun_signature} checks the
signature, and L{AliyunAPI} hands a L{Claim} (the verified AccessKeyId) and a
L{Message} to the same core as API 1, then answers C{{"MsgId", "RequestId"}} or
Alibaba's error shape (L{gateway.web.aliyun_responses}, the one place errors of this
API are rendered).

C{SendMessage} has no QoS or retain parameter. The message is published with QoS 1,
not retained: ApsaraMQ answers with a C{MsgId} once it has stored the message,
which is what a QoS 1 PUBACK promises, and a 200 here likewise means the broker
has acknowledged it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.auth.aliyun_signature import SignedRequest, Verifier, nonce_used
from gateway.auth.identify import Claim
from gateway.config import AliyunConfig
from gateway.core import Gateway
from gateway.errors import Code, GatewayError
from gateway.model import Message, Peer, PublishResult
from gateway.mqtt.strings import MAX_STRING_BYTES
from gateway.web.aliyun_requests import (
    AliyunError,
    check_action,
    parse_send_message,
    signed_request,
)
from gateway.web.aliyun_responses import error_response, json_response, new_request_id
from gateway.web.messages import API, AccessLogFields, HTTPRequest, HTTPResponse

#: The path the API is served on.
ALIYUN_PATH = b"/"
#: What C{SendMessage} implies for the MQTT message (no parameters say otherwise).
QOS = 1
RETAIN = False
_METHODS = ("GET", "POST")

_LOG = AccessLogFields(api=API.ALIYUN)


class FleetNonces(Protocol):
    """A nonce cache shared by several processes (L{gateway.cluster.nonces})."""

    def add(self, nonce: str, until: float, now: float) -> Deferred[bool]:
        """Fires with C{False} for a replay, else C{True} (now remembered)."""


def _replay() -> NoReturn:
    raise nonce_used()


def _failed(log: AccessLogFields) -> Callable[[Failure], HTTPResponse]:
    """An errback rendering a L{GatewayError} as this API's error response."""

    def failed(failure: Failure) -> HTTPResponse:
        failure.trap(GatewayError)
        error = failure.value
        assert isinstance(error, GatewayError)
        return error_response(error, log)

    return failed


class AliyunAPI:
    """
    The adapter of API 2: request in, response out, the core in between.

    @ivar core: the one message path (the same as API 1's).
    @ivar config: the C{[aliyun]} settings: the InstanceId served, the AccessKeys,
        the Payload's encoding.
    @ivar verifier: checks signatures, times and nonces.
    @ivar max_payload: the largest MQTT payload accepted, or C{None}.
    @ivar nonces: the nonce cache of every gateway sharing one Redis, or C{None}
        for the verifier's own.
    """

    def __init__(
        self,
        core: Gateway,
        config: AliyunConfig,
        clock: IReactorTime,
        *,
        max_payload: int | None = None,
        verifier: Verifier | None = None,
        nonces: FleetNonces | None = None,
    ) -> None:
        self.core = core
        self.config = config
        self.verifier = Verifier(config.access_keys) if verifier is None else verifier
        self.max_payload = max_payload
        self.nonces = nonces
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
        try:
            signed = signed_request(request)
            check_action(signed)
            if self.nonces is None:
                access_key_id = self.authenticate(signed, request.connection.peer)
                return self._send(request, signed, access_key_id)
            accepted = self._authenticate_shared(signed, request.connection.peer)
        except GatewayError as e:
            return error_response(e, _LOG)
        return accepted.addCallbacks(
            lambda access_key_id: self._send(request, signed, access_key_id),
            _failed(_LOG),
        )

    def _send(
        self, request: HTTPRequest, signed: SignedRequest, access_key_id: str
    ) -> HTTPResponse | Deferred[HTTPResponse]:
        """Publish the message of a request that C{access_key_id} signed."""
        log = AccessLogFields(
            api=API.ALIYUN, client_id=access_key_id, user=access_key_id
        )
        try:
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
            connection=request.connection,
        )
        message = Message(
            topic=asked.topic, payload=asked.payload, qos=QOS, retain=RETAIN
        )

        def done(result: PublishResult) -> HTTPResponse:
            body = {"MsgId": result.message_id, "RequestId": new_request_id()}
            return json_response(
                200,
                body,
                [],
                AccessLogFields(API.ALIYUN, log.client_id, log.user, result.message_id),
            )

        try:
            submitted = self.core.submit(claim, lambda: [message])
        except GatewayError as e:
            return error_response(e, log)
        return submitted.results[0].addCallbacks(done, _failed(log))

    def _authenticate_shared(self, request: SignedRequest, peer: Peer) -> Deferred[str]:
        """
        L{authenticate} with the nonce checked by the fleet's cache: fires with
        the AccessKeyId, or fails as L{authenticate} raises (a replay anywhere
        counts as a failed authentication of C{peer}'s address).
        """
        nonces = self.nonces
        assert nonces is not None
        now = self._clock.seconds()
        signed = self.core.attempt(peer, now, lambda: self.verifier.check(request, now))

        def seen(fresh: bool) -> str:
            if not fresh:
                self.core.attempt(peer, now, _replay)
            return signed.access_key_id

        return nonces.add(signed.nonce, signed.until, now).addCallback(seen)

    def authenticate(self, request: SignedRequest, peer: Peer) -> str:
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
