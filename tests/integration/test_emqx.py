"""
End to end for API 3: curl posting EMQX-shaped JSON (as EMQX's own documentation
shows it) -> the gateway -> Mosquitto -> an independent paho-mqtt subscriber, which
checks every message that arrives.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from tests.brokers import Mosquitto, Subscriber
from tests.gateway import CurlResult, RunningGateway, curl, json_post, password_file

MESSAGE_ID = re.compile(r"^[0-9A-F]{32}$")


def _acl() -> str:
    path = os.path.join(tempfile.mkdtemp(prefix="acl-"), "acl")
    with open(path, "w") as f:
        f.write("user user0\ntopic write emqx/#\ntopic write nobody/#\n")
    return path


class EMQXTestCase(TestCase):
    """Mosquitto, the gateway with users, an ACL and a rate limit, a subscriber."""

    timeout = 60
    limits = "[limits]\nrate = 1000\nburst = 1000\n"

    async def start(self) -> None:
        self.broker = Mosquitto()
        self.addCleanup(self.broker.stop)
        await self.broker.start()
        self.gateway = RunningGateway(
            f'[mqtt]\nbrokers = ["mqtt://127.0.0.1:{self.broker.port}"]\n'
            "publish_timeout = 2\n"
            '[log]\naccess = ""\n'
            "[http]\nmax_body = 65536\nmax_batch = 50\n"
            f'[auth]\npassword_file = "{password_file(user0="secret0")}"\n'
            f'acl_file = "{_acl()}"\n' + self.limits
        )
        self.addCleanup(self.gateway.stop)
        await self.gateway.start()
        self.subscriber = Subscriber("127.0.0.1", self.broker.port, "emqx/#")
        self.addCleanup(self.subscriber.stop)
        await self.subscriber.start()

    def setUp(self) -> Any:
        return ensureDeferred(self.start())

    def post(self, path: str, body: str, *args: str) -> Any:
        return curl(
            "-u",
            "user0:secret0",
            *json_post(body),
            f"{self.gateway.url}/api/v5/{path}",
            *args,
        )

    def assertJSON(self, result: CurlResult, status: int) -> Any:
        self.assertEqual(result.status, status, result.raw_head + repr(result.body))
        self.assertEqual(result.headers["content-type"], "application/json")
        return json.loads(result.body)


class EMQXPublishTests(EMQXTestCase):
    async def test_publish_every_property(self) -> None:
        """
        EMQX's documented publish body with every property: 200 {"id"}; the
        message arrives with its topic, payload, QoS, retain flag and properties,
        the sender's user properties first, then the gateway's.
        """
        result = await self.post(
            "publish",
            """{
  "payload_encoding": "plain",
  "topic": "emqx/a",
  "qos": 1,
  "payload": "hello emqx api",
  "properties": {
    "payload_format_indicator": 1,
    "message_expiry_interval": 600,
    "response_topic": "some_other_topic",
    "correlation_data": "some_correlation_id",
    "user_properties": {"foo": "bar", "a": "\u00e9"},
    "content_type": "text/plain"
  },
  "retain": false
}""",
        )
        body = self.assertJSON(result, 200)
        self.assertEqual(list(body), ["id"])
        self.assertRegex(body["id"], MESSAGE_ID)
        [message] = await self.subscriber.wait_for(1)
        self.assertEqual(
            (message.topic, message.payload, message.qos, message.retain),
            ("emqx/a", b"hello emqx api", 1, False),
        )
        props = message.properties
        self.assertEqual(props["PayloadFormatIndicator"], 1)
        self.assertLessEqual(props["MessageExpiryInterval"], 600)
        self.assertGreater(props["MessageExpiryInterval"], 590)
        self.assertEqual(props["ResponseTopic"], "some_other_topic")
        self.assertEqual(props["CorrelationData"], b"some_correlation_id")
        self.assertEqual(props["ContentType"], "text/plain")
        self.assertEqual(
            props["UserProperty"],
            [
                ("foo", "bar"),
                ("a", "\u00e9"),
                ("http-client-id", props["UserProperty"][2][1]),
                ("http-username", "user0"),
            ],
        )
        self.assertRegex(props["UserProperty"][2][1], "^http-[0-9a-f]+$")

    async def test_bulk_plain_and_base64(self) -> None:
        """
        A bulk of plain and base64 payloads, QoS 0, 1 and 2, one retained: 200
        with an id per message in order; every message arrives as sent.
        """
        binary = bytes(range(256))
        items = [
            {"topic": "emqx/1", "payload": "plain one", "qos": 0},
            {
                "topic": "emqx/2",
                "payload": base64.b64encode(binary).decode(),
                "payload_encoding": "base64",
                "qos": 1,
            },
            {"topic": "emqx/3", "payload": "kept", "qos": 2, "retain": True},
        ]
        body = self.assertJSON(await self.post("publish/bulk", json.dumps(items)), 200)
        self.assertEqual([list(item) for item in body], [["id"]] * 3)
        self.assertEqual(len({item["id"] for item in body}), 3)
        messages = await self.subscriber.wait_for(3)
        got = sorted((m.topic, m.payload, m.qos, m.retain) for m in messages)
        self.assertEqual(
            got,
            [
                ("emqx/1", b"plain one", 0, False),
                ("emqx/2", binary, 1, False),
                # A live subscriber sees a retained message without the flag.
                ("emqx/3", b"kept", 2, False),
            ],
        )
        late = Subscriber("127.0.0.1", self.broker.port, "emqx/3")
        self.addCleanup(late.stop)
        await late.start()
        [retained] = await late.wait_for(1)
        self.assertEqual((retained.payload, retained.retain), (b"kept", True))

    async def test_no_matching_subscribers(self) -> None:
        """A QoS 1 message nobody subscribed to: 202 with EMQX's body; in a bulk,
        202 with the delivered message's id beside it."""
        single = await self.post(
            "publish", '{"topic": "nobody/here", "payload": "x", "qos": 1}'
        )
        self.assertEqual(
            self.assertJSON(single, 202),
            {"reason_code": 16, "message": "no_matching_subscribers"},
        )
        items = [
            {"topic": "emqx/seen", "payload": "1", "qos": 1},
            {"topic": "nobody/here", "payload": "2", "qos": 1},
        ]
        body = self.assertJSON(await self.post("publish/bulk", json.dumps(items)), 202)
        self.assertRegex(body[0]["id"], MESSAGE_ID)
        self.assertEqual(
            body[1], {"reason_code": 16, "message": "no_matching_subscribers"}
        )
        [message] = await self.subscriber.wait_for(1)
        self.assertEqual(message.topic, "emqx/seen")

    async def test_malformed_item_publishes_nothing(self) -> None:
        """A malformed item: 400 naming its index; more than max_batch messages
        or a body over max_body: 413; no message arrives."""
        items = [
            {"topic": "emqx/1", "payload": "x"},
            {"topic": "emqx/+", "payload": "y"},
        ]
        body = self.assertJSON(await self.post("publish/bulk", json.dumps(items)), 400)
        self.assertEqual(body["code"], "BAD_REQUEST")
        self.assertIn("[1].topic", body["message"])
        too_many = [{"topic": "emqx/1", "payload": ""}] * 51
        body = self.assertJSON(
            await self.post("publish/bulk", json.dumps(too_many)), 413
        )
        self.assertEqual(body["code"], "PAYLOAD_TOO_LARGE")
        large = [{"topic": "emqx/1", "payload": "x" * 40000}] * 2
        body = self.assertJSON(await self.post("publish/bulk", json.dumps(large)), 413)
        self.assertEqual(body["code"], "PAYLOAD_TOO_LARGE")
        self.assertJSON(
            await self.post("publish", '{"topic": "emqx/marker", "payload": "m"}'),
            200,
        )
        [message] = await self.subscriber.wait_for(1)
        self.assertEqual(message.topic, "emqx/marker")

    async def test_credentials(self) -> None:
        """No credentials or wrong ones: 401 with EMQX's codes."""
        url = f"{self.gateway.url}/api/v5/publish"
        body = '{"topic": "emqx/1", "payload": "x"}'
        missing = await curl("-X", "POST", url, "-d", body)
        self.assertEqual(
            self.assertJSON(missing, 401)["code"], "AUTHORIZATION_HEADER_ERROR"
        )
        wrong = await curl("-u", "user0:nope", "-X", "POST", url, "-d", body)
        self.assertEqual(self.assertJSON(wrong, 401)["code"], "BAD_API_KEY_OR_SECRET")
        self.assertIn("basic", wrong.headers["www-authenticate"].lower())


