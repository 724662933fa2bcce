"""
API 2, Alibaba C{SendMessage}: what a request is read as, every
error in Alibaba's shape, the official SDKs' real requests, and end to end: both
SDKs (C{alibabacloud-onsmqtt20200420}, ACS3 and V2 signatures, and the older
C{aliyun-python-sdk-onsmqtt}) over HTTP and HTTPS -> the gateway -> Mosquitto -> a
paho subscriber.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import re
import time
from typing import Any, cast
from urllib.parse import urlencode

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.auth.aliyun_errors import Reason, SignatureError
from gateway.auth.identify import Authenticator
from gateway.config import AliyunConfig, LimitsConfig
from gateway.core import Gateway, TopicPolicy
from gateway.errors import Code, GatewayError, broker_unavailable, from_reason_code
from gateway.limits import KeyedBuckets, RateLimiter
from gateway.model import Identity, Message, Peer, Proof
from gateway.tap import Listener
from gateway.web.aliyun import QOS, RETAIN, AliyunAPI, max_target_bytes
from gateway.web.aliyun_requests import (
    parse_parameters,
    parse_send_message,
    signed_request,
)
from gateway.web.aliyun_responses import alibaba_status_and_code, error_response
from gateway.web.messages import API, AccessLogFields, HTTPRequest, HTTPResponse
from gateway.web.router import Router
from gateway.web.server import HTTPServerFactory
from gateway.web.topics import TopicsAPI
from tests.aliyun_sdk import (
    KEY_ID,
    NOW,
    SECRET,
    SEND,
    acs3_request,
    new_sdk,
    old_sdk_request,
    rpc_query,
    rpc_request,
)
from tests.brokers import Mosquitto, Subscriber, free_port, poll
from tests.certs import PKI, make_pki
from tests.fakes import FakePublisher, TopicACL, fails
from tests.gateway import CurlResult, RunningGateway, curl

INSTANCE = "mqtt-cn-1"
MSG_ID = re.compile(r"^[0-9A-F]{32}$")
REQUEST_ID = re.compile(
    r"^[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$"
)
SDKS = ("acs3", "v2", "old")
#: Publishing is allowed to every topic but C{secret}.
NO_SECRET = TopicACL(lambda topic: topic != "secret")


def make_api(
    *,
    acl: TopicPolicy | None = None,
    publisher: FakePublisher | None = None,
    payload_encoding: str = "raw",
    max_payload: int | None = None,
    limiter: RateLimiter | None = None,
    failures: KeyedBuckets | None = None,
    now: float = NOW,
) -> tuple[AliyunAPI, FakePublisher, Clock]:
    """The adapter over the real core, with a recording publisher."""
    publisher = publisher or FakePublisher()
    clock = Clock()
    clock.advance(now)
    core = Gateway(
        publisher,
        Authenticator(None, allow_anonymous=False, failures=failures),
        clock,
        acl,
        limiter=limiter,
    )
    config = AliyunConfig(
        instance_id=INSTANCE,
        access_keys={KEY_ID: SECRET},
        payload_encoding=payload_encoding,
    )
    api = AliyunAPI(core, config, clock, max_payload=max_payload)
    return api, publisher, clock


class AnsweringTestCase(SynchronousTestCase):
    def answer(
        self, result: HTTPResponse | Deferred[HTTPResponse]
    ) -> tuple[HTTPResponse, dict[str, str], dict[str, Any]]:
        """The response, its headers (names lower-cased) and its JSON body."""
        response = (
            self.successResultOf(result) if isinstance(result, Deferred) else result
        )
        headers = {k.lower(): v for k, v in response.headers}
        self.assertEqual(headers["content-type"], "application/json;charset=utf-8")
        body = json.loads(response.body)
        self.assertRegex(body["RequestId"], REQUEST_ID)
        self.assertEqual(headers["x-acs-request-id"], body["RequestId"])
        return response, headers, body

    def assertOK(self, result: HTTPResponse | Deferred[HTTPResponse]) -> str:
        response, _, body = self.answer(result)
        self.assertEqual(response.status, 200, body)
        self.assertEqual(set(body), {"MsgId", "RequestId"})
        self.assertRegex(body["MsgId"], MSG_ID)
        return str(body["MsgId"])

    def assertRefused(
        self,
        result: HTTPResponse | Deferred[HTTPResponse],
        status: int,
        code: str,
    ) -> tuple[dict[str, str], dict[str, Any]]:
        response, headers, body = self.answer(result)
        self.assertEqual((response.status, body["Code"]), (status, code), body)
        self.assertEqual(set(body), {"RequestId", "Code", "Message"})
        self.assertNotIn("www-authenticate", headers)
        return headers, body


class ParseTests(SynchronousTestCase):
    def test_parameters(self) -> None:
        """InstanceId, MqttTopic and Payload are read; other parameters (common
        ones such as RegionId, or new ones) are ignored, as Alibaba does."""
        asked = parse_send_message(
            {
                "InstanceId": b"i",
                "MqttTopic": b"a/b c",
                "Payload": b"\xff raw",
                "RegionId": b"cn-hangzhou",
                "Unknown": b"1",
            }
        )
        self.assertEqual(
            (asked.instance_id, asked.topic, asked.payload), ("i", "a/b c", b"\xff raw")
        )

    def test_required(self) -> None:
        """A missing parameter is InvalidParameter.<Name>."""
        for name in ("InstanceId", "MqttTopic", "Payload"):
            params = {k: v.encode() for k, v in SEND.items() if k != name}
            with self.assertRaises(GatewayError) as e:
                parse_send_message(params)
            self.assertEqual(
                alibaba_status_and_code(e.exception),
                (400, f"InvalidParameter.{name}"),
            )
            self.assertEqual(
                e.exception.message, f"{name} is mandatory for this action"
            )

    def test_invalid(self) -> None:
        """Topics as API 1 checks them; bad base64; payloads over the limit."""
        for params, name in (
            ({"MqttTopic": b""}, "MqttTopic"),
            ({"MqttTopic": b"a/+"}, "MqttTopic"),
            ({"MqttTopic": b"a/#"}, "MqttTopic"),
            ({"MqttTopic": b"a\x00"}, "MqttTopic"),
            ({"MqttTopic": b"\xff"}, "MqttTopic"),
            ({"MqttTopic": b"x" * 65536}, "MqttTopic"),
            ({"InstanceId": b""}, "InstanceId"),
            ({"Payload": b"x" * 11}, "Payload"),
        ):
            with self.assertRaises(GatewayError, msg=repr(params)[:80]) as e:
                parse_send_message(
                    {**{k: v.encode() for k, v in SEND.items()}, **params},
                    max_payload=10,
                )
            self.assertEqual(
                alibaba_status_and_code(e.exception), (400, f"InvalidParameter.{name}")
            )
        with self.assertRaises(GatewayError) as e:
            parse_send_message(
                {"InstanceId": b"i", "MqttTopic": b"t", "Payload": b"a b="}, "base64"
            )
        self.assertEqual(e.exception.message, "Payload is not valid base64")

    def test_base64(self) -> None:
        """With payload_encoding = "base64" the Payload is decoded."""
        data = bytes(range(256))
        asked = parse_send_message(
            {"InstanceId": b"i", "MqttTopic": b"t", "Payload": base64.b64encode(data)},
            "base64",
        )
        self.assertEqual(asked.payload, data)

    def test_repeated(self) -> None:
        """A parameter given twice (in the query, or in the query and a form
        body) is refused, never silently one of them."""
        with self.assertRaises(GatewayError) as e:
            parse_parameters(b"MqttTopic=a&MqttTopic=b")
        self.assertEqual(
            alibaba_status_and_code(e.exception), (400, "InvalidParameter.MqttTopic")
        )
        request = HTTPRequest(
            method="POST",
            path=b"/",
            query=b"Payload=a",
            headers=((b"content-type", b"application/x-www-form-urlencoded"),),
            body=b"Payload=b",
        )
        with self.assertRaises(GatewayError):
            signed_request(request)


class HandleTests(AnsweringTestCase):
    def test_send_message(self) -> None:
        """Both signatures: 200 {"MsgId", "RequestId"}; the core gets the
        AccessKeyId as client id and user, the message as QoS 1, not retained."""
        for request in (acs3_request(), rpc_request()):
            api, publisher, _ = make_api()
            result = api.handle(request)
            assert isinstance(result, Deferred)
            response = self.successResultOf(result)
            msg_id = self.assertOK(response)
            [(identity, message)] = publisher.calls
            self.assertEqual(
                identity,
                Identity(
                    client_id=KEY_ID,
                    username=KEY_ID,
                    proof=Proof.ACCESS_KEY,
                    password=SECRET.encode(),
                ),
            )
            connection = identity.connection
            self.assertEqual(
                (connection.id, connection.peer, connection.keep_alive),
                ("c0ffee", Peer("127.0.0.1", 5000), True),
            )
            self.assertEqual(
                message,
                Message(topic="home/a b", payload=b"hi +there", qos=1, retain=False),
            )
            self.assertEqual((QOS, RETAIN), (1, False))
            self.assertEqual(
                response.log,
                AccessLogFields(
                    api=API.ALIYUN, client_id=KEY_ID, user=KEY_ID, message_id=msg_id
                ),
            )

    def test_old_sdk(self) -> None:
        """The old SDK's signed URL (spaces as %20, SignatureType empty)."""
        api, publisher, _ = make_api(now=time.time())
        request, _ = old_sdk_request()
        self.assertOK(api.handle(request))
        self.assertEqual(publisher.calls[0][1].topic, "home/a b")

    def test_form_body(self) -> None:
        """Parameters may also come in a form body (HMAC-SHA1 signs both)."""
        api, publisher, _ = make_api()
        params = rpc_query()
        form = {name: params.pop(name) for name in ("MqttTopic", "Payload")}
        utils: Any = new_sdk()
        signed = {k: v for k, v in params.items() if k != "Signature"}
        params["Signature"] = utils.get_rpcsignature({**signed, **form}, "POST", SECRET)
        request = HTTPRequest(
            method="POST",
            path=b"/",
            query=urlencode(params).encode(),
            headers=((b"content-type", b"application/x-www-form-urlencoded"),),
            body=urlencode(form).encode(),
        )
        self.assertOK(api.handle(request))
        self.assertEqual(publisher.calls[0][1].payload, b"hi +there")

    def test_refusals(self) -> None:
        """Every refusal has Alibaba's code, and nothing is published."""
        api, publisher, _ = make_api(acl=NO_SECRET)
        account, topic = "CheckAccountInfoFailed", "InvalidParameter.MqttTopic"
        no_topic = {"InstanceId": INSTANCE, "Payload": "x"}
        cases: list[tuple[HTTPRequest, int, str]] = [
            (acs3_request(key_id="LTAIunknown"), 400, account),
            (rpc_request(secret="wrong"), 400, account),
            (HTTPRequest("POST", b"/", b"Action=SendMessage"), 400, account),
            (acs3_request(when=NOW - 901), 400, "InvalidTimeStamp.Expired"),
            (
                acs3_request({**SEND, "InstanceId": "other"}),
                400,
                "InstancePermissionCheckFailed",
            ),
            (
                rpc_request({**SEND, "MqttTopic": "secret"}),
                400,
                "PermissionCheckFailed",
            ),
            (acs3_request(no_topic), 400, topic),
            (rpc_request({**SEND, "MqttTopic": "a/#"}), 400, topic),
            (acs3_request(action="ListGroupId"), 404, "ApiNotSupport"),
            (rpc_request({**SEND, "Action": "ListGroupId"}), 404, "ApiNotSupport"),
            (acs3_request(version="2019-01-01"), 404, "ApiNotSupport"),
            (HTTPRequest("POST", b"/", b""), 404, "ApiNotSupport"),
        ]
        for request, status, code in cases:
            self.assertRefused(api.handle(request), status, code)
        self.assertEqual(publisher.calls, [])
        replayed = rpc_request(nonce="twice")
        self.assertOK(api.handle(replayed))
        self.assertRefused(api.handle(replayed), 400, "SignatureNonceUsed")
        self.assertEqual(len(publisher.calls), 1)

    def test_long_numbers(self) -> None:
        """Numbers and times of 5,000 digits, signed or not, are a 400 with
        Alibaba's code, never a 500."""
        api, publisher, _ = make_api()
        digits = "9" * 5000
        cases: list[tuple[HTTPRequest, str]] = [
            (rpc_request({**SEND, "Timestamp": digits}), "InvalidTimeStamp.Format"),
            (
                # A valid time (fractions of any length are), but not now.
                rpc_request({**SEND, "Timestamp": f"2024-05-01T12:00:00.{digits}Z"}),
                "InvalidTimeStamp.Expired",
            ),
            (
                rpc_request({**SEND, "Timestamp": f"+{digits}-05-01T12:00:00Z"}),
                "InvalidTimeStamp.Format",
            ),
            (rpc_request(nonce=digits), "CheckAccountInfoFailed"),
            (
                acs3_request({**SEND, "InstanceId": digits}),
                "InstancePermissionCheckFailed",
            ),
        ]
        for request, code in cases:
            self.assertRefused(api.handle(request), 400, code)
        self.assertEqual(publisher.calls, [])

    def test_methods(self) -> None:
        """GET works as POST does (RPC style); other methods are 405."""
        api, _, _ = make_api()
        self.assertOK(api.handle(rpc_request(method="GET")))
        put = HTTPRequest("PUT", b"/", rpc_request().query)
        headers, _ = self.assertRefused(api.handle(put), 405, "UnsupportedHTTPMethod")
        self.assertEqual(headers["allow"], "GET, POST")

    def test_failed_authentications_limited(self) -> None:
        """Five wrong signatures from one address at once, then one per 10 s;
        beyond that 429 SystemOverFlow, even for a good signature."""
        api, _, clock = make_api()
        for i in range(5):
            self.assertRefused(
                api.handle(rpc_request(secret="wrong", nonce=f"w{i}")),
                400,
                "CheckAccountInfoFailed",
            )
        headers, _ = self.assertRefused(
            api.handle(rpc_request()), 429, "SystemOverFlow"
        )
        self.assertEqual(headers["retry-after"], "10")
        self.assertEqual(headers["x-acs-retry-after"], "10000")
        clock.advance(10)
        self.assertOK(api.handle(rpc_request()))

    def test_core_errors(self) -> None:
        """The core's and the broker's errors: broker unreachable (503) or
        refusing (502) -> 500 SendMessageFailed; the broker's ACL (0x87) ->
        PermissionCheckFailed; the rate limits -> 429 SystemOverFlow."""
        for error, status, code in (
            (broker_unavailable("no broker"), 500, "SendMessageFailed"),
            (from_reason_code(0x80), 500, "SendMessageFailed"),
            (from_reason_code(0x87), 400, "PermissionCheckFailed"),
            (from_reason_code(0x97), 429, "SystemOverFlow"),
        ):
            api, _, _ = make_api(publisher=FakePublisher(fails(error)))
            self.assertRefused(api.handle(acs3_request()), status, code)

    def test_rate_limited(self) -> None:
        """The core's rate limits count the AccessKeyId: 429 SystemOverFlow with
        Retry-After (seconds) and x-acs-retry-after (milliseconds)."""
        limiter = RateLimiter(LimitsConfig(rate=0, client_rate=1, client_burst=1))
        api, publisher, _ = make_api(limiter=limiter)
        self.assertOK(api.handle(acs3_request(nonce="1")))
        headers, _ = self.assertRefused(
            api.handle(acs3_request(nonce="2")), 429, "SystemOverFlow"
        )
        self.assertEqual(
            (headers["retry-after"], headers["x-acs-retry-after"]), ("1", "1000")
        )
        self.assertEqual(len(publisher.calls), 1)


