"""
API 3 (EMQX 5's C{POST /api/v5/publish} and C{/api/v5/publish/bulk}): what a body is
read as, and what a client gets back, message by message, for every outcome.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.identify import Authenticator
from gateway.config import LimitsConfig
from gateway.core import Gateway
from gateway.errors import Code, GatewayError, broker_unavailable, from_reason_code
from gateway.limits import RateLimiter
from gateway.model import Connection, Message, Peer, PublishResult
from gateway.web.emqx import EMQXAPI
from gateway.web.emqx_requests import parse_batch, parse_message
from gateway.web.messages import API, HTTPRequest, HTTPResponse
from gateway.web.router import Router
from gateway.web.topics import TopicsAPI
from tests.fakes import FakePublisher, Passwords, TopicACL

ID = "0123456789ABCDEF0123456789ABCDEF"
BASIC = b"Basic " + base64.b64encode(b"user0:secret0")


def request(
    path: bytes, body: object, method: str = "POST", auth: bytes | None = BASIC
) -> HTTPRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = ((b"authorization", auth),) if auth is not None else ()
    return HTTPRequest(
        method=method,
        path=path,
        headers=headers,
        body=raw,
        connection=Connection("c0ffee", Peer("127.0.0.1", 5000)),
    )


def by_topic(publisher: FakePublisher, message: Message) -> Deferred[PublishResult]:
    """
    An answer by topic: C{nosub/...} matched no subscriber (0x10), C{down/...} the
    broker is unreachable, C{refused/...} the broker says not authorized (0x87),
    C{old/...} the broker speaks MQTT 3.1.1 only, C{later/...} waits for the test.
    """
    n = f"{len(publisher.calls):032X}"
    if message.topic.startswith("nosub/"):
        return succeed(PublishResult(n, reason_code=0x10))
    if message.topic.startswith("down/"):
        return fail(broker_unavailable("no broker session"))
    if message.topic.startswith("refused/"):
        return fail(from_reason_code(0x87))
    if message.topic.startswith("old/"):
        return fail(
            GatewayError(Code.UnsupportedProperty, "the broker speaks MQTT 3.1.1 only")
        )
    if message.topic.startswith("later/"):
        return publisher.later(message)
    return publisher.numbered(message)


class ParseMessageTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """Only topic and payload: QoS 0 (EMQX's default), not retained, the
        payload's UTF-8 bytes, no properties."""
        self.assertEqual(
            parse_message({"topic": "t/1", "payload": "h\u00e9"}),
            Message(topic="t/1", payload="h\u00e9".encode(), qos=0, retain=False),
        )

    def test_everything(self) -> None:
        """Every field and property of EMQX's schema is read; user properties
        keep the order of the JSON object; correlation data is its UTF-8 bytes."""
        message = parse_message(
            {
                "topic": "a/b",
                "payload": base64.b64encode(b"\x00\xff").decode(),
                "payload_encoding": "base64",
                "qos": 2,
                "retain": True,
                "clientid": "ignored",
                "properties": {
                    "payload_format_indicator": 0,
                    "message_expiry_interval": 4294967295,
                    "response_topic": "reply/1",
                    "correlation_data": "corr",
                    "user_properties": {"z": "1", "a": "2"},
                    "content_type": "application/octet-stream",
                },
            }
        )
        self.assertEqual(
            message,
            Message(
                topic="a/b",
                payload=b"\x00\xff",
                qos=2,
                retain=True,
                payload_format_indicator=0,
                message_expiry_interval=4294967295,
                response_topic="reply/1",
                correlation_data=b"corr",
                user_properties=(("z", "1"), ("a", "2")),
                content_type="application/octet-stream",
            ),
        )

    def test_encoding_alias_and_nulls(self) -> None:
        """C{encoding} is EMQX's alias of payload_encoding; null fields count as
        absent."""
        self.assertEqual(
            parse_message(
                {
                    "topic": "t",
                    "payload": "aGk=",
                    "encoding": "base64",
                    "qos": None,
                    "properties": None,
                }
            ),
            Message(topic="t", payload=b"hi", qos=0),
        )

    def refused(self, value: object, where: str = "") -> str:
        with self.assertRaises(GatewayError) as e:
            parse_message(value, where)
        self.assertEqual(e.exception.status, 400)
        message: str = e.exception.message
        return message

    def test_invalid_fields_named(self) -> None:
        """Each malformed field is a 400 whose message names it."""
        ok = {"topic": "t", "payload": "p"}
        cases: list[tuple[dict[str, Any], str]] = [
            ({"payload": "p"}, "topic is required"),
            ({"topic": "t"}, "payload is required"),
            ({**ok, "topic": "a/+"}, "topic cannot contain '+' or '#'"),
            ({**ok, "topic": ""}, "topic is empty"),
            ({**ok, "topic": "a\x01"}, "topic contains U+0001"),
            ({**ok, "topic": 5}, "topic must be a string, not a number"),
            ({**ok, "topic": "/".join("x" * 201)}, "topic has more than 200 levels"),
            ({**ok, "qos": 3}, "qos must be an integer from 0 to 2"),
            ({**ok, "qos": True}, "qos must be an integer from 0 to 2"),
            ({**ok, "qos": "1"}, "qos must be an integer from 0 to 2"),
            ({**ok, "retain": "true"}, "retain must be true or false"),
            ({**ok, "payload_encoding": "hex"}, "payload_encoding must be"),
            ({**ok, "payload_encoding": "base64", "payload": "!!"}, "not valid base64"),
            ({**ok, "payload": "\ud800"}, "payload holds a lone surrogate"),
            ({**ok, "retained": True}, "retained is not a field"),
            ({**ok, "properties": []}, "properties must be a JSON object"),
            ({**ok, "properties": {"x": 1}}, "properties.x is not a known property"),
            (
                {**ok, "properties": {"response_topic": "r/#"}},
                "properties.response_topic cannot contain",
            ),
            (
                {**ok, "properties": {"content_type": "a\x85"}},
                "properties.content_type contains U+0085",
            ),
            (
                {**ok, "properties": {"user_properties": {"k": 1}}},
                "properties.user_properties.k must be a string",
            ),
            (
                {**ok, "properties": {"user_properties": {"k": "\ufffe"}}},
                "properties.user_properties.k contains U+FFFE",
            ),
            (
                {**ok, "properties": {"user_properties": {"\x00": "v"}}},
                "properties.user_properties key '\\x00' contains U+0000",
            ),
            (
                {**ok, "properties": {"message_expiry_interval": 2**32}},
                "properties.message_expiry_interval must be an integer",
            ),
            (
                {**ok, "properties": {"payload_format_indicator": 2}},
                "properties.payload_format_indicator must be an integer from 0 to 1",
            ),
            (
                {
                    **ok,
                    "payload": "/w==",
                    "payload_encoding": "base64",
                    "properties": {"payload_format_indicator": 1},
                },
                "payload_format_indicator is 1, which declares a UTF-8 payload",
            ),
            (
                {**ok, "properties": {"correlation_data": "x" * 65536}},
                "properties.correlation_data is longer than 65535 bytes",
            ),
        ]
        for value, expected in cases:
            self.assertIn(expected, self.refused(value), value)
        self.assertIn("the body must be a JSON object", self.refused([ok]))

    def test_batch_index_named(self) -> None:
        """A malformed item of a batch is named by its index (from 0)."""
        with self.assertRaises(GatewayError) as e:
            parse_batch(
                [{"topic": "t", "payload": "p"}, {"topic": "t", "payload": 1}], 10
            )
        self.assertEqual(
            (e.exception.status, e.exception.message),
            (400, "[1].payload must be a string, not a number"),
        )
        for value, expected in (
            ({}, "the body must be a JSON array, not an object"),
            ([], "the body is an empty array"),
            ([1], "[0] must be a JSON object, not a number"),
        ):
            with self.assertRaises(GatewayError) as e:
                parse_batch(value, 10)
            self.assertIn(expected, e.exception.message)

    def test_batch_limit(self) -> None:
        """More than max_batch items: 413."""
        item = {"topic": "t", "payload": "p"}
        self.assertEqual(len(parse_batch([item] * 3, 3)), 3)
        with self.assertRaises(GatewayError) as e:
            parse_batch([item] * 4, 3)
        self.assertEqual(e.exception.status, 413)
        self.assertIn("at most 3", e.exception.message)


class EMQXAPITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.publisher = FakePublisher(by_topic)
        self.clock = Clock()
        self.core = Gateway(
            self.publisher,
            Authenticator(Passwords(user0="secret0"), allow_anonymous=False),
            self.clock,
            TopicACL(lambda topic: not topic.startswith("secret")),
        )
        self.router = Router(TopicsAPI(self.core), emqx=EMQXAPI(self.core, max_batch=5))

    def answer(self, req: HTTPRequest) -> HTTPResponse:
        result = self.router.handle(req)
        if isinstance(result, Deferred):
            return self.successResultOf(result)
        return result

    def assertJSON(self, response: HTTPResponse, status: int) -> Any:
        self.assertEqual(response.status, status, response.body)
        self.assertIn(("Content-Type", "application/json"), response.headers)
        return json.loads(response.body)

    def test_single(self) -> None:
        """200 {"id"} with the message id; the core published the message for the
        Basic user with the connection's client id; the access log has the id."""
        response = self.answer(
            request(b"/api/v5/publish", {"topic": "t/1", "payload": "hello"})
        )
        self.assertEqual(self.assertJSON(response, 200), {"id": "1".rjust(32, "0")})
        self.assertEqual(response.log.message_id, "1".rjust(32, "0"))
        self.assertEqual(
            (response.log.client_id, response.log.user), ("http-c0ffee", "user0")
        )
        self.assertEqual(response.log.api, API.EMQX)
        [(identity, message)] = self.publisher.calls
        self.assertEqual(
            (identity.client_id, identity.username), ("http-c0ffee", "user0")
        )
        self.assertEqual(message, Message(topic="t/1", payload=b"hello", qos=0))

    def test_no_matching_subscribers(self) -> None:
        """Reason code 0x10: 202 with EMQX's body."""
        response = self.answer(
            request(b"/api/v5/publish", {"topic": "nosub/1", "payload": "x"})
        )
        self.assertEqual(
            self.assertJSON(response, 202),
            {"reason_code": 16, "message": "no_matching_subscribers"},
        )

    def test_single_errors(self) -> None:
        """Refusals are {"code", "message"} with EMQX's codes and the status."""
        cases: list[tuple[HTTPRequest, int, str]] = [
            (request(b"/api/v5/publish", {"topic": "t"}), 400, "BAD_REQUEST"),
            (request(b"/api/v5/publish", b"{not json"), 400, "BAD_REQUEST"),
            (request(b"/api/v5/publish", b"1" * 5000), 400, "BAD_REQUEST"),
            (request(b"/api/v5/publish", b"[" * 100000), 400, "BAD_REQUEST"),
            (request(b"/api/v5/publish", b"NaN"), 400, "BAD_REQUEST"),
            (request(b"/api/v5/publish", b"\xff\xfe\xfd"), 400, "BAD_REQUEST"),
            (
                request(b"/api/v5/publish", {}, auth=None),
                401,
                "AUTHORIZATION_HEADER_ERROR",
            ),
            (
                request(
                    b"/api/v5/publish",
                    {},
                    auth=b"Basic " + base64.b64encode(b"user0:x"),
                ),
                401,
                "BAD_API_KEY_OR_SECRET",
            ),
            (
                request(b"/api/v5/publish", {"topic": "secret", "payload": ""}),
                403,
                "FORBIDDEN",
            ),
            (
                request(b"/api/v5/publish", {"topic": "refused/1", "payload": ""}),
                403,
                "FORBIDDEN",
            ),
            (
                request(b"/api/v5/publish", {"topic": "down/1", "payload": ""}),
                503,
                "SERVICE_UNAVAILABLE",
            ),
            (request(b"/api/v5/publish", {}, method="GET"), 405, "METHOD_NOT_ALLOWED"),
        ]
        for req, status, code in cases:
            response = self.answer(req)
            body = self.assertJSON(response, status)
            self.assertEqual(set(body), {"code", "message"}, req)
            self.assertEqual(body["code"], code, req)
            if status == 401:
                self.assertIn(
                    ("WWW-Authenticate", 'Basic realm="mqtt-http-gateway"'),
                    response.headers,
                )
            if status == 503:
                self.assertIn(("Retry-After", "1"), response.headers)
        self.assertEqual(
            [m.topic for _, m in self.publisher.calls], ["refused/1", "down/1"]
        )

    def test_rate_limited(self) -> None:
        """Over the rate limit: 429 TOO_MANY_REQUESTS with Retry-After."""
        self.core.limiter = RateLimiter(LimitsConfig(rate=1, burst=1))
        body = {"topic": "t", "payload": ""}
        self.assertJSON(self.answer(request(b"/api/v5/publish", body)), 200)
        response = self.answer(request(b"/api/v5/publish", body))
        self.assertEqual(self.assertJSON(response, 429)["code"], "TOO_MANY_REQUESTS")
        self.assertIn(("Retry-After", "1"), response.headers)

    def test_bulk_all_delivered(self) -> None:
        """200 and one {"id"} per message, in request order."""
        items = [{"topic": f"t/{i}", "payload": str(i)} for i in range(3)]
        response = self.answer(request(b"/api/v5/publish/bulk", items))
        self.assertEqual(
            self.assertJSON(response, 200),
            [{"id": f"{i:032X}"} for i in (1, 2, 3)],
        )
        self.assertEqual(
            [m.payload for _, m in self.publisher.calls], [b"0", b"1", b"2"]
        )
        self.assertIsNone(response.log.message_id)

    def test_bulk_some_without_subscribers(self) -> None:
        """202 when some matched no subscriber and none failed."""
        items = [
            {"topic": "t/1", "payload": ""},
            {"topic": "nosub/1", "payload": ""},
        ]
        body = self.assertJSON(
            self.answer(request(b"/api/v5/publish/bulk", items)), 202
        )
        self.assertEqual(
            body,
            [
                {"id": f"{1:032X}"},
                {"reason_code": 16, "message": "no_matching_subscribers"},
            ],
        )

    def test_bulk_partial_failure(self) -> None:
        """Every message is published on its own: one denied by the ACL, one over
        the rate limit, one the broker refused; each result says so, and the
        status is the first failure's."""
        self.core.limiter = RateLimiter(LimitsConfig(rate=1, burst=3))
        items = [
            {"topic": "nosub/1", "payload": ""},
            {"topic": "secret/1", "payload": ""},
            {"topic": "t/1", "payload": ""},
            {"topic": "refused/1", "payload": ""},
            {"topic": "t/2", "payload": ""},
        ]
        response = self.answer(request(b"/api/v5/publish/bulk", items))
        body = self.assertJSON(response, 403)
        self.assertEqual(
            body,
            [
                {"reason_code": 16, "message": "no_matching_subscribers"},
                {"reason_code": 135, "message": "not_authorized"},
                {"id": f"{2:032X}"},
                {"reason_code": 135, "message": "not_authorized"},
                {"reason_code": 151, "message": "quota_exceeded"},
            ],
        )
        self.assertEqual(
            [m.topic for _, m in self.publisher.calls], ["nosub/1", "t/1", "refused/1"]
        )

    def test_bulk_rate_limit_first(self) -> None:
        """A batch over the rate limit: the messages within it are published, the
        rest are quota_exceeded, and the answer is 429 with Retry-After."""
        self.core.limiter = RateLimiter(LimitsConfig(rate=1, burst=2))
        items = [{"topic": f"t/{i}", "payload": ""} for i in range(4)]
        response = self.answer(request(b"/api/v5/publish/bulk", items))
        body = self.assertJSON(response, 429)
        self.assertEqual(
            [list(item) for item in body],
            [["id"], ["id"], ["reason_code", "message"], ["reason_code", "message"]],
        )
        self.assertIn(("Retry-After", "1"), response.headers)
        self.assertEqual(len(self.publisher.calls), 2)

    def test_bulk_broker_down(self) -> None:
        """503 with Retry-After when the broker cannot take a message."""
        items = [{"topic": "t/1", "payload": ""}, {"topic": "down/1", "payload": ""}]
        response = self.answer(request(b"/api/v5/publish/bulk", items))
        self.assertEqual(
            self.assertJSON(response, 503)[1],
            {"reason_code": 131, "message": "failed_to_dispatch"},
        )
        self.assertIn(("Retry-After", "1"), response.headers)

    def test_bulk_unsupported_property(self) -> None:
        """MQTT 5 properties the broker cannot carry: 400, unsupported_property."""
        items = [
            {"topic": "t/1", "payload": ""},
            {"topic": "old/1", "payload": "", "properties": {"content_type": "a"}},
        ]
        response = self.answer(request(b"/api/v5/publish/bulk", items))
        self.assertEqual(
            self.assertJSON(response, 400)[1],
            {"reason_code": 131, "message": "unsupported_property"},
        )

    def test_bulk_concurrent(self) -> None:
        """Every message is handed to the broker before any is acknowledged; the
        answer waits for the last and keeps request order."""
        items = [{"topic": f"later/{i}", "payload": ""} for i in range(3)]
        d = self.router.handle(request(b"/api/v5/publish/bulk", items))
        assert isinstance(d, Deferred)
        self.assertEqual(len(self.publisher.waiting), 3)
        for i in (2, 0):
            self.publisher.waiting[i].callback(PublishResult(f"{i:032X}"))
        self.assertNoResult(d)
        self.publisher.waiting[1].callback(PublishResult(f"{1:032X}", 0x10))
        body = json.loads(self.successResultOf(d).body)
        self.assertEqual(
            body,
            [
                {"id": f"{0:032X}"},
                {"reason_code": 16, "message": "no_matching_subscribers"},
                {"id": f"{2:032X}"},
            ],
        )

    def test_bulk_malformed_item_publishes_nothing(self) -> None:
        """A malformed item: 400 naming its index; nothing was published."""
        items = [{"topic": "t/1", "payload": ""}, {"topic": "t/#", "payload": ""}]
        body = self.assertJSON(
            self.answer(request(b"/api/v5/publish/bulk", items)), 400
        )
        self.assertEqual(body["code"], "BAD_REQUEST")
        self.assertTrue(body["message"].startswith("[1].topic "), body)
        self.assertEqual(self.publisher.calls, [])

    def test_bulk_too_many(self) -> None:
        """More than max_batch messages: 413, nothing published."""
        items = [{"topic": "t", "payload": ""}] * 6
        body = self.assertJSON(
            self.answer(request(b"/api/v5/publish/bulk", items)), 413
        )
        self.assertEqual(body["code"], "PAYLOAD_TOO_LARGE")
        self.assertEqual(self.publisher.calls, [])

    def test_server_errors_in_emqx_shape(self) -> None:
        """Errors the HTTP server finds on these paths (a body over max_body) are
        rendered as this API's errors."""
        response = self.router.render_error(
            request(b"/api/v5/publish/bulk", b""),
            GatewayError(Code.PayloadTooLarge, "the body is larger than 10 bytes"),
        )
        self.assertEqual(
            self.assertJSON(response, 413),
            {
                "code": "PAYLOAD_TOO_LARGE",
                "message": "the body is larger than 10 bytes",
            },
        )

    def test_other_paths_unchanged(self) -> None:
        """Other /api/v5 paths are not served: API 1's 400 InvalidPath."""
        response = self.answer(request(b"/api/v5/clients", {}))
        self.assertEqual(self.assertJSON(response, 400)["code"], "InvalidPath")


class BrokerModeBulkTests(SynchronousTestCase):
    def test_refused_batch_is_one_failed_login(self) -> None:
        """In broker mode a bulk request of five messages whose password the
        broker refuses uses up one failed login of the address, not all five:
        the next request still reaches the broker."""
        publisher = FakePublisher(by_topic)
        core = Gateway(
            publisher,
            Authenticator(None, allow_anonymous=False, check_passwords=False),
            Clock(),
        )
        api = EMQXAPI(core, max_batch=5)
        items = [{"topic": f"refused/{i}", "payload": ""} for i in range(5)]
        d = api.handle(request(b"/api/v5/publish/bulk", items))
        assert isinstance(d, Deferred)
        self.assertEqual(self.successResultOf(d).status, 403)  # not_authorized
        self.assertEqual(len(publisher.calls), 5)
        d = api.handle(request(b"/api/v5/publish", {"topic": "t/1", "payload": ""}))
        assert isinstance(d, Deferred)
        self.assertEqual(self.successResultOf(d).status, 200)