class EMQXPartialFailureTests(EMQXTestCase):
    limits = "[limits]\nrate = 0.001\nburst = 2\n"

    async def test_denied_and_rate_limited(self) -> None:
        """
        A batch with one message the ACL denies and one over the rate limit: each
        message's own result says which, the status is the first failure's
        (403), and exactly the allowed messages arrive.
        """
        items = [
            {"topic": "emqx/1", "payload": "first"},
            {"topic": "forbidden/1", "payload": "no"},
            {"topic": "emqx/2", "payload": "second"},
            {"topic": "emqx/3", "payload": "too many"},
        ]
        result = await self.post("publish/bulk", json.dumps(items))
        body = self.assertJSON(result, 403)
        self.assertRegex(body[0]["id"], MESSAGE_ID)
        self.assertEqual(body[1], {"reason_code": 135, "message": "not_authorized"})
        self.assertRegex(body[2]["id"], MESSAGE_ID)
        self.assertEqual(body[3], {"reason_code": 151, "message": "quota_exceeded"})
        messages = await self.subscriber.wait_for(2)
        self.assertEqual(sorted(m.payload for m in messages), [b"first", b"second"])
        single = await self.post("publish", '{"topic": "emqx/4", "payload": "x"}')
        self.assertEqual(self.assertJSON(single, 429)["code"], "TOO_MANY_REQUESTS")
        self.assertGreaterEqual(int(single.headers["retry-after"]), 1)
        self.assertEqual(len(self.subscriber.messages), 2)