class RenderTests(AnsweringTestCase):
    def test_mapping(self) -> None:
        """Each error of the core and the HTTP server has its Alibaba code."""
        check, payload = "ParameterCheckFailed", "InvalidParameter.Payload"
        failed = "SendMessageFailed"
        for error, status, code in (
            (GatewayError(Code.Unauthorized, "x"), 400, "CheckAccountInfoFailed"),
            (GatewayError(Code.Forbidden, "x"), 400, "PermissionCheckFailed"),
            (GatewayError(Code.InvalidTopic, "x"), 400, "InvalidParameter.MqttTopic"),
            (GatewayError(Code.InvalidParameter, "x"), 400, check),
            (GatewayError(Code.UnsupportedProperty, "x"), 400, check),
            (GatewayError(Code.BadRequest, "x"), 400, check),
            (GatewayError(Code.BadRequest, "x", status=505), 505, check),
            (GatewayError(Code.UriTooLong, "x"), 414, check),
            (GatewayError(Code.HeadersTooLarge, "x"), 431, check),
            (GatewayError(Code.PayloadTooLarge, "x"), 413, payload),
            (GatewayError(Code.InternalError, "x"), 500, "InternalError"),
            (GatewayError(Code.BrokerRejected, "x"), 500, failed),
            (broker_unavailable("x"), 500, failed),
            (GatewayError(Code.RateLimited, "x", retry_after=3), 429, "SystemOverFlow"),
            (SignatureError(Reason.BAD_TIMESTAMP, "x"), 400, "InvalidTimeStamp.Format"),
            (SignatureError(Reason.EXPIRED, "x"), 400, "InvalidTimeStamp.Expired"),
            (SignatureError(Reason.NONCE_USED, "x"), 400, "SignatureNonceUsed"),
            (SignatureError(Reason.UNKNOWN_KEY, "x"), 400, "CheckAccountInfoFailed"),
        ):
            self.assertEqual(alibaba_status_and_code(error), (status, code), error)
            self.assertRefused(error_response(error, AccessLogFields()), status, code)

    def test_waits(self) -> None:
        """A wait goes out as Retry-After; with SystemOverFlow also as
        x-acs-retry-after in milliseconds (what the alibabacloud SDKs read)."""
        headers, body = self.assertRefused(
            error_response(
                GatewayError(Code.RateLimited, "slow down", retry_after=3),
                AccessLogFields(),
            ),
            429,
            "SystemOverFlow",
        )
        self.assertEqual(body["Message"], "slow down")
        self.assertEqual(
            (headers["retry-after"], headers["x-acs-retry-after"]), ("3", "3000")
        )
        headers, _ = self.assertRefused(
            error_response(broker_unavailable("down", 2), AccessLogFields()),
            500,
            "SendMessageFailed",
        )
        self.assertEqual(headers["retry-after"], "2")
        self.assertNotIn("x-acs-retry-after", headers)


