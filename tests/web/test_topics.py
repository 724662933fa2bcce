"""
API 1 (C{POST /topics/{topic}}): what a request is read as, and what a client gets
back for every kind of mistake.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.identify import Authenticator
from gateway.core import Gateway
from gateway.errors import Code, GatewayError, broker_unavailable, from_reason_code
from gateway.model import Connection, Message, Peer
from gateway.web.messages import API, HTTPRequest, HTTPResponse
from gateway.web.router import Router
from gateway.web.topics import TopicsAPI, parse_publish, parse_topic
from tests.fakes import FakePublisher, Passwords, TopicACL, fails, succeeds
from tests.strategies import mqtt_text


def request(
    target: bytes, body: bytes = b"", method: str = "POST", **kw: Any
) -> HTTPRequest:
    path, _, query = target.partition(b"?")
    return HTTPRequest(
        method=method,
        path=path,
        query=query,
        body=body,
        connection=Connection("c0ffee", Peer("127.0.0.1", 5000)),
        **kw,
    )


class ParseTopicTests(SynchronousTestCase):
    def test_percent_decoded(self) -> None:
        """C{a%2Fb} and C{a/b} name the same topic; UTF-8 is decoded."""
        self.assertEqual(parse_topic(b"/topics/a%2Fb"), "a/b")
        self.assertEqual(parse_topic(b"/topics/a/b"), "a/b")
        self.assertEqual(parse_topic(b"/topics/%C3%A9t%C3%A9"), "\u00e9t\u00e9")

    def test_invalid(self) -> None:
        """Empty topics, wildcards, U+0000, bad UTF-8, over 65535 bytes: 400."""
        for path in (
            b"/topics/",
            b"/topics/a/+",
            b"/topics/a/%23",
            b"/topics/%2B",
            b"/topics/a%00b",
            b"/topics/%FF",
            b"/topics/" + b"x" * 65536,
        ):
            with self.assertRaises(GatewayError, msg=path) as e:
                parse_topic(path)
            self.assertEqual(
                (e.exception.status, e.exception.code), (400, Code.InvalidTopic)
            )

    def test_longest(self) -> None:
        """A topic of exactly 65535 bytes is fine."""
        self.assertEqual(len(parse_topic(b"/topics/" + b"x" * 65535)), 65535)

    def test_strict_broker_strings(self) -> None:
        """
        Control characters, non-characters and topics deeper than 200 levels
        (which Mosquitto disconnects on) are 400 InvalidTopic naming the topic.
        """
        for path in (
            b"/topics/home/a%01b",
            b"/topics/a%1Fb",
            b"/topics/a%7Fb",
            b"/topics/a%C2%85b",  # U+0085
            b"/topics/a%C2%9Fb",  # U+009F
            b"/topics/a%EF%BF%BF",  # U+FFFF
            b"/topics/a%EF%B7%90",  # U+FDD0
            b"/topics/a%F4%8F%BF%BE",  # U+10FFFE
            b"/topics/" + b"/".join([b"x"] * 201),
        ):
            with self.assertRaises(GatewayError, msg=path) as e:
                parse_topic(path)
            self.assertEqual(
                (e.exception.status, e.exception.code, e.exception.parameter),
                (400, Code.InvalidTopic, "topic"),
            )
        self.assertEqual(
            parse_topic(b"/topics/" + b"/".join([b"x"] * 200)).count("/"), 199
        )

    @given(mqtt_text(min_size=1).filter(lambda t: not set(t) & {"+", "#"}))
    def test_round_trip(self, topic: str) -> None:
        """Any valid topic percent-encoded in the path comes back unchanged."""
        from urllib.parse import quote

        if len(topic.encode()) <= 65535 and topic.count("/") < 200:
            self.assertEqual(
                parse_topic(b"/topics/" + quote(topic, safe="").encode()), topic
            )


class ParsePublishTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """No parameters: QoS 1, not retained, no properties, body as payload."""
        asked = parse_publish(request(b"/topics/home", b"hi"))
        self.assertEqual(asked.message, Message(topic="home", payload=b"hi"))
        self.assertIsNone(asked.client_id)
        self.assertIsNone(asked.username)

    def test_every_parameter(self) -> None:
        """Every documented parameter lands in the message, user properties by N."""
        asked = parse_publish(
            request(
                b"/topics/t?QOS=2&retained=TRUE&client_id=dev-1&username=u"
                b"&ResponseTopic=r%2Fs&CorrelationData=abc&ContentType=text%2Fplain"
                b"&PayloadFormatIndicator=1&MessageExpiryInterval=4294967295"
                b"&UserProp.2.Key=k2&UserProp.2.Value=v2"
                b"&userprop.10.key=k10&userprop.10.value=v+10"
                b"&UserProp.1.Key=k1&UserProp.1.Value=",
                "h\u00e9".encode(),
            )
        )
        self.assertEqual(
            asked.message,
            Message(
                topic="t",
                payload="h\u00e9".encode(),
                qos=2,
                retain=True,
                response_topic="r/s",
                correlation_data=b"abc",
                content_type="text/plain",
                payload_format_indicator=1,
                message_expiry_interval=4294967295,
                user_properties=(("k1", ""), ("k2", "v2"), ("k10", "v 10")),
            ),
        )
        self.assertEqual((asked.client_id, asked.username), ("dev-1", "u"))

    def test_body_is_not_a_form(self) -> None:
        """A form-encoded body is the payload, byte for byte."""
        asked = parse_publish(
            request(
                b"/topics/t",
                b"a=1&b=2",
                headers=((b"content-type", b"application/x-www-form-urlencoded"),),
            )
        )
        self.assertEqual(asked.message.payload, b"a=1&b=2")

    def test_bad_parameters(self) -> None:
        """Each invalid parameter is a 400 with its code, naming the parameter."""
        cases = [
            (b"qos=3", Code.InvalidQoS, "qos"),
            (b"qos=", Code.InvalidQoS, "qos"),
            (b"qos=01", Code.InvalidQoS, "qos"),
            (b"retained=yes", Code.InvalidRetained, "retained"),
            (b"retain=true", Code.InvalidParameter, "retain"),
            (b"client_id=", Code.InvalidParameter, "client_id"),
            (b"client_id=" + b"x" * 65536, Code.InvalidParameter, "client_id"),
            (b"ResponseTopic=", Code.InvalidParameter, "ResponseTopic"),
            (b"ResponseTopic=a/%23", Code.InvalidParameter, "ResponseTopic"),
            (
                b"PayloadFormatIndicator=2",
                Code.InvalidParameter,
                "PayloadFormatIndicator",
            ),
            (
                b"MessageExpiryInterval=-1",
                Code.InvalidParameter,
                "MessageExpiryInterval",
            ),
            (
                b"MessageExpiryInterval=4294967296",
                Code.InvalidParameter,
                "MessageExpiryInterval",
            ),
            (
                b"MessageExpiryInterval=1.5",
                Code.InvalidParameter,
                "MessageExpiryInterval",
            ),
            (b"UserProp.1.Key=k", Code.InvalidParameter, "UserProp.1.Key"),
            (b"UserProp.1.Value=v", Code.InvalidParameter, "UserProp.1.Value"),
            (
                b"UserProp.0.Key=k&UserProp.0.Value=v",
                Code.InvalidParameter,
                "UserProp.0.Key",
            ),
            (b"UserProp.x.Key=k", Code.InvalidParameter, "UserProp.x.Key"),
            # Numbers of any length are refused, not a crash (int() stops at 4300).
            (b"qos=" + b"1" * 5000, Code.InvalidQoS, "qos"),
            (
                b"MessageExpiryInterval=" + b"9" * 5000,
                Code.InvalidParameter,
                "MessageExpiryInterval",
            ),
            (
                b"PayloadFormatIndicator=" + b"1" * 5000,
                Code.InvalidParameter,
                "PayloadFormatIndicator",
            ),
            (
                b"UserProp." + b"7" * 5000 + b".Key=k",
                Code.InvalidParameter,
                "UserProp." + "7" * 5000 + ".Key",
            ),
            (
                b"UserProp.4294967296.Value=v",
                Code.InvalidParameter,
                "UserProp.4294967296.Value",
            ),
            (b"qos=1&QoS=1", Code.InvalidParameter, "QoS"),
            (b"ContentType=%FF", Code.InvalidParameter, "ContentType"),
            (b"ContentType=a%00", Code.InvalidParameter, "ContentType"),
            # Strings strict brokers disconnect on (control and non-characters).
            (b"ContentType=text%0a", Code.InvalidParameter, "ContentType"),
            (b"client_id=dev%01", Code.InvalidParameter, "client_id"),
            (b"username=u%C2%85", Code.InvalidParameter, "username"),
            (b"ResponseTopic=r%EF%BF%BE", Code.InvalidParameter, "ResponseTopic"),
            (
                b"UserProp.1.Key=k&UserProp.1.Value=v%7f",
                Code.InvalidParameter,
                "UserProp.1.Value",
            ),
            (
                b"UserProp.1.Key=k%1b&UserProp.1.Value=v",
                Code.InvalidParameter,
                "UserProp.1.Key",
            ),
        ]
        for query, code, name in cases:
            with self.assertRaises(GatewayError, msg=query) as e:
                parse_publish(request(b"/topics/t?" + query))
            self.assertEqual((e.exception.status, e.exception.code), (400, code), query)
            self.assertIn(name, e.exception.message, query)
            self.assertEqual(e.exception.parameter, name, query)

    def test_leading_zeros(self) -> None:
        """Leading zeros do not count: 5,000 of them before 42 are still 42, and
        UserProp.0001 is UserProp.1."""
        asked = parse_publish(
            request(
                b"/topics/t?MessageExpiryInterval=" + b"0" * 5000 + b"42"
                b"&UserProp.0001.Key=k&UserProp.1.Value=v"
            )
        )
        self.assertEqual(asked.message.message_expiry_interval, 42)
        self.assertEqual(asked.message.user_properties, (("k", "v"),))

    def test_correlation_data_is_binary(self) -> None:
        """CorrelationData is binary: control bytes are fine, 65535 bytes at most."""
        asked = parse_publish(request(b"/topics/t?CorrelationData=%01%7f"))
        self.assertEqual(asked.message.correlation_data, b"\x01\x7f")
        with self.assertRaises(GatewayError):
            parse_publish(request(b"/topics/t?CorrelationData=" + b"x" * 65536))

    def test_payload_format_needs_utf8(self) -> None:
        """PayloadFormatIndicator=1 with a body that is not UTF-8 is a 400."""
        with self.assertRaises(GatewayError) as e:
            parse_publish(request(b"/topics/t?PayloadFormatIndicator=1", b"\xff"))
        self.assertEqual(e.exception.code, Code.InvalidParameter)
        asked = parse_publish(request(b"/topics/t?PayloadFormatIndicator=0", b"\xff"))
        self.assertEqual(asked.message.payload, b"\xff")


class TopicsAPITests(SynchronousTestCase):
    def answer(
        self,
        req: HTTPRequest,
        core: FakePublisher | None = None,
        anonymous: bool = True,
    ) -> HTTPResponse:
        publisher = core or FakePublisher()
        gateway = Gateway(
            publisher,
            Authenticator(Passwords(user0="secret0"), allow_anonymous=anonymous),
            Clock(),
            TopicACL(lambda topic: topic != "secret"),
        )
        api = Router(TopicsAPI(gateway))
        result = api.handle(req)
        if isinstance(result, Deferred):
            return self.successResultOf(result)
        return result

    def assertError(
        self, response: HTTPResponse, status: int, code: str
    ) -> dict[str, Any]:
        self.assertEqual(response.status, status)
        self.assertIn(("Content-Type", "application/json"), response.headers)
        body = json.loads(response.body)
        self.assertEqual(body["code"], code)
        self.assertEqual(set(body), {"code", "message", "request_id"})
        self.assertRegex(body["request_id"], "^[0-9a-f]{32}$")
        return body  # type: ignore[no-any-return]

    def test_success(self) -> None:
        """200, empty body, X-Message-Id; the core got the message and identity."""
        core = FakePublisher(succeeds("0123456789ABCDEF0123456789ABCDEF"))
        response = self.answer(request(b"/topics/home?client_id=curl-x", b"{}"), core)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"")
        self.assertEqual(
            response.headers, (("X-Message-Id", "0123456789ABCDEF0123456789ABCDEF"),)
        )
        self.assertEqual(response.log.message_id, "0123456789ABCDEF0123456789ABCDEF")
        self.assertEqual(response.log.client_id, "curl-x")
        self.assertEqual(response.log.api, API.TOPICS)
        [(identity, message)] = core.calls
        self.assertEqual(identity.client_id, "curl-x")
        self.assertEqual(identity.connection.peer, Peer("127.0.0.1", 5000))
        self.assertEqual(message, Message(topic="home", payload=b"{}"))

    def test_default_client_id(self) -> None:
        """Without client_id the sender is http-{connection id}."""
        core = FakePublisher()
        self.answer(request(b"/topics/home"), core)
        self.assertEqual(core.calls[0][0].client_id, "http-c0ffee")

    def test_method_not_allowed(self) -> None:
        """GET on /topics/... is 405 with Allow: POST, and nothing is published."""
        core = FakePublisher()
        for method in ("GET", "PUT", "DELETE", "HEAD"):
            response = self.answer(request(b"/topics/home", method=method), core)
            self.assertError(response, 405, "MethodNotAllowed")
            self.assertIn(("Allow", "POST"), response.headers)
        self.assertEqual(core.calls, [])

    def test_unknown_path(self) -> None:
        """Any other path is 400 InvalidPath."""
        for path in (b"/", b"/topics", b"/foo/topics/x", b"/metrics"):
            response = self.answer(request(path))
            self.assertError(response, 400, "InvalidPath")
            self.assertEqual(response.log.api, API.NONE)

    def test_invalid_request_publishes_nothing(self) -> None:
        """A 400 for a parameter never reaches the core."""
        core = FakePublisher()
        body = self.assertError(
            self.answer(request(b"/topics/home?retain=true"), core),
            400,
            "InvalidParameter",
        )
        self.assertIn("retain", body["message"])
        self.assertEqual(core.calls, [])

    def test_broker_errors(self) -> None:
        """Errors from the core keep their status, code and Retry-After."""
        cases = [
            (broker_unavailable("down", retry_after=3), 503, "BrokerUnavailable", "3"),
            (from_reason_code(0x87), 403, "Forbidden", None),
            (from_reason_code(0x97), 429, "RateLimited", "1"),
            (from_reason_code(0x95), 413, "PayloadTooLarge", None),
            (from_reason_code(0x80), 502, "BrokerRejected", None),
        ]
        for error, status, code, retry in cases:
            core = FakePublisher(fails(error))
            response = self.answer(request(b"/topics/home"), core)
            self.assertError(response, status, code)
            self.assertEqual(dict(response.headers).get("Retry-After"), retry)
            self.assertEqual(response.log.client_id, "http-c0ffee")

    def test_authentication(self) -> None:
        """Without anonymous access: no or wrong credentials are 401 asking for
        Basic; the seed's credentials pass; username= needs its own password."""
        core = FakePublisher()
        seed = ((b"authorization", b"Basic dXNlcjA6c2VjcmV0MA=="),)
        for headers, query in (((), b""), (((b"authorization", b"Basic eDp5"),), b"")):
            response = self.answer(
                request(b"/topics/home?" + query, headers=headers),
                core,
                anonymous=False,
            )
            self.assertError(response, 401, "Unauthorized")
            self.assertIn(
                ("WWW-Authenticate", 'Basic realm="mqtt-http-gateway"'),
                response.headers,
            )
        response = self.answer(
            request(b"/topics/home?username=admin", headers=seed), core, anonymous=False
        )
        self.assertError(response, 401, "Unauthorized")
        self.assertEqual(core.calls, [])
        response = self.answer(
            request(b"/topics/home?client_id=curl-x", headers=seed),
            core,
            anonymous=False,
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(
            (response.log.client_id, response.log.user), ("curl-x", "user0")
        )
        [(identity, _)] = core.calls
        self.assertEqual((identity.client_id, identity.username), ("curl-x", "user0"))

    def test_acl_denied(self) -> None:
        """A topic the ACL denies is 403 and nothing is published."""
        core = FakePublisher()
        self.assertError(
            self.answer(request(b"/topics/secret"), core), 403, "Forbidden"
        )
        self.assertEqual(core.calls, [])
