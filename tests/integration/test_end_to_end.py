"""
End to end: curl -> the gateway (assembled as twistd assembles it) -> a real broker
-> an independent paho-mqtt subscriber. What the subscriber receives is what a user's
devices would receive.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import TestCase

from tests.brokers import Amqtt, Mosquitto, Received, Subscriber
from tests.gateway import CurlResult, RunningGateway, config, curl

MESSAGE_ID = re.compile(r"^[0-9A-F]{32}$")
SEED_BODY = b'{ "message": "Hello, world" }'


class GatewayTestCase(TestCase):
    """A Mosquitto broker, the gateway in front of it, a subscriber on '#'."""

    timeout = 60
    protocol = "auto"
    subscriber_protocol = 5

    def start_broker(self) -> Deferred[None]:
        self.broker = Mosquitto(**self.broker_options())
        self.addCleanup(self.broker.stop)
        return self.broker.start()

    def broker_options(self) -> dict[str, Any]:
        return {}

    async def start(self) -> None:
        await self.start_broker()
        self.gateway = RunningGateway(
            config(
                f"mqtt://127.0.0.1:{self.broker.port}",
                protocol=self.protocol,
            )
        )
        self.addCleanup(self.gateway.stop)
        await self.gateway.start()
        self.subscriber = Subscriber(
            "127.0.0.1", self.broker.port, "#", protocol=self.subscriber_protocol
        )
        self.addCleanup(self.subscriber.stop)
        await self.subscriber.start()

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return ensureDeferred(self.start())

    def post(self, topic: str, query: str = "", *args: str) -> Deferred[CurlResult]:
        return curl("--request", "POST", *args, self.gateway.topic_url(topic, query))

    async def one_message(self) -> Received:
        [message] = await self.subscriber.wait_for(1)
        return message

    def assertOK(self, result: CurlResult) -> None:
        self.assertEqual(result.status, 200, result.raw_head + repr(result.body))
        self.assertRegex(result.headers["x-message-id"], MESSAGE_ID)
        self.assertEqual(result.body, b"")

    def assertError(self, result: CurlResult, status: int, code: str) -> None:
        import json

        self.assertEqual(result.status, status, result.raw_head + repr(result.body))
        self.assertEqual(result.headers["content-type"], "application/json")
        self.assertEqual(json.loads(result.body)["code"], code)


class MQTT5DeliveryTests(GatewayTestCase):
    async def test_seed_example(self) -> None:
        """The seed's curl command, verbatim but for the host: 200 with an
        X-Message-Id, and exactly the body arrives on 'home', QoS 1, not
        retained, with the sender's client id and user as user properties."""
        result = await curl(
            "--verbose",
            "--request",
            "POST",
            "-H",
            "Authorization: Basic dXNlcjA6c2VjcmV0MA==",
            "--data",
            '{ "message": "Hello, world" }',
            self.gateway.topic_url("home", "qos=1&client_id=curl-x&retained=false"),
        )
        self.assertOK(result)
        message = await self.one_message()
        self.assertEqual(
            (message.topic, message.payload, message.qos, message.retain),
            ("home", SEED_BODY, 1, False),
        )
        self.assertEqual(
            message.properties["UserProperty"],
            [("http-client-id", "curl-x"), ("http-username", "user0")],
        )

    async def test_properties(self) -> None:
        """Every MQTT 5 property of API 1 reaches the subscriber; the sender's user
        properties keep their order and come before the gateway's."""
        result = await self.post(
            "a%2Fb",
            "qos=2&ResponseTopic=reply%2Fhere&CorrelationData=req-42"
            "&ContentType=application%2Fjson&PayloadFormatIndicator=1"
            "&MessageExpiryInterval=3600&UserProp.2.Key=second&UserProp.2.Value=2"
            "&UserProp.1.Key=first&UserProp.1.Value=1&client_id=dev-7&username=bob",
            "--user",
            "user0:builder",
            "--data-binary",
            "{}",
        )
        self.assertOK(result)
        message = await self.one_message()
        self.assertEqual(
            (message.topic, message.payload, message.qos), ("a/b", b"{}", 2)
        )
        props = message.properties
        self.assertEqual(props["ResponseTopic"], "reply/here")
        self.assertEqual(props["CorrelationData"], b"req-42")
        self.assertEqual(props["ContentType"], "application/json")
        self.assertEqual(props["PayloadFormatIndicator"], 1)
        self.assertLessEqual(props["MessageExpiryInterval"], 3600)
        self.assertGreater(props["MessageExpiryInterval"], 3500)
        self.assertEqual(
            props["UserProperty"],
            [
                ("first", "1"),
                ("second", "2"),
                ("http-client-id", "dev-7"),
                ("http-username", "bob"),
            ],
        )

    async def test_binary_payload(self) -> None:
        """Every byte value arrives unchanged, though curl labels the body as a
        form (application/x-www-form-urlencoded)."""
        payload = bytes(range(256)) * 4 + b"a=1&b=%20+"
        path = os.path.join(tempfile.mkdtemp(), "payload.bin")
        with open(path, "wb") as f:
            f.write(payload)
        result = await self.post("bin", "qos=0", "--data-binary", f"@{path}")
        self.assertOK(result)
        message = await self.one_message()
        self.assertEqual((message.payload, message.qos), (payload, 0))

    async def test_retained_and_cleared(self) -> None:
        """retained=true keeps the message for later subscribers; an empty body
        with retained=true clears it."""
        self.assertOK(await self.post("r/1", "retained=TRUE", "--data", "kept"))
        await self.subscriber.wait_for(1)
        late = Subscriber("127.0.0.1", self.broker.port, "r/#")
        self.addCleanup(late.stop)
        await late.start()
        [message] = await late.wait_for(1)
        self.assertEqual(
            (message.topic, message.payload, message.retain), ("r/1", b"kept", True)
        )
        cleared = await curl(
            "-X",
            "POST",
            "-H",
            "Content-Length: 0",
            self.gateway.topic_url("r/1", "retained=true"),
        )
        self.assertOK(cleared)
        await self.subscriber.wait_for(2)
        later = Subscriber("127.0.0.1", self.broker.port, "r/#")
        self.addCleanup(later.stop)
        await later.start()
        await self.gateway.wait_connected()
        self.assertOK(await self.post("r/2", "", "--data", "fresh"))
        [first] = await later.wait_for(1)
        self.assertEqual(first.topic, "r/2")

    async def test_keep_alive_and_http10(self) -> None:
        """HTTP/1.1 requests on one connection share the connection's client id;
        HTTP/1.0 works and its connection closes after the response."""
        url = self.gateway.topic_url("ka")
        result = await curl(
            "-X", "POST", "--data", "1", url, "--next", "-X", "POST", "--data", "2", url
        )
        self.assertEqual(result.status, 200)
        first, second = await self.subscriber.wait_for(2)
        self.assertEqual(
            first.properties["UserProperty"], second.properties["UserProperty"]
        )
        self.assertRegex(first.properties["UserProperty"][0][1], "^http-[0-9a-f]{16}$")
        old = await curl("--http1.0", "-X", "POST", "--data", "3", url)
        self.assertOK(old)
        self.assertIn("connection: close", old.raw_head.lower())
        [_, _, third] = await self.subscriber.wait_for(3)
        self.assertEqual(third.payload, b"3")

    async def test_refusals_publish_nothing(self) -> None:
        """Bad requests get their 4xx with a JSON body, and nothing is published."""
        self.assertError(await self.post("a/+", "", "--data", "x"), 400, "InvalidTopic")
        self.assertError(
            await self.post("a", "retain=true", "--data", "x"), 400, "InvalidParameter"
        )
        self.assertError(
            await self.post("a", "qos=3", "--data", "x"), 400, "InvalidQoS"
        )
        self.assertError(
            await self.post("a", "", "--data-binary", "x" * 5000),
            413,
            "PayloadTooLarge",
        )
        got = await curl(self.gateway.topic_url("a"))
        self.assertError(got, 405, "MethodNotAllowed")
        self.assertEqual(got.headers["allow"], "POST")
        self.assertError(
            await curl("-X", "POST", self.gateway.url + "/nope"), 400, "InvalidPath"
        )
        self.assertOK(await self.post("a", "", "--data", "marker"))
        message = await self.one_message()
        self.assertEqual(message.payload, b"marker")

    async def test_hostile_numbers(self) -> None:
        """Numbers of 5,000 digits from an anonymous client are 400s naming the
        parameter (the gateway logs no error: trial would fail on one), and
        the gateway carries on."""
        digits = "9" * 5000
        for query, code, name in (
            (
                f"MessageExpiryInterval={digits}",
                "InvalidParameter",
                "MessageExpiryInterval",
            ),
            (
                f"PayloadFormatIndicator={digits}",
                "InvalidParameter",
                "PayloadFormatIndicator",
            ),
            (f"UserProp.{digits}.Key=k", "InvalidParameter", f"UserProp.{digits}.Key"),
            (f"qos={digits}", "InvalidQoS", "qos"),
        ):
            result = await self.post("a", query, "--data", "x")
            self.assertError(result, 400, code)
            self.assertIn(name, json.loads(result.body)["message"])
        result = await self.post("a", "", "-H", f"Content-Length: {digits}")
        self.assertEqual(result.status, 400, result.raw_head)
        self.assertIn(b"Content-Length overflow", result.body)
        self.assertOK(await self.post("a", "", "--data", "marker"))
        self.assertEqual((await self.one_message()).payload, b"marker")