class RouterTests(AnsweringTestCase):
    def router(self, enabled: bool = True) -> Router:
        api, _, _ = make_api()
        return Router(TopicsAPI(api.core), api if enabled else None)

    def test_routes(self) -> None:
        """'/' is API 2 when [aliyun] is on, an InvalidPath (API 1's shape) when
        it is off; /topics/... stays API 1."""
        self.assertOK(self.router().handle(acs3_request()))
        off = self.router(False).handle(acs3_request())
        assert isinstance(off, HTTPResponse)
        self.assertEqual(
            (off.status, json.loads(off.body)["code"]), (400, "InvalidPath")
        )
        topics = self.router().handle(HTTPRequest("POST", b"/topics/a", b""))
        assert isinstance(topics, HTTPResponse)
        self.assertEqual(json.loads(topics.body)["code"], "Unauthorized")

    def test_server_errors_in_alibaba_shape(self) -> None:
        """An error the HTTP server finds itself (a request line that is too long)
        is answered on '/' in Alibaba's shape."""
        factory = HTTPServerFactory(self.router(), max_target_bytes=1024, clock=Clock())
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(b"POST /?Payload=" + b"x" * 2000 + b" HTTP/1.1\r\n")
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 414 "), head)
        self.assertEqual(json.loads(body)["Code"], "ParameterCheckFailed")

    def test_target_length(self) -> None:
        """The request target may hold a Payload of max_body bytes and a topic of
        65535 bytes, each byte percent-encoded."""
        self.assertGreaterEqual(
            max_target_bytes(61440), 3 * (61440 + 65535) + len("/?" + urlencode(SEND))
        )


