"""
Broker differences, end to end with curl: what the gateway answers on Aedes and
RabbitMQ where they differ from Mosquitto (see tests/integration/test_brokers.py for
what each broker does on its own).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import provider

from tests.brokers import Subscriber
from tests.brokers_more import SHARED_RABBITMQ_MAX_MESSAGE_SIZE, Aedes, shared_rabbitmq
from tests.gateway import CurlResult, RunningGateway, config, curl


class _MatrixCase(TestCase):
    timeout = 180

    async def gateway_for(self, port: int, protocol: str = "auto") -> RunningGateway:
        self.log: list[str] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            self.log.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        gateway = RunningGateway(
            config(f"mqtt://127.0.0.1:{port}", protocol=protocol).replace(
                "max_body = 4096", "max_body = 262144"
            )
            + "[limits]\nrate = 0\n"
        )
        self.addCleanup(gateway.stop)
        await gateway.start()
        self.gateway = gateway
        return gateway

    async def subscribe(self, port: int, topic: str) -> Subscriber:
        subscriber = Subscriber("127.0.0.1", port, topic, protocol=4)
        self.addCleanup(subscriber.stop)
        await subscriber.start()
        return subscriber

    def post(self, target: str, body: bytes = b"x") -> Deferred[CurlResult]:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(body)
        return curl(
            "--request",
            "POST",
            "--data-binary",
            f"@{path}",
            f"{self.gateway.url}/topics/{target}",
        )


class RabbitMQTests(_MatrixCase):
    async def test_qos2_never_hidden(self) -> None:
        """RabbitMQ answers QoS 2 with PUBACK: that request is 400 InvalidQoS
        (the message went at QoS 1), later QoS 2 requests are 400 at once; QoS 1
        is delivered."""
        broker = await shared_rabbitmq()
        topic = f"q2{uuid.uuid4().hex[:8]}"
        subscriber = await self.subscribe(broker.port, f"{topic}/#")
        await self.gateway_for(broker.port)
        self.assertEqual(self.gateway.session.protocol_level, 4)
        first = await self.post(f"{topic}/a?qos=2", b"two")
        self.assertEqual(first.status, 400, first.body)
        body = json.loads(first.body)
        self.assertEqual(body["code"], "InvalidQoS")
        self.assertIn("QoS 1", body["message"])
        later = await self.post(f"{topic}/b?qos=2", b"again")
        self.assertEqual(later.status, 400, later.body)
        ok = await self.post(f"{topic}/c?qos=1", b"one")
        self.assertEqual(ok.status, 200, ok.body)
        messages = await subscriber.wait_for(2)
        self.assertEqual(
            [(m.topic, m.payload, m.qos) for m in messages],
            [(f"{topic}/a", b"two", 1), (f"{topic}/c", b"one", 1)],
        )
        self.assertEqual(sum("offers QoS 1 at most" in x for x in self.log), 1)

    async def test_oversize_wedge(self) -> None:
        """A message over RabbitMQ's max_message_size stops every later PUBACK on
        that connection: the gateway cuts the connection, finds the message and
        never sends it again; valid requests are served again within seconds.
        After a second such message, one as large is refused at once (413)."""
        from twisted.internet import reactor

        broker = await shared_rabbitmq()
        topic = f"big{uuid.uuid4().hex[:8]}"
        subscriber = await self.subscribe(broker.port, f"{topic}/#")
        await self.gateway_for(broker.port)
        small = await self.post(f"{topic}/small?qos=1", b"s")
        self.assertEqual(small.status, 200, small.body)
        big = b"b" * (SHARED_RABBITMQ_MAX_MESSAGE_SIZE + 1000)
        result = await self.post(f"{topic}/big?qos=1", big)
        self.assertNotEqual(result.status, 200)
        started = reactor.seconds()
        while True:
            after = await self.post(f"{topic}/after?qos=1", b"a")
            if after.status == 200:
                break
            self.assertLess(reactor.seconds() - started, 15, after.body)
        for _ in range(2):
            again = await self.post(f"{topic}/big?qos=1", big)
            self.assertNotEqual(again.status, 200, again.body)
            while (await self.post(f"{topic}/after?qos=1", b"a")).status != 200:
                self.assertLess(reactor.seconds() - started, 40)
        refused = await self.post(f"{topic}/big?qos=1", big)
        self.assertEqual(refused.status, 413, refused.body)
        await subscriber.wait_for(2)
        self.assertNotIn(f"{topic}/big", [m.topic for m in subscriber.messages])


class AedesTests(_MatrixCase):
    async def start_aedes(self) -> Any:
        broker = Aedes()
        self.addCleanup(broker.stop)
        await broker.start()
        return broker

    async def test_auto_uses_311(self) -> None:
        """Aedes refuses MQTT 5 in a 3.1.1 CONNACK: "auto" settles on 3.1.1 and
        says why."""
        broker = await self.start_aedes()
        await self.gateway_for(broker.port)
        self.assertEqual(self.gateway.session.protocol_level, 4)
        self.assertTrue(any("does not speak MQTT 5" in x for x in self.log), self.log)

    async def test_protocol_5_says_why(self) -> None:
        """With protocol = "5" the log says the broker answered in 3.1.1, not
        that its CONNACK was unreadable."""
        broker = await self.start_aedes()
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        gateway = RunningGateway(
            config(f"mqtt://127.0.0.1:{broker.port}", protocol="5")
        )
        self.addCleanup(gateway.stop)
        self.log = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            self.log.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        gateway.service.privilegedStartService()
        gateway.service.startService()
        await deferLater(reactor, 0.5, lambda: None)
        text = "\n".join(self.log)
        self.assertIn("answered in MQTT 3.1.1", text)
        self.assertNotIn("unreadable CONNACK", text)

    async def test_deep_topic_fails_alone(self) -> None:
        """Aedes closes the connection on a topic of more than 100 levels (the
        gateway allows 200): that request fails alone, the next is served within
        a second."""
        from twisted.internet import reactor

        broker = await self.start_aedes()
        subscriber = await self.subscribe(broker.port, "#")
        await self.gateway_for(broker.port)
        self.assertEqual((await self.post("ok/1?qos=1")).status, 200)
        deep = "/".join(["d"] * 150)
        result = await self.post(f"{deep}?qos=1")
        self.assertEqual(result.status, 502, result.body)
        started = reactor.seconds()
        after = await self.post("ok/2?qos=1", b"next")
        self.assertEqual(after.status, 200, after.body)
        self.assertLess(reactor.seconds() - started, 1.0)
        messages = await subscriber.wait_for(2)
        self.assertEqual([m.topic for m in messages], ["ok/1", "ok/2"])