class BrokerRefusalTests(GatewayTestCase):
    def broker_options(self) -> dict[str, Any]:
        acl = os.path.join(tempfile.mkdtemp(), "acl")
        with open(acl, "w") as f:
            f.write("topic readwrite open/#\ntopic read #\n")
        return {"acl_file": acl}

    async def test_not_authorized(self) -> None:
        """The broker's ACL denies the topic (PUBACK 0x87): 403, nothing arrives."""
        self.assertError(await self.post("closed", "", "--data", "x"), 403, "Forbidden")
        self.assertOK(await self.post("open/1", "", "--data", "y"))
        message = await self.one_message()
        self.assertEqual(message.topic, "open/1")


class MQTT311Tests(GatewayTestCase):
    protocol = "3.1.1"
    subscriber_protocol = 4

    async def test_plain_message(self) -> None:
        """Over MQTT 3.1.1 a message without properties is delivered as is."""
        self.assertOK(await self.post("t", "qos=2", "--data", "old"))
        message = await self.one_message()
        self.assertEqual(
            (message.topic, message.payload, message.qos), ("t", b"old", 2)
        )
        self.assertEqual(self.gateway.session.protocol_level, 4)

    async def test_properties_refused(self) -> None:
        """MQTT 5 properties cannot travel over 3.1.1: 400 UnsupportedProperty."""
        result = await self.post("t", "ContentType=text%2Fplain", "--data", "x")
        self.assertError(result, 400, "UnsupportedProperty")
        self.assertOK(await self.post("t", "", "--data", "after"))
        message = await self.one_message()
        self.assertEqual(message.payload, b"after")