# Both SDKs, as a user's back-end calls them (in a thread: they block).


def _close_sdk_connections() -> None:
    """Close the new SDK's pooled keep-alive connections (module-wide)."""
    from darabonba.core import DaraCore  # type: ignore[import-untyped]

    for session in list(DaraCore._sessions.values()):
        session.close()
    DaraCore._sessions.clear()


def sdk_call(
    sdk: str,
    endpoint: str,
    *,
    key_id: str = KEY_ID,
    secret: str = SECRET,
    instance_id: str = INSTANCE,
    topic: str | None = "home/a b",
    payload: str = "hi",
    protocol: str = "http",
    ca: str | None = None,
    other_action: bool = False,
) -> Deferred[dict[str, Any]]:
    """
    Call C{SendMessage} (or C{ListGroupId}) with C{sdk}: C{"acs3"} (the new SDK's
    default signature), C{"v2"} (the new SDK, C{signature_algorithm="v2"}) or
    C{"old"} (C{aliyun-python-sdk-core}); fires with the response body.
    """

    def new() -> dict[str, Any]:
        from alibabacloud_onsmqtt20200420 import (  # type: ignore[import-untyped]
            models,
        )
        from alibabacloud_onsmqtt20200420.client import (  # type: ignore[import-untyped]
            Client,
        )
        from alibabacloud_tea_openapi.models import (  # type: ignore[import-untyped]
            Config,
        )

        client = Client(
            Config(
                access_key_id=key_id,
                access_key_secret=secret,
                endpoint=endpoint,
                protocol=protocol,
                signature_algorithm="v2" if sdk == "v2" else None,
                ca=ca,
            )
        )
        try:
            if other_action:
                response = client.list_group_id(
                    models.ListGroupIdRequest(instance_id=instance_id)
                )
            else:
                response = client.send_message(
                    models.SendMessageRequest(
                        instance_id=instance_id, mqtt_topic=topic, payload=payload
                    )
                )
            return response.body.to_map()  # type: ignore[no-any-return]
        finally:
            _close_sdk_connections()

    def old() -> dict[str, Any]:
        from aliyunsdkcore.client import AcsClient  # type: ignore[import-untyped]
        from aliyunsdkonsmqtt.request.v20200420.ListGroupIdRequest import (  # type: ignore[import-untyped]
            ListGroupIdRequest,
        )
        from aliyunsdkonsmqtt.request.v20200420.SendMessageRequest import (  # type: ignore[import-untyped]
            SendMessageRequest,
        )

        client = AcsClient(key_id, secret, "cn-hangzhou", verify=ca)
        request = ListGroupIdRequest() if other_action else SendMessageRequest()
        request.set_endpoint(endpoint)
        request.set_protocol_type(protocol)
        request.set_InstanceId(instance_id)
        if not other_action:
            if topic is not None:
                request.set_MqttTopic(topic)
            request.set_Payload(payload)
        try:
            return json.loads(client.do_action_with_exception(request))  # type: ignore[no-any-return]
        finally:
            client.session.close()

    def run() -> dict[str, Any]:
        try:
            return old() if sdk == "old" else new()
        except Exception as e:
            error = SDKError.of(e)
        # The SDK's exception and its traceback hold the HTTP response, whose
        # socket stays open until they are collected.
        gc.collect()
        raise error

    return deferToThread(run)


