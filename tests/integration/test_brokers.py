"""
Tests of the integration-test support in L{tests.brokers}: real Mosquitto and amqtt
processes and the paho subscriber, on the real reactor.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trustme
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests import rawmqtt
from tests.brokers import (
    Amqtt,
    BrokerStartError,
    Mosquitto,
    Subscriber,
    WaitTimeout,
    free_port,
    poll,
    publish,
)
from tests.brokers_more import SHARED_RABBITMQ_MAX_MESSAGE_SIZE, Aedes, shared_rabbitmq
from tests.linkcutter import LinkCutter

if TYPE_CHECKING:
    _TestCase = unittest.TestCase
else:
    _TestCase = object


class MosquittoTests(unittest.TestCase):
    timeout = 30

    async def test_kill_and_start_again_on_the_same_port(self) -> None:
        """
        A killed Mosquitto starts again on the same port, a subscriber reconnects
        and resubscribes by itself, and messages flow before and after; the log
        shows the connections.
        """
        broker = Mosquitto()
        await broker.start()
        self.addCleanup(broker.stop)
        port = broker.port
        subscriber = Subscriber(broker.host, port, "t/#", qos=1)
        await subscriber.start()
        self.addCleanup(subscriber.stop)

        await publish(broker.host, port, "t/1", b"before", qos=1)
        [before] = await subscriber.wait_for(1)
        self.assertEqual(
            (before.topic, before.payload, before.qos), ("t/1", b"before", 1)
        )

        await broker.kill()
        self.assertFalse(broker.running)
        self.assertFalse(broker.exitedCleanly())
        await broker.start()
        self.assertEqual(broker.port, port)
        await subscriber.wait_subscribed(2)

        await publish(broker.host, port, "t/2", b"after", qos=2, protocol=5)
        messages = await subscriber.wait_for(2)
        self.assertEqual(
            [(m.topic, m.payload) for m in messages],
            [("t/1", b"before"), ("t/2", b"after")],
        )
        log = broker.log()
        self.assertEqual(log.count(f"as {subscriber.client_id} (p5"), 2, log)
        self.assertEqual(log.count(" running"), 2, log)

    async def test_restart_and_stop(self) -> None:
        """
        restart() stops Mosquitto cleanly and starts it on the same port; stop()
        ends the process with status 0 and frees the port.
        """
        broker = Mosquitto(connection_messages=False)
        await broker.start()
        self.addCleanup(broker.stop)
        port = broker.port
        await broker.restart()
        self.assertEqual(broker.port, port)
        self.assertTrue(broker.running)
        self.assertIn("terminating", broker.log())
        await broker.stop()
        self.assertFalse(broker.running)
        self.assertTrue(broker.exitedCleanly())
        with socket.socket() as s:
            self.assertNotEqual(s.connect_ex((broker.host, port)), 0)

    async def test_configuration(self) -> None:
        """
        The generated configuration holds the options given as keyword arguments
        and the extra lines; a password file makes Mosquitto refuse anonymous
        clients.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        passwords = os.path.join(directory, "passwd")
        salt = os.urandom(12)
        digest = hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101, 64)
        with open(passwords, "w") as f:
            f.write(f"user:$7$101${_b64(salt)}${_b64(digest)}\n")
        broker = Mosquitto(
            allow_anonymous=False,
            password_file=passwords,
            persistence=True,
            extra=["max_keepalive 100"],
        )
        await broker.start()
        self.addCleanup(broker.stop)
        config = broker.config()
        self.assertIn(f"listener {broker.port} 127.0.0.1\n", config)
        self.assertIn("allow_anonymous false\n", config)
        self.assertIn(f"password_file {os.path.abspath(passwords)}\n", config)
        self.assertIn("persistence true\n", config)
        self.assertIn("max_keepalive 100\n", config)

        anonymous = Subscriber(broker.host, broker.port, protocol=4)
        self.addCleanup(anonymous.stop)
        with self.assertRaises(WaitTimeout) as raised:
            await anonymous.start()
        error = raised.exception
        self.assertIn("Not authorized", str(error))
        user = Subscriber(broker.host, broker.port, username="user", password="secret")
        await user.start()
        await user.stop()

    async def test_properties_and_persistent_session(self) -> None:
        """
        The subscriber records MQTT 5 properties under paho's names, and with
        clean_start=False and a session expiry it gets the QoS 1 messages published
        while it was away.
        """
        broker = Mosquitto()
        await broker.start()
        self.addCleanup(broker.stop)

        def persistent() -> Subscriber:
            return Subscriber(
                broker.host,
                broker.port,
                "p/#",
                qos=1,
                client_id="persistent-sub",
                clean_start=False,
                session_expiry=60,
            )

        first = persistent()
        await first.start()
        await first.stop()

        properties = {
            "UserProperty": [("a", "1"), ("a", "2")],
            "ContentType": "text/plain",
            "ResponseTopic": "reply/here",
            "CorrelationData": b"\x00id",
            "PayloadFormatIndicator": 1,
            "MessageExpiryInterval": 3600,
        }
        await publish(
            broker.host,
            broker.port,
            "p/1",
            b"hi",
            qos=1,
            protocol=5,
            properties=properties,
        )
        second = persistent()
        self.addCleanup(second.stop)
        await second.start()
        [message] = await second.wait_for(1)
        self.assertEqual(
            (message.topic, message.payload, message.qos), ("p/1", b"hi", 1)
        )
        expiry = message.properties.pop("MessageExpiryInterval")
        self.assertTrue(3590 <= expiry <= 3600, expiry)
        del properties["MessageExpiryInterval"]
        self.assertEqual(message.properties, properties)

    async def test_tls(self) -> None:
        """
        With certfile/keyfile/cafile and require_certificate the listener speaks
        TLS and takes a client certificate issued by the CA.
        """
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        ca_path = os.path.join(directory, "ca.pem")
        cert_path = os.path.join(directory, "server.pem")
        key_path = os.path.join(directory, "server.key")
        ca.cert_pem.write_to_path(ca_path)
        server.cert_chain_pems[0].write_to_path(cert_path)
        server.private_key_pem.write_to_path(key_path)
        broker = Mosquitto(
            cafile=ca_path,
            certfile=cert_path,
            keyfile=key_path,
            require_certificate=True,
        )
        await broker.start()
        self.addCleanup(broker.stop)
        self.assertIn("require_certificate true\n", broker.config())

        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(context)
        ca.issue_cert("device-1").configure_cert(context)
        with (
            socket.create_connection((broker.host, broker.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            # CONNECT (3.1.1, clean session, keep-alive 30, client id "x") -> CONNACK
            tls.sendall(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x1e\x00\x01x")
            self.assertEqual(tls.recv(4), b"\x20\x02\x00\x00")

    async def test_start_failure_reports_the_log(self) -> None:
        """
        A Mosquitto that cannot start (here: an unknown option) fails start() with
        its log in the error.
        """
        broker = Mosquitto(extra=["no_such_option true"])
        self.addCleanup(broker.stop)
        with self.assertRaises(BrokerStartError) as raised:
            await broker.start()
        error = raised.exception
        self.assertIn("no_such_option", str(error))
        self.assertFalse(broker.running)


class AmqttTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.broker = Amqtt()
        self.addCleanup(self.broker.stop)
        return self.broker.start()  # type: ignore[return-value]

    async def test_mqtt311(self) -> None:
        """
        amqtt accepts an MQTT 3.1.1 client and delivers QoS 0, 1 and 2 publishes.

        Quirk pinned here: amqtt 0.12 delivers every message at the subscription's
        QoS, not at min(publish QoS, subscription QoS) as MQTT requires, so a QoS 0
        publish reaches a QoS 2 subscriber as QoS 2.
        """
        subscriber = Subscriber(self.broker.host, self.broker.port, protocol=4)
        await subscriber.start()
        self.addCleanup(subscriber.stop)
        for qos in (0, 1, 2):
            await publish(self.broker.host, self.broker.port, f"q/{qos}", b"x", qos=qos)
        messages = await subscriber.wait_for(3)
        self.assertEqual(
            [(m.topic, m.payload, m.qos, m.retain, m.properties) for m in messages],
            [(f"q/{qos}", b"x", 2, False, {}) for qos in (0, 1, 2)],
        )

    async def test_mqtt5_refused(self) -> None:
        """
        amqtt speaks 3.1.1 only: an MQTT 5 CONNECT without properties is answered
        with a 3.1.1-style CONNACK return code 1 (unacceptable protocol version),
        which paho reports as "Unsupported protocol version".
        """
        subscriber = Subscriber(self.broker.host, self.broker.port, protocol=5)
        self.addCleanup(subscriber.stop)
        with self.assertRaises(WaitTimeout) as raised:
            await subscriber.start(timeout=3)
        error = raised.exception
        self.assertIn("Unsupported protocol version", str(error))

    async def test_mqtt5_with_properties_unanswered(self) -> None:
        """
        An MQTT 5 CONNECT carrying properties gets no answer at all: amqtt reads the
        property bytes as payload and waits for more, so MQTT 5 clients need a
        CONNACK timeout to fall back to 3.1.1.
        """
        # CONNECT, level 5, clean start, keep-alive 30,
        # properties: Session Expiry Interval 60; client id "x".
        body = (
            b"\x00\x04MQTT\x05\x02\x00\x1e" + b"\x05\x11\x00\x00\x00\x3c" + b"\x00\x01x"
        )
        with socket.create_connection((self.broker.host, self.broker.port)) as s:
            s.sendall(bytes([0x10, len(body)]) + body)
            s.setblocking(False)
            await deferLater(reactor, 1)
            # Neither a CONNACK nor a closed connection (recv would return b"").
            self.assertRaises(BlockingIOError, s.recv, 16)


class _SmokeTests(_TestCase):
    """
    What every broker of the matrix must do, directly and through a LinkCutter;
    a subclass starts C{self.broker} in setUp and sets C{delivered_qos} to the
    QoS a QoS 2 subscriber receives QoS 0, 1 and 2 publishes at (3.1.1 clients).
    """

    broker: Any
    delivered_qos = (0, 1, 2)

    async def _publishAll(self, host: str, port: int, prefix: str) -> None:
        subscriber = Subscriber(host, port, f"{prefix}/#", protocol=4)
        await subscriber.start()
        self.addCleanup(subscriber.stop)
        for qos in (0, 1, 2):
            await publish(host, port, f"{prefix}/{qos}", b"x%d" % qos, qos=qos)
        messages = await subscriber.wait_for(3)
        self.assertEqual(
            [(m.topic, m.payload, m.qos) for m in messages],
            [
                (f"{prefix}/{qos}", b"x%d" % qos, got)
                for qos, got in zip((0, 1, 2), self.delivered_qos, strict=True)
            ],
        )

    async def test_qos_0_1_2(self) -> None:
        """paho publishes at QoS 0, 1 and 2 and the subscriber gets all three."""
        await self._publishAll(self.broker.host, self.broker.port, "direct")

    async def test_through_link_cutter(self) -> None:
        """
        Through a LinkCutter the same publishes arrive; a cut drops the
        subscriber's connection (it reconnects and subscribes again by itself).
        """
        cutter = LinkCutter(self.broker.host, self.broker.port)
        cutter.start()
        self.addCleanup(cutter.stop)
        await self._publishAll(cutter.host, cutter.port, "cut")
        subscriber = Subscriber(cutter.host, cutter.port, "after/#", protocol=4)
        await subscriber.start()
        self.addCleanup(subscriber.stop)
        self.assertEqual(cutter.cut(), 2)
        await subscriber.wait_subscribed(2)
        await publish(cutter.host, cutter.port, "after/cut", b"y", qos=1)
        [message] = await subscriber.wait_for(1)
        self.assertEqual(message.payload, b"y")
        self.assertEqual(cutter.cuts, 2)

    def raw(self) -> rawmqtt.RawClient:
        """A raw connection to the broker, closed at cleanup."""
        client = rawmqtt.RawClient(self.broker.host, self.broker.port)
        self.addCleanup(client.close)
        return client

    def rawConnected(self, client_id: str, clean: bool = True) -> rawmqtt.RawClient:
        """A raw 3.1.1 connection that has had its CONNACK (return code 0)."""
        client = self.raw()
        client.send(rawmqtt.connect(client_id, clean=clean))
        connack = client.read()
        assert connack is not None
        self.assertEqual((connack.kind, connack.body[1]), (rawmqtt.CONNACK, 0))
        return client

    async def probeTopics(
        self, prefix: str, suffixes: Sequence[bytes]
    ) -> tuple[list[tuple[list[int], bool]], list[str]]:
        """
        Publish at QoS 1 to each C{prefix/suffix} (raw bytes), each on a new
        connection. Returns, per topic, the packet types answered and whether
        the broker closed the connection, and the suffixes a subscriber to
        C{prefix/#} received (as paho decodes them).
        """
        subscriber = Subscriber(
            self.broker.host, self.broker.port, f"{prefix}/#", protocol=4
        )
        await subscriber.start()
        self.addCleanup(subscriber.stop)
        answers = []
        for suffix in suffixes:
            client = self.rawConnected(f"{prefix}-probe")
            topic = prefix.encode() + b"/" + suffix
            client.send(rawmqtt.publish(topic, b"s", qos=1, packet_id=3))
            packets, closed = client.replies()
            answers.append(([p.kind for p in packets], closed))
            client.close()
        await deferLater(reactor, 0.3)
        delivered = [m.topic[len(prefix) + 1 :] for m in subscriber.messages]
        return answers, delivered

    def mqtt5Replies(self) -> list[tuple[list[rawmqtt.Packet], bool]]:
        """
        What the broker answers (and whether it then closes the connection) to
        an MQTT 5 CONNECT without properties, and to one with a session expiry.
        """
        answers = []
        for properties in (b"", rawmqtt.SESSION_EXPIRY_60):
            client = self.raw()
            client.send(rawmqtt.connect("v5", level=5, properties=properties))
            answers.append(client.replies())
        return answers

    def resendQoS2(
        self, topic: str, first_clean: bool, second_clean: bool
    ) -> tuple[rawmqtt.Packet | None, rawmqtt.Packet | None, list[int]]:
        """
        Publish C{topic} at QoS 2 (packet id 9) on a connection with
        C{first_clean}, drop the link after the broker's answer, reconnect with
        C{second_clean} and send the PUBLISH again with DUP, then PUBREL. Returns
        the first answer, the second CONNACK and the packet types answered then.
        """
        client = self.rawConnected(topic, clean=first_clean)
        client.send(rawmqtt.publish(topic.encode(), b"1", qos=2, packet_id=9))
        answer = client.read()
        client.close()
        again = self.raw()
        again.send(rawmqtt.connect(topic, clean=second_clean))
        connack = again.read()
        again.send(rawmqtt.publish(topic.encode(), b"1", qos=2, packet_id=9, dup=True))
        again.send(rawmqtt.ack(rawmqtt.PUBREL, 9))
        return answer, connack, [p.kind for p in again.replies()[0]]


class AedesTests(_SmokeTests, unittest.TestCase):
    """
    Aedes 1.2 (npm), measured here: MQTT 3.1.1 only; a QoS 2 message is delivered
    on PUBLISH, before PUBREL; the inbound QoS 2 state (dedup by packet id) lasts
    while both connections are clean_session=0, though CONNACK's session-present
    flag stays 0 for a client without subscriptions; topic strings are not
    checked (U+0000, U+0001, U+FFFF, ill-formed UTF-8 are all published); over
    100 topic levels disconnect; no packet size limit (200 MB was taken).
    """

    timeout = 30

    def setUp(self) -> None:
        self.broker = Aedes()
        self.addCleanup(self.broker.stop)
        return self.broker.start()  # type: ignore[no-any-return]

    def test_mqtt5_refused(self) -> None:
        """
        An MQTT 5 CONNECT, with or without properties, gets a 3.1.1-style
        CONNACK with return code 1 (unacceptable protocol version), then the
        broker closes the connection.
        """
        refused = ([rawmqtt.Packet(rawmqtt.CONNACK, 0, b"\x00\x01")], True)
        self.assertEqual(self.mqtt5Replies(), [refused, refused])

    async def test_qos2_delivered_on_publish(self) -> None:
        """
        Aedes forwards a QoS 2 message when the PUBLISH comes (it answers PUBREC),
        not on PUBREL: a publisher whose link is cut before PUBREL has delivered.
        """
        subscriber = Subscriber(self.broker.host, self.broker.port, protocol=4)
        await subscriber.start()
        self.addCleanup(subscriber.stop)
        client = self.rawConnected("q2-early")
        client.send(rawmqtt.publish(b"early", b"1", qos=2, packet_id=7))
        self.assertEqual(client.read(), rawmqtt.expected_ack(rawmqtt.PUBREC, 7))
        [message] = await subscriber.wait_for(1)
        self.assertEqual((message.topic, message.qos), ("early", 2))

    async def test_qos2_dup_on_resumed_session(self) -> None:
        """
        A DUP re-sent QoS 2 PUBLISH with the same packet id after a reconnect is
        dropped (PUBREC again, delivered once) only when both connections were
        clean_session=0; if either was clean_session=1 it is delivered again.
        CONNACK says session-present 0 even on the resumed session (the client
        has no subscriptions).
        """
        subscriber = Subscriber(self.broker.host, self.broker.port, protocol=4)
        await subscriber.start()
        self.addCleanup(subscriber.stop)
        cases = {"c00": (False, False), "c01": (False, True), "c10": (True, False)}
        for topic, (first, second) in cases.items():
            self.assertEqual(
                self.resendQoS2(topic, first, second),
                (
                    rawmqtt.expected_ack(rawmqtt.PUBREC, 9),
                    rawmqtt.Packet(rawmqtt.CONNACK, 0, b"\x00\x00"),
                    [rawmqtt.PUBREC, rawmqtt.PUBCOMP],
                ),
            )
        await subscriber.wait_for(5)
        await deferLater(reactor, 0.3)
        self.assertEqual(
            sorted(m.topic for m in subscriber.messages),
            ["c00", "c01", "c01", "c10", "c10"],
        )

    async def test_strings_unchecked_levels_limited(self) -> None:
        """
        Topics with U+0000, U+0001, U+FFFF, U+0085 or ill-formed UTF-8 are
        acknowledged and delivered; a topic of 101 levels closes the connection
        without an acknowledgement.
        """
        answers, delivered = await self.probeTopics("strings", _ODD_TOPICS)
        self.assertEqual(answers, [([rawmqtt.PUBACK], False)] * 5 + [([], True)])
        self.assertEqual(
            delivered, [t.decode("utf-8", "replace") for t in _ODD_TOPICS[:5]]
        )

    def test_no_size_limit(self) -> None:
        """A 64 MB PUBLISH is acknowledged: Aedes has no packet size limit."""
        client = self.rawConnected("big")
        client.sock.settimeout(20)
        client.send(rawmqtt.publish(b"big", bytes(64 << 20), qos=1, packet_id=4))
        self.assertEqual(client.read(), rawmqtt.expected_ack(rawmqtt.PUBACK, 4))


#: Topic levels a strict broker refuses: U+0000, U+0001, U+FFFF, U+0085,
#: ill-formed UTF-8, and then 100 levels more (101 or more in all).
_ODD_TOPICS = [
    b"a\x00b",
    b"a\x01b",
    b"a\xef\xbf\xbfb",
    b"a\xc2\x85b",
    b"a\xffb",
    b"/".join([b"l"] * 100),
]


class RabbitMQTests(_SmokeTests, unittest.TestCase):
    """
    RabbitMQ 3.10.8 with rabbitmq_mqtt (Debian), one node shared by the module:
    MQTT 3.1.1 only; QoS 2 is downgraded to QoS 1 throughout (a QoS 2 PUBLISH is
    answered with PUBACK, a QoS 2 SUBSCRIBE granted QoS 1) and never
    deduplicated; a clean_session=0 subscriber keeps its subscription and queued
    messages across reconnects (session-present 1); topic strings are not
    checked; a PUBLISH over C{max_message_size} costs the connection.
    """

    # The first test starts the node: seconds, more on a loaded machine.
    timeout = 120
    delivered_qos = (0, 1, 1)

    async def setUp(self) -> None:  # type: ignore[override]
        self.broker = await shared_rabbitmq()

    async def test_mqtt5_closed_without_connack(self) -> None:
        """
        An MQTT 5 CONNECT, with or without properties, is answered by closing
        the connection: no CONNACK at all; the log says "MQTT cannot parse a
        frame".
        """

        def logged() -> int:
            return int(self.broker.log().count("MQTT cannot parse a frame"))

        before = logged()
        self.assertEqual(self.mqtt5Replies(), [([], True), ([], True)])
        await poll(
            reactor,
            lambda: logged() == before + 2,
            5,
            lambda: self.broker.log()[-3000:],
        )

    async def test_qos2_answered_with_puback(self) -> None:
        """
        A QoS 2 PUBLISH gets PUBACK, not PUBREC, and is delivered at QoS 1; a
        PUBREL is ignored (no PUBCOMP, the connection stays).
        """
        subscriber = Subscriber(
            self.broker.host, self.broker.port, "q2/#", qos=2, protocol=4
        )
        await subscriber.start()
        self.addCleanup(subscriber.stop)
        client = self.rawConnected("q2-puback")
        client.send(rawmqtt.publish(b"q2/x", b"1", qos=2, packet_id=5))
        self.assertEqual(client.read(), rawmqtt.expected_ack(rawmqtt.PUBACK, 5))
        client.send(rawmqtt.ack(rawmqtt.PUBREL, 5))
        self.assertEqual(client.replies(), ([], False))
        [message] = await subscriber.wait_for(1)
        self.assertEqual((message.topic, message.qos), ("q2/x", 1))

    async def test_qos2_dup_delivered_again(self) -> None:
        """
        A DUP re-sent QoS 2 PUBLISH with the same packet id is delivered again,
        even on a resumed clean_session=0 session (whose CONNACK says
        session-present 0: a publisher has no subscriptions to keep).
        """
        subscriber = Subscriber(
            self.broker.host, self.broker.port, "rdup/#", protocol=4
        )
        await subscriber.start()
        self.addCleanup(subscriber.stop)
        self.assertEqual(
            self.resendQoS2("rdup/0", False, False),
            (
                rawmqtt.expected_ack(rawmqtt.PUBACK, 9),
                rawmqtt.Packet(rawmqtt.CONNACK, 0, b"\x00\x00"),
                [rawmqtt.PUBACK],
            ),
        )
        await subscriber.wait_for(2)

    async def test_persistent_session_across_reconnect(self) -> None:
        """
        A clean_session=0 subscriber that loses its link gets session-present 1
        on reconnecting, and the QoS 1 message published meanwhile.
        """
        client = self.rawConnected("keeper", clean=False)
        client.send(rawmqtt.subscribe(b"keep/#"))
        self.assertEqual(
            client.read(), rawmqtt.Packet(rawmqtt.SUBACK, 0, b"\x00\x01\x01")
        )
        client.close()
        await publish(self.broker.host, self.broker.port, "keep/1", b"away", qos=1)
        again = self.raw()
        again.send(rawmqtt.connect("keeper", clean=False))
        connack, message = again.replies()[0]
        self.assertEqual(connack, rawmqtt.Packet(rawmqtt.CONNACK, 0, b"\x01\x00"))
        self.assertEqual(
            (message.kind, message.flags, message.body[:8], message.body[10:]),
            (rawmqtt.PUBLISH, 2, b"\x00\x06keep/1", b"away"),
        )
        # Leave no session behind on the shared node.
        again.close()
        self.rawConnected("keeper", clean=True).close()

    async def test_restart_keeps_sessions(self) -> None:
        """
        restart() stops the node cleanly and starts it on the same ports, epmd
        included; a clean_session=0 subscriber's session survives it
        (session-present 1). The old VM is gone.
        """
        client = self.rawConnected("survivor", clean=False)
        client.send(rawmqtt.subscribe(b"survivor/#"))
        self.assertEqual(
            client.read(), rawmqtt.Packet(rawmqtt.SUBACK, 0, b"\x00\x01\x01")
        )
        client.close()
        ports = (self.broker.port, self.broker.amqpPort, self.broker.epmdPort)
        old = self.broker.pid
        await self.broker.restart()
        self.assertTrue(self.broker.running)
        self.assertEqual(
            (self.broker.port, self.broker.amqpPort, self.broker.epmdPort), ports
        )
        self.assertRaises(ProcessLookupError, os.kill, old, 0)
        again = self.raw()
        again.send(rawmqtt.connect("survivor", clean=False))
        self.assertEqual(again.read(), rawmqtt.Packet(rawmqtt.CONNACK, 0, b"\x01\x00"))
        again.close()
        # Leave no session behind on the shared node.
        self.rawConnected("survivor", clean=True).close()

    async def test_strings_unchecked(self) -> None:
        """
        Topics with U+0000, U+0001, U+FFFF, U+0085, ill-formed UTF-8 or 101
        levels are all acknowledged; all but the ill-formed UTF-8 one are
        delivered: that one is dropped after its PUBACK.
        """
        answers, delivered = await self.probeTopics("rstrings", _ODD_TOPICS)
        self.assertEqual(answers, [([rawmqtt.PUBACK], False)] * 6)
        expected = [t.decode() for t in _ODD_TOPICS if t != b"a\xffb"]
        self.assertEqual(delivered, expected)

    def test_over_max_message_size(self) -> None:
        """
        A PUBLISH whose payload is over the node's max_message_size: at QoS 0 the
        broker closes the connection; at QoS 1 it never answers it, nor any later
        PUBLISH on that connection, but keeps the connection and answers
        PINGREQ: the session is wedged and keep-alive does not notice. Just under
        the limit is acknowledged.
        """
        limit = SHARED_RABBITMQ_MAX_MESSAGE_SIZE
        client = self.rawConnected("rbig")
        client.send(rawmqtt.publish(b"rbig", bytes(limit - 100), qos=1, packet_id=1))
        self.assertEqual(client.read(), rawmqtt.expected_ack(rawmqtt.PUBACK, 1))
        client.send(rawmqtt.publish(b"rbig", bytes(limit + 1), qos=1, packet_id=2))
        self.assertEqual(client.replies(1), ([], False))
        client.send(rawmqtt.publish(b"rbig", b"small", qos=1, packet_id=3))
        self.assertEqual(client.replies(1), ([], False))
        client.send(rawmqtt.packet(rawmqtt.PINGREQ, 0, b""))
        self.assertEqual(
            client.replies(), ([rawmqtt.Packet(rawmqtt.PINGRESP, 0, b"")], False)
        )
        client = self.rawConnected("rbig0")
        client.send(rawmqtt.publish(b"rbig", bytes(limit + 1)))
        self.assertEqual(client.replies(), ([], True))


class FreePortTests(unittest.TestCase):
    def test_free_port(self) -> None:
        """free_port() returns a port that can be bound on 127.0.0.1."""
        port = free_port()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