class AmqttFallbackTests(GatewayTestCase):
    """amqtt speaks only 3.1.1 and never answers an MQTT 5 CONNECT with properties."""

    subscriber_protocol = 4

    def start_broker(self) -> Deferred[None]:
        self.broker = Amqtt()  # type: ignore[assignment]
        self.addCleanup(self.broker.stop)
        return self.broker.start()

    async def test_falls_back(self) -> None:
        """protocol = "auto" ends up on 3.1.1 and the message is delivered."""
        self.assertEqual(self.gateway.session.protocol_level, 4)
        self.assertOK(await self.post("fallback", "", "--data", "via amqtt"))
        message = await self.one_message()
        self.assertEqual((message.topic, message.payload), ("fallback", b"via amqtt"))


class BrokerOutageTests(GatewayTestCase):
    async def test_killed_and_restarted(self) -> None:
        """With the broker killed, requests get 503 with Retry-After within
        publish_timeout + 1 s; once it is back, 200 again without restarting the
        gateway."""
        from twisted.internet import reactor

        await self.broker.kill()
        for qos in ("0", "1", "2"):
            started = reactor.seconds()
            result = await self.post("down", f"qos={qos}", "--data", "x")
            self.assertLess(reactor.seconds() - started, 3.0)
            self.assertError(result, 503, "BrokerUnavailable")
            self.assertGreaterEqual(int(result.headers["retry-after"]), 1)
        await self.broker.start()
        await self.gateway.wait_connected(timeout=40)
        await self.subscriber.wait_subscribed(2, timeout=10)
        self.assertOK(await self.post("up", "", "--data", "back"))
        message = await self.one_message()
        self.assertEqual((message.topic, message.payload), ("up", b"back"))
