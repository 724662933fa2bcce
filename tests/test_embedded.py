"""
Tests for L{gateway.embedded}: the embedded amqtt broker of the zero-config default,
run for real on a free port, checked with an independent paho client.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, cast

from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial import unittest

from gateway.embedded import EmbeddedBrokerError, EmbeddedBrokerService
from tests.brokers import Subscriber, free_port, publish


def _brokerThreads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("embedded MQTT")]


class EmbeddedBrokerServiceTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    async def startBroker(self, port: int | None = None) -> EmbeddedBrokerService:
        service = EmbeddedBrokerService("127.0.0.1", port or free_port())
        service.startService()
        self.addCleanup(service.stopService)
        await service.whenListening()
        return service

    async def subscribe(
        self, service: EmbeddedBrokerService, topic: str, qos: int
    ) -> Subscriber:
        subscriber = Subscriber(service.host, service.port, topic, qos, protocol=4)
        self.addCleanup(subscriber.stop)
        await subscriber.start()
        return subscriber

    async def test_qos_0_1_2(self) -> None:
        """
        Messages published at QoS 0, 1 and 2 reach a 3.1.1 subscriber of the same
        QoS with their topic and payload, not flagged as retained.
        """
        service = await self.startBroker()
        subscribers = [await self.subscribe(service, f"q/{q}/#", q) for q in (0, 1, 2)]
        for qos in (0, 1, 2):
            await publish(
                service.host, service.port, f"q/{qos}/t", b"m%d" % qos, qos=qos
            )
        for qos, subscriber in enumerate(subscribers):
            [message] = await subscriber.wait_for(1)
            self.assertEqual(
                (message.topic, message.payload, message.qos, message.retain),
                (f"q/{qos}/t", b"m%d" % qos, qos, False),
            )

    async def test_retained(self) -> None:
        """A retained message reaches a subscriber that arrives later, flagged."""
        service = await self.startBroker()
        await publish(service.host, service.port, "r/1", b"kept", qos=1, retain=True)
        subscriber = await self.subscribe(service, "r/#", 1)
        [message] = await subscriber.wait_for(1)
        self.assertEqual(
            (message.topic, message.payload, message.qos, message.retain),
            ("r/1", b"kept", 1, True),
        )

    async def test_logging(self) -> None:
        """
        Start-up logs one line naming amqtt, MQTT 3.1.1, anonymous access and the
        address; amqtt's own chatter (connections, packets) is not logged.
        """
        service = await self.startBroker()
        subscriber = await self.subscribe(service, "#", 2)
        await publish(service.host, service.port, "a", b"b", qos=2)
        await subscriber.wait_for(1)
        lines = [
            e["log_format"].format(**e)
            for e in self.events
            if e.get("log_namespace") == "gateway.embedded"
        ]
        self.assertEqual(
            lines,
            [
                "Embedded MQTT broker (amqtt, MQTT 3.1.1, anonymous) listening on "
                f"127.0.0.1:{service.port}"
            ],
        )
        self.assertEqual(
            [e for e in self.events if e.get("log_namespace") == "amqtt"], []
        )

    async def test_stop(self) -> None:
        """
        stopService() completes while a client is connected, ends the broker's
        thread and frees the port: a new broker can listen there at once.
        """
        service = await self.startBroker()
        await self.subscribe(service, "#", 0)
        self.assertEqual(len(_brokerThreads()), 1)
        await service.stopService()
        self.assertEqual(_brokerThreads(), [])
        with socket.socket() as s:
            self.assertNotEqual(s.connect_ex((service.host, service.port)), 0)

        again = await self.startBroker(service.port)
        await again.stopService()
        self.assertEqual(_brokerThreads(), [])

    async def test_stop_at_once(self) -> None:
        """stopService() right after startService() still ends cleanly."""
        service = EmbeddedBrokerService("127.0.0.1", free_port())
        service.startService()
        await service.stopService()
        self.assertEqual(_brokerThreads(), [])
        await service.stopService()

    async def test_port_in_use(self) -> None:
        """
        If the port is taken, whenListening() fails with EmbeddedBrokerError naming
        the address and the reason, and stopService() still completes.
        """
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            service = EmbeddedBrokerService("127.0.0.1", port)
            service.startService()
            with self.assertRaises(EmbeddedBrokerError) as raised:
                await service.whenListening()
            error = raised.exception
            self.assertEqual(
                str(error),
                f"Embedded MQTT broker could not listen on 127.0.0.1:{port}: "
                "Address already in use",
            )
            # Later callers learn the same.
            with self.assertRaises(EmbeddedBrokerError):
                await service.whenListening()
            await service.stopService()
        self.assertEqual(_brokerThreads(), [])