class SDKError(Exception):
    """
    What an SDK raised: its class name, the HTTP status and Code it carries, its
    text and (the new SDK's ThrottlingException) its retry_after.
    """

    def __init__(
        self, kind: str, status: int | None, code: str | None, text: str, wait: Any
    ) -> None:
        super().__init__(f"{kind}: {status} {code}: {text}")
        self.kind = kind
        self.status = status
        self.code = code
        self.text = text
        self.retry_after = wait

    @classmethod
    def of(cls, error: Exception) -> SDKError:
        """The summary of C{error}."""
        if hasattr(error, "get_error_code"):  # aliyunsdkcore's exceptions
            status = getattr(error, "get_http_status", lambda: None)()
            code = error.get_error_code()
        else:
            status = getattr(error, "status_code", None)
            code = getattr(error, "code", None)
        return cls(
            type(error).__name__,
            status,
            code,
            str(error),
            getattr(error, "retry_after", None),
        )


async def refused(sdk: str, endpoint: str, **kw: Any) -> tuple[int, str, SDKError]:
    """Call C{SendMessage} with C{sdk}, expecting the SDK to raise."""
    try:
        body = await sdk_call(sdk, endpoint, **kw)
    except SDKError as e:
        assert e.status is not None and e.code is not None, e
        return e.status, e.code, e
    raise AssertionError(f"{sdk}: accepted: {body}")


def stale_clock(test: TestCase, when: float) -> None:
    """Make both SDKs sign with the time C{when} (for the rest of C{test})."""
    from alibabacloud_tea_openapi.utils import Utils  # type: ignore[import-untyped]
    from aliyunsdkcore.utils import parameter_helper  # type: ignore[import-untyped]

    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    test.patch(Utils, "get_timestamp", staticmethod(lambda: stamp))
    test.patch(parameter_helper, "get_iso_8061_date", lambda: stamp)


async def wait_idle(factory: HTTPServerFactory) -> None:
    """Wait until the SDKs' connections to C{factory}'s server have closed."""
    await poll(
        reactor,
        lambda: factory.open_connections == 0,
        5,
        lambda: f"{factory.open_connections} connections still open",
    )


class _Recorder:
    """A request handler that records the requests it passes on."""

    def __init__(self, handler: Router) -> None:
        self.handler = handler
        self.requests: list[HTTPRequest] = []

    def handle(self, request: HTTPRequest) -> HTTPResponse | Deferred[HTTPResponse]:
        self.requests.append(request)
        return self.handler.handle(request)

    def render_error(self, request: HTTPRequest, error: GatewayError) -> HTTPResponse:
        return self.handler.render_error(request, error)


def replay(endpoint: str, request: HTTPRequest) -> Deferred[CurlResult]:
    """Send C{request} again, byte for byte but for framing headers, with curl."""
    args = ["-g", "-X", request.method]
    for name, value in request.headers:
        if name not in (b"content-length", b"connection"):
            args += ["-H", f"{name.decode()}: {value.decode()}"]
    target = request.path + (b"?" + request.query if request.query else b"")
    return curl(*args, f"http://{endpoint}{target.decode()}")


