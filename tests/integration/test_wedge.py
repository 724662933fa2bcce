"""
No request can stop publishing: curl against the gateway in front of a real
Mosquitto, for each kind of packet a strict broker disconnects on. The hostile
request fails on its own (400 before anything reaches the broker, or 413/502 when
only the broker can tell), and the next valid request is 200 within a second.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import provider

from tests.brokers import Mosquitto, Subscriber
from tests.gateway import CurlResult, RunningGateway, config, curl

# Each is a request a strict broker would disconnect on, if it were forwarded:
# (path and query, the parameter the 400 names).
HOSTILE = [
    ("home/a%01b?qos=1", "topic"),
    ("home/a%C2%85b?qos=1", "topic"),
    ("home/a%EF%BF%BFb?qos=1", "topic"),
    ("/".join(["x"] * 300) + "?qos=1", "topic"),
    ("home?qos=1&ContentType=text%0a", "ContentType"),
    ("home?qos=1&UserProp.1.Key=k&UserProp.1.Value=v%7f", "UserProp.1.Value"),
    ("home?qos=0&UserProp.1.Key=k%C2%9F&UserProp.1.Value=v", "UserProp.1.Key"),
    ("home?qos=1&ResponseTopic=r%EF%B7%90", "ResponseTopic"),
    ("home?qos=2&client_id=dev%1b", "client_id"),
]


class _Case(TestCase):
    """Mosquitto with C{broker_extra} lines, the gateway, a subscriber on '#'."""

    timeout = 60
    protocol = "5"
    broker_extra: tuple[str, ...] = ()

    async def _start(self) -> None:
        self.broker = Mosquitto(extra=self.broker_extra)
        self.addCleanup(self.broker.stop)
        await self.broker.start()
        self.gateway = RunningGateway(
            config(f"mqtt://127.0.0.1:{self.broker.port}", protocol=self.protocol)
        )
        self.addCleanup(self.gateway.stop)
        await self.gateway.start()
        level = 4 if self.protocol == "3.1.1" else 5
        self.subscriber = Subscriber("127.0.0.1", self.broker.port, "#", protocol=level)
        self.addCleanup(self.subscriber.stop)
        await self.subscriber.start()
        self.log: list[str] = []
        self.seen = 0

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            self.log.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return ensureDeferred(self._start())

    def post(self, target: str, body: bytes = b"x") -> Deferred[CurlResult]:
        return curl(
            "--request",
            "POST",
            "--data-binary",
            body.decode("latin-1"),
            f"{self.gateway.url}/topics/{target}",
        )

    async def assert_next_valid_served(self, label: str) -> None:
        """A valid request right after gets 200 within a second, and arrives."""
        from twisted.internet import reactor

        started = reactor.seconds()
        result = await self.post(f"ok/{label}?qos=1", b"fine")
        self.assertEqual(
            result.status, 200, f"{label}: {result.raw_head}{result.body!r}"
        )
        self.assertLess(reactor.seconds() - started, 1.0, label)
        self.seen += 1
        messages = await self.subscriber.wait_for(self.seen)
        self.assertEqual(
            [(m.topic, m.payload) for m in messages[-1:]], [(f"ok/{label}", b"fine")]
        )

    def lost_connections(self) -> int:
        return sum("Lost the connection" in line for line in self.log)


class MalformedStringTests(_Case):
    async def test_each_refused_before_the_broker(self) -> None:
        """Every string a strict broker disconnects on is a 400 naming its
        parameter; nothing reaches the broker, the session never drops, and the
        next request is served at once."""
        for target, parameter in HOSTILE:
            result = await self.post(target)
            self.assertEqual(result.status, 400, target)
            body = json.loads(result.body)
            self.assertIn(body["code"], ("InvalidTopic", "InvalidParameter"), target)
            self.assertIn(parameter, body["message"], target)
            await self.assert_next_valid_served(parameter.replace(".", "-"))
        self.assertEqual(self.lost_connections(), 0, self.log)
        self.assertTrue(self.gateway.session.connected)

    async def test_basic_user_name(self) -> None:
        """A Basic user name with a control character (it would travel as the
        http-username property) is a 400, not a broken session."""
        result = await curl(
            "--request",
            "POST",
            "-u",
            "bad\x01user:pw",
            "--data",
            "x",
            f"{self.gateway.url}/topics/home",
        )
        self.assertEqual(result.status, 400, result.body)
        await self.assert_next_valid_served("after-basic")


class Mqtt311Case(_Case):
    protocol = "3.1.1"


class OversizeOn311Tests(Mqtt311Case):
    """MQTT 3.1.1 cannot announce Mosquitto's max_packet_size: the broker just
    disconnects on a larger packet."""

    broker_extra = ("max_packet_size 2000",)

    async def test_oversize_fails_alone(self) -> None:
        """The over-size message is never 200 and never wedges the session: it
        fails (413 or 502), the next valid request is served within a second,
        and once the broker has shown its limit a second over-size message is
        413 at once without costing the session."""
        await self.assert_next_valid_served("before")
        big = b"y" * 5000
        for qos in ("1", "2", "0"):
            result = await self.post(f"big?qos={qos}", big)
            self.assertIn(result.status, (413, 502), (qos, result.body))
            await self.assert_next_valid_served(f"after-{qos}")
        lost = self.lost_connections()
        result = await self.post("big?qos=1", big)
        self.assertEqual(result.status, 413, result.body)
        self.assertEqual(self.lost_connections(), lost)
        await self.assert_next_valid_served("end")
        self.assertNotIn("big", [m.topic for m in self.subscriber.messages])


class RetainRefusedOn311Tests(Mqtt311Case):
    """Mosquitto with retain_available false disconnects a 3.1.1 client that
    publishes a retained message (MQTT 5 clients are told in CONNACK)."""

    broker_extra = ("retain_available false",)

    async def test_refused_message_fails_alone(self) -> None:
        """That message fails with 502 (not 200, not resent for ever) and the next
        valid request is served within a second."""
        result = await self.post("kept?qos=1&retained=true", b"r")
        self.assertEqual(result.status, 502, result.body)
        await self.assert_next_valid_served("after-retained")
        result = await self.post("kept?qos=1&retained=true", b"r")
        self.assertEqual(result.status, 502, result.body)
        await self.assert_next_valid_served("again")


class RetainRefusedOn5Tests(_Case):
    broker_extra = ("retain_available false",)

    async def test_refused_up_front(self) -> None:
        """Over MQTT 5 the broker says so in CONNACK: 400 InvalidRetained at once,
        the session untouched."""
        result = await self.post("kept?qos=1&retained=true", b"r")
        self.assertEqual(result.status, 400, result.body)
        self.assertEqual(json.loads(result.body)["code"], "InvalidRetained")
        await self.assert_next_valid_served("after")
        self.assertEqual(self.lost_connections(), 0)


class MaxQoSOn311Tests(Mqtt311Case):
    """Mosquitto with max_qos 1 disconnects a 3.1.1 client that publishes QoS 2."""

    broker_extra = ("max_qos 1",)

    async def test_qos2_fails_alone(self) -> None:
        """The QoS 2 message is never 200; QoS 1 keeps flowing."""
        result = await self.post("q2?qos=2", b"2")
        self.assertIn(result.status, (400, 502), result.body)
        await self.assert_next_valid_served("after-q2")
