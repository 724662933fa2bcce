"""
Protocol "auto" against real brokers: a silent 3.1.1-only broker (amqtt) is found
within a second, and a TLS failure is reported as one, not as a broker that does
not speak MQTT 5.
"""

from __future__ import annotations

import json
import os

import trustme
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import provider

from tests.brokers import Amqtt, Mosquitto, Subscriber
from tests.gateway import RunningGateway, config, curl


class _Logged(TestCase):
    timeout = 60

    def capture_log(self) -> list[str]:
        lines: list[str] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return lines


class SilentBrokerTests(_Logged):
    async def test_first_200_within_a_second(self) -> None:
        """amqtt never answers an MQTT 5 CONNECT; with protocol "auto" the first
        request is answered 200 within a second of the gateway's start, and the
        message arrives."""
        from twisted.internet import reactor

        broker = Amqtt()
        self.addCleanup(broker.stop)
        await broker.start()
        subscriber = Subscriber("127.0.0.1", broker.port, "#", protocol=4)
        self.addCleanup(subscriber.stop)
        await subscriber.start()
        log = self.capture_log()
        gateway = RunningGateway(config(f"mqtt://127.0.0.1:{broker.port}"))
        self.addCleanup(gateway.stop)
        started = reactor.seconds()
        gateway.service.privilegedStartService()
        gateway.service.startService()
        result = await curl(
            "--request", "POST", "--data", "first", gateway.topic_url("fast")
        )
        elapsed = reactor.seconds() - started
        self.assertEqual(result.status, 200, result.body)
        self.assertLess(elapsed, 1.0)
        [message] = await subscriber.wait_for(1)
        self.assertEqual((message.topic, message.payload), ("fast", b"first"))
        self.assertEqual(gateway.session.protocol_level, 4)
        self.assertTrue(any("answers MQTT 3.1.1 but not MQTT 5" in x for x in log))


class TLSFailureTests(_Logged):
    async def test_wrong_ca_said_as_such(self) -> None:
        """With an [mqtt] ca that did not sign the broker's certificate, the log
        says the TLS handshake failed (never "does not speak MQTT 5"), the
        session stays at MQTT 5, and requests get 503 BrokerUnavailable."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        ca, other = trustme.CA(), trustme.CA()
        server = ca.issue_cert("127.0.0.1")
        paths = {
            name: os.path.join(directory, name)
            for name in ("ca.pem", "other.pem", "server.pem", "server.key")
        }
        ca.cert_pem.write_to_path(paths["ca.pem"])
        other.cert_pem.write_to_path(paths["other.pem"])
        server.cert_chain_pems[0].write_to_path(paths["server.pem"])
        server.private_key_pem.write_to_path(paths["server.key"])
        broker = Mosquitto(
            cafile=paths["ca.pem"],
            certfile=paths["server.pem"],
            keyfile=paths["server.key"],
        )
        self.addCleanup(broker.stop)
        await broker.start()
        log = self.capture_log()
        gateway = RunningGateway(
            config(f"mqtts://127.0.0.1:{broker.port}").replace(
                "[mqtt]\n", f'[mqtt]\nca = "{paths["other.pem"]}"\n'
            )
        )
        self.addCleanup(gateway.stop)
        gateway.service.privilegedStartService()
        gateway.service.startService()
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, 1.0, lambda: None)
        text = "\n".join(log)
        self.assertIn("TLS failed", text)
        self.assertNotIn("does not speak MQTT 5", text)
        self.assertNotIn("trying MQTT 3.1.1", text)
        result = await curl("--request", "POST", "--data", "x", gateway.topic_url("t"))
        self.assertEqual(result.status, 503)
        self.assertEqual(json.loads(result.body)["code"], "BrokerUnavailable")