class SDKTests(TestCase):
    """
    The SDKs against the gateway's HTTP server, adapter and core in this process
    (a recording publisher instead of a broker): what they really send, and that
    every refusal reaches the SDK's exception with its Code.
    """

    timeout = 60

    def serve(
        self,
        publisher: FakePublisher | None = None,
        limiter: RateLimiter | None = None,
    ) -> tuple[str, _Recorder, FakePublisher]:
        # Many refusals in one test: no limit on failed authentications.
        api, publisher, _ = make_api(
            acl=NO_SECRET,
            publisher=publisher,
            limiter=limiter,
            failures=KeyedBuckets(rate=1000, burst=1000),
        )
        api._clock = reactor  # real time: the SDKs sign with it
        recorder = _Recorder(Router(TopicsAPI(api.core), api))
        factory = HTTPServerFactory(
            recorder, max_target_bytes=max_target_bytes(262144), clock=reactor
        )
        port = cast(Any, reactor).listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: ensureDeferred(wait_idle(factory)))
        return f"127.0.0.1:{port.getHost().port}", recorder, publisher

    async def test_new_sdk_acs3_request(self) -> None:
        """The new SDK's default: POST / with every parameter in the query
        (spaces as '+'), an empty body, ACS3-HMAC-SHA256 over host, accept,
        user-agent and every x-acs-* header."""
        endpoint, recorder, publisher = self.serve()
        body = await sdk_call("acs3", endpoint, topic="home/a b", payload="1 + 1")
        self.assertRegex(body["MsgId"], MSG_ID)
        self.assertRegex(body["RequestId"], REQUEST_ID)
        [request] = recorder.requests
        self.assertEqual(
            (request.method, request.path, request.body), ("POST", b"/", b"")
        )
        self.assertIn(b"MqttTopic=home%2Fa+b", request.query)
        self.assertIn(b"Payload=1+%2B+1", request.query)
        headers = dict(request.headers)
        self.assertEqual(headers[b"host"], endpoint.encode())
        self.assertEqual(headers[b"x-acs-action"], b"SendMessage")
        self.assertEqual(headers[b"x-acs-version"], b"2020-04-20")
        self.assertRegex(headers[b"x-acs-date"], rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertRegex(headers[b"x-acs-signature-nonce"], rb"^[0-9a-f]{32}$")
        self.assertEqual(
            headers[b"x-acs-content-sha256"],
            b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        self.assertRegex(
            headers[b"authorization"],
            rb"^ACS3-HMAC-SHA256 Credential=" + KEY_ID.encode()
            + rb",SignedHeaders=accept;host;user-agent;x-acs-action;"
            rb"x-acs-content-sha256;x-acs-credentials-provider;x-acs-date;"
            rb"x-acs-signature-nonce;x-acs-version,Signature=[0-9a-f]{64}$",
        )  # fmt: skip
        self.assertEqual(publisher.calls[0][1].payload, b"1 + 1")

    async def test_new_sdk_v2_request(self) -> None:
        """signature_algorithm="v2": the HMAC-SHA1 scheme, every parameter in the
        query, spaces as '+'."""
        endpoint, recorder, publisher = self.serve()
        await sdk_call("v2", endpoint, payload="1 + 1")
        [request] = recorder.requests
        params = parse_parameters(request.query)
        self.assertEqual(
            set(params),
            {
                "Action", "Format", "Version", "Timestamp", "SignatureNonce",
                "InstanceId", "MqttTopic", "Payload", "SignatureMethod",
                "SignatureVersion", "AccessKeyId", "Signature",
            },
        )  # fmt: skip
        self.assertIn(b"Payload=1+%2B+1", request.query)
        self.assertNotIn(b"authorization", dict(request.headers))
        self.assertEqual(publisher.calls[0][1].payload, b"1 + 1")

    async def test_old_sdk_request(self) -> None:
        """aliyun-python-sdk-core: HMAC-SHA1, spaces as %20, an empty
        SignatureType, Format=JSON and RegionId."""
        endpoint, recorder, publisher = self.serve()
        body = await sdk_call("old", endpoint, payload="1 + 1")
        self.assertRegex(body["MsgId"], MSG_ID)
        [request] = recorder.requests
        self.assertIn(b"Payload=1%20%2B%201", request.query)
        params = parse_parameters(request.query)
        self.assertEqual(params["SignatureType"], b"")
        self.assertEqual(params["Format"], b"JSON")
        self.assertEqual(params["RegionId"], b"cn-hangzhou")
        self.assertEqual(publisher.calls[0][1].payload, b"1 + 1")

    async def test_replayed(self) -> None:
        """The same signed request sent again by a raw HTTP client: 400
        SignatureNonceUsed, nothing published again."""
        endpoint, recorder, publisher = self.serve()
        for sdk in SDKS:
            await sdk_call(sdk, endpoint)
            again = await replay(endpoint, recorder.requests[-1])
            self.assertEqual(again.status, 400, again.body)
            self.assertEqual(json.loads(again.body)["Code"], "SignatureNonceUsed")
        self.assertEqual(len(publisher.calls), len(SDKS))

    async def test_refusals(self) -> None:
        """Each refusal reaches each SDK's exception with its status and Code."""
        endpoint, _, publisher = self.serve()
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"key_id": "LTAIunknown"}, 400, "CheckAccountInfoFailed"),
            ({"secret": "wrong"}, 400, "CheckAccountInfoFailed"),
            ({"other_action": True}, 404, "ApiNotSupport"),
            ({"topic": None}, 400, "InvalidParameter.MqttTopic"),
            ({"topic": "a/+"}, 400, "InvalidParameter.MqttTopic"),
            ({"instance_id": "mqtt-cn-other"}, 400, "InstancePermissionCheckFailed"),
            ({"topic": "secret"}, 400, "PermissionCheckFailed"),
        ]
        for sdk in SDKS:
            for kw, status, code in cases:
                got = await refused(sdk, endpoint, **kw)
                self.assertEqual(got[:2], (status, code), f"{sdk} {kw}: {got[2]}")
        self.assertEqual(publisher.calls, [])

    async def test_stale_timestamp(self) -> None:
        """A client clock 16 minutes off: 400 InvalidTimeStamp.Expired."""
        endpoint, _, _ = self.serve()
        stale_clock(self, time.time() - 16 * 60)
        for sdk in SDKS:
            got = await refused(sdk, endpoint)
            self.assertEqual(got[:2], (400, "InvalidTimeStamp.Expired"), sdk)

    async def test_throttled(self) -> None:
        """Over the rate limit: 429 SystemOverFlow; the new SDK raises its
        ThrottlingException with the wait (milliseconds)."""
        limiter = RateLimiter(LimitsConfig(rate=0, client_rate=0.01, client_burst=1))
        endpoint, _, publisher = self.serve(limiter=limiter)
        await sdk_call("acs3", endpoint)
        for sdk in SDKS:
            status, code, error = await refused(sdk, endpoint)
            self.assertEqual((status, code), (429, "SystemOverFlow"), sdk)
            if sdk != "old":
                self.assertEqual(error.kind, "ThrottlingException")
                self.assertEqual(error.retry_after, 100_000)
        self.assertEqual(len(publisher.calls), 1)

    async def test_send_message_failed(self) -> None:
        """The broker unreachable: 500 SendMessageFailed (the SDKs' server
        error)."""
        endpoint, _, _ = self.serve(
            publisher=FakePublisher(fails(broker_unavailable("no broker")))
        )
        for sdk in SDKS:
            status, code, error = await refused(sdk, endpoint)
            self.assertEqual((status, code), (500, "SendMessageFailed"), sdk)
            self.assertEqual(error.kind, "ServerException")


# End to end: the assembled gateway, a real Mosquitto, a paho subscriber.

ACL = f"""\
user {KEY_ID}
topic write home/#
topic write big/#
"""


def aliyun_config(
    broker_port: int,
    directory: str,
    *,
    payload_encoding: str = "raw",
    extra: str = "",
) -> str:
    acl = os.path.join(directory, "acl")
    with open(acl, "w") as f:
        f.write(ACL)
    return (
        f'[mqtt]\nbrokers = ["mqtt://127.0.0.1:{broker_port}"]\n'
        "publish_timeout = 2\nkeepalive = 10\n"
        f'[log]\naccess = "{os.path.join(directory, "access.log")}"\n'
        f'[auth]\nacl_file = "{acl}"\n'
        f'[aliyun]\ninstance_id = "{INSTANCE}"\n'
        f'payload_encoding = "{payload_encoding}"\n'
        f'access_keys = {{ {KEY_ID} = "{SECRET}" }}\n' + extra
    )


def http_factory(gateway: RunningGateway) -> HTTPServerFactory:
    """The HTTP server factory behind the gateway's listeners."""
    for service in gateway.service:  # type: ignore[attr-defined]
        if isinstance(service, Listener):
            factory = getattr(service.factory, "wrappedFactory", service.factory)
            assert isinstance(factory, HTTPServerFactory)
            return factory
    raise AssertionError("no listener")


def flush_access_log(factory: HTTPServerFactory) -> None:
    """Write the access log's pending lines now (no flush left scheduled)."""
    access_log: Any = factory.access_log
    if access_log is not None:
        access_log.flush()


class EndToEndTestCase(TestCase):
    timeout = 60
    payload_encoding = "raw"

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return ensureDeferred(self.start())

    def extra_config(self) -> str:
        return ""

    async def start(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.broker = Mosquitto()
        self.addCleanup(self.broker.stop)
        await self.broker.start()
        self.gateway = RunningGateway(
            aliyun_config(
                self.broker.port,
                self.directory,
                payload_encoding=self.payload_encoding,
                extra=self.extra_config(),
            )
        )
        self.endpoint = f"127.0.0.1:{self.gateway.port}"
        self.addCleanup(self.gateway.stop)
        await self.gateway.start()
        self.factory = http_factory(self.gateway)
        self.addCleanup(flush_access_log, self.factory)
        self.addCleanup(lambda: ensureDeferred(wait_idle(self.factory)))
        self.subscriber = Subscriber("127.0.0.1", self.broker.port, "#")
        self.addCleanup(self.subscriber.stop)
        await self.subscriber.start()


class EndToEndTests(EndToEndTestCase):
    async def test_both_sdks(self) -> None:
        """Each SDK and signature: {"MsgId", "RequestId"}, and the subscriber gets
        the Payload on MqttTopic, QoS 1, not retained, sent by the AccessKeyId."""
        for sdk in SDKS:
            body = await sdk_call(
                sdk,
                self.endpoint,
                topic=f"home/{sdk} x",
                payload=f"\u00e9t\u00e9 {sdk} +%&=",
            )
            self.assertEqual(set(body), {"MsgId", "RequestId"})
            self.assertRegex(body["MsgId"], MSG_ID)
            self.assertRegex(body["RequestId"], REQUEST_ID)
        messages = await self.subscriber.wait_for(3)
        for sdk, message in zip(SDKS, messages, strict=True):
            self.assertEqual(
                (message.topic, message.payload, message.qos, message.retain),
                (f"home/{sdk} x", f"\u00e9t\u00e9 {sdk} +%&=".encode(), 1, False),
            )
            self.assertEqual(
                message.properties["UserProperty"],
                [("http-client-id", KEY_ID), ("http-username", KEY_ID)],
            )

    async def test_60_kib_payload(self) -> None:
        """A Payload of 60 KiB (UTF-8, every byte percent-encoded on the wire)."""
        payload = "\u00e9" * 20480 + "a+b %" * 4096
        self.assertEqual(len(payload.encode()), 60 * 1024)
        for sdk in SDKS:
            await sdk_call(sdk, self.endpoint, topic=f"big/{sdk}", payload=payload)
        for message in await self.subscriber.wait_for(3, timeout=10):
            self.assertEqual(message.payload, payload.encode())

    async def test_acl(self) -> None:
        """The ACL's user block is the AccessKeyId's: another topic is 400
        PermissionCheckFailed, nothing published."""
        for sdk in SDKS:
            got = await refused(sdk, self.endpoint, topic="elsewhere")
            self.assertEqual(got[:2], (400, "PermissionCheckFailed"))
        await sdk_call("acs3", self.endpoint, topic="home/marker")
        [first] = await self.subscriber.wait_for(1)
        self.assertEqual(first.topic, "home/marker")

    async def test_no_secrets_in_logs(self) -> None:
        """Neither the AccessKeySecret nor signatures nor payloads reach the access
        log or the daemon's log; the access log names the AccessKeyId."""
        events: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            events.append(repr(event))

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        for sdk in SDKS:
            await sdk_call(sdk, self.endpoint, payload="private-payload")
            await refused(sdk, self.endpoint, secret="wrong-secret")
            await refused(sdk, self.endpoint, key_id="LTAIunknown")
        await self.subscriber.wait_for(3)
        flush_access_log(self.factory)
        with open(os.path.join(self.directory, "access.log")) as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual(len(lines), 9)
        text = json.dumps(lines) + "".join(events)
        for secret in (SECRET, "wrong-secret", "Signature", "private-payload"):
            self.assertNotIn(secret, text)
        ok = [line for line in lines if line["status"] == 200]
        self.assertEqual(len(ok), 3)
        for line in ok:
            self.assertEqual(
                (line["path"], line["user"], line["client_id"]), ("/", KEY_ID, KEY_ID)
            )
            self.assertRegex(line["message_id"], MSG_ID)

    async def test_broker_down(self) -> None:
        """With the broker gone: 500 SendMessageFailed within publish_timeout."""
        await self.broker.kill()
        for sdk in SDKS:
            started = reactor.seconds()
            got = await refused(sdk, self.endpoint)
            self.assertEqual(got[:2], (500, "SendMessageFailed"), sdk)
            self.assertLess(reactor.seconds() - started, 4)


class Base64Tests(EndToEndTestCase):
    payload_encoding = "base64"

    async def test_decoded(self) -> None:
        """payload_encoding = "base64": subscribers get the decoded bytes; a
        Payload that is not base64 is 400 InvalidParameter.Payload."""
        data = bytes(range(256))
        for sdk in SDKS:
            await sdk_call(sdk, self.endpoint, payload=base64.b64encode(data).decode())
        for message in await self.subscriber.wait_for(3):
            self.assertEqual(message.payload, data)
        for sdk in SDKS:
            got = await refused(sdk, self.endpoint, payload="not base64!")
            self.assertEqual(got[:2], (400, "InvalidParameter.Payload"))


class HTTPSTests(EndToEndTestCase):
    """The gateway's [tls] listener; the SDKs trust its CA through their own
    settings (the new SDK's Config(ca=...), the old one's AcsClient(verify=...))."""

    def extra_config(self) -> str:
        self.pki: PKI = make_pki()
        self.addCleanup(self.pki.remove)
        self.tls_port = free_port()
        return (
            f'[tls]\nlisten = ["tcp:{self.tls_port}:interface=127.0.0.1"]\n'
            f'cert = "{self.pki.server_chain}"\nkey = "{self.pki.server_key}"\n'
            'client_cert = "none"\n'
        )

    async def test_both_sdks(self) -> None:
        """HTTPS with each SDK: delivered; an untrusted server is refused by the
        SDK."""
        endpoint = f"127.0.0.1:{self.tls_port}"
        for sdk in SDKS:
            body = await sdk_call(
                sdk, endpoint, protocol="https", ca=self.pki.ca, topic=f"home/{sdk}"
            )
            self.assertRegex(body["MsgId"], MSG_ID)
        messages = await self.subscriber.wait_for(3)
        self.assertEqual([m.topic for m in messages], [f"home/{sdk}" for sdk in SDKS])
        for sdk in SDKS:
            with self.assertRaises(SDKError) as e:
                await sdk_call(sdk, endpoint, protocol="https")
            self.assertIn("CERTIFICATE_VERIFY_FAILED", e.exception.text)


class BrokerModeTests(TestCase):
    """[auth] mode = "broker": the gateway connects as the AccessKeyId with the
    AccessKeySecret as password, and Mosquitto authenticates it."""

    timeout = 60

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return ensureDeferred(self.start())

    async def start(self) -> None:
        import subprocess

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        passwords = os.path.join(directory, "passwd")
        subprocess.run(
            ["mosquitto_passwd", "-c", "-b", passwords, KEY_ID, SECRET],
            check=True,
            capture_output=True,
        )
        self.broker = Mosquitto(allow_anonymous=False, password_file=passwords)
        self.addCleanup(self.broker.stop)
        await self.broker.start()
        self.gateway = RunningGateway(
            aliyun_config(self.broker.port, directory, extra="").replace(
                "[auth]\n", '[auth]\nmode = "broker"\n'
            )
        )
        self.endpoint = f"127.0.0.1:{self.gateway.port}"
        self.gateway.service.privilegedStartService()
        self.gateway.service.startService()
        self.addCleanup(self.gateway.stop)
        factory = http_factory(self.gateway)
        self.addCleanup(flush_access_log, factory)
        self.addCleanup(lambda: ensureDeferred(wait_idle(factory)))
        self.subscriber = Subscriber(
            "127.0.0.1", self.broker.port, "#", username=KEY_ID, password=SECRET
        )
        self.addCleanup(self.subscriber.stop)
        await self.subscriber.start()

    async def test_as_access_key(self) -> None:
        """Delivered through the broker's own authentication."""
        for sdk in SDKS:
            await sdk_call(sdk, self.endpoint, topic=f"home/{sdk}")
        messages = await self.subscriber.wait_for(3)
        self.assertEqual([m.topic for m in messages], [f"home/{sdk}" for sdk in SDKS])
