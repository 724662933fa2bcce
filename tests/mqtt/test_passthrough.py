"""
Broker mode's publisher, driven deterministically: each sender's session talks to a
fake broker over StringTransports and a Clock stands in for time.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.errors import REALM, Code, GatewayError
from gateway.model import Identity, Message, PublishResult
from gateway.mqtt import codec
from gateway.mqtt.passthrough import PassthroughPublisher
from gateway.mqtt.session import Broker
from tests.fakes import Connections, FakeBroker, FakeEndpoint

#: The connections of the current test (see L{Connections}).
CONNECTIONS = Connections()


def sender(
    client_id: str = "dev-1",
    username: str | None = "alice",
    password: bytes | None = b"secret",
    connection: str = "",
) -> Identity:
    """An identity; with C{connection}, one on an HTTP/1.1 keep-alive connection."""
    return CONNECTIONS.sender(client_id, username, password, connection)


class PassthroughTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(CONNECTIONS.forget)
        self.clock = Clock()
        self.endpoints = [FakeEndpoint(), FakeEndpoint()]
        self.requests: list[Deferred[PublishResult]] = []
        # Runs after the publisher stopped: what a test left waiting was failed by
        # the stop, which is not what it checks.
        self.addCleanup(
            lambda: [
                d.addErrback(lambda f: f.trap(GatewayError)) for d in self.requests
            ]
        )

    def start(self, brokers: int = 1, **kw: Any) -> PassthroughPublisher:
        kw.setdefault("probe_interval", None)
        kw.setdefault("keepalive", 10)
        self.publisher = PassthroughPublisher(
            [Broker(f"mqtt://{i}", self.endpoints[i]) for i in range(brokers)],
            clock=self.clock,
            **kw,
        )
        self.publisher.startService()
        self.addCleanup(self.publisher.stopService)
        return self.publisher

    def publish(
        self, identity: Identity | None = None, qos: int = 1, **kw: Any
    ) -> Deferred[PublishResult]:
        d = self.publisher.publish(
            Message(topic="t", payload=b"p", qos=qos, **kw), identity or sender()
        )
        self.requests.append(d)
        return d

    def connected(self, index: int = 0, **properties: Any) -> FakeBroker:
        broker = FakeBroker(self.endpoints[index])
        broker.accept(**properties)
        return broker

    def attempts(self, index: int = 0) -> int:
        return len(self.endpoints[index].attempts)

    def assertFailsWith(
        self, d: Deferred[Any], status: int, code: Code
    ) -> GatewayError:
        error: GatewayError = self.failureResultOf(d, GatewayError).value
        self.assertEqual((error.status, error.code), (status, code), error.message)
        return error

    def assertClosed(self, broker: FakeBroker) -> None:
        """The client sent DISCONNECT and closed; the broker's end then closes."""
        self.assertEqual(broker.received(), [codec.Disconnect()])
        self.assertTrue(broker.transport.disconnecting)
        broker.protocol.connectionLost(Failure(ConnectionLost()))


class SessionPerSenderTests(PassthroughTestCase):
    def test_connect_as_sender(self) -> None:
        """The CONNECT carries the sender's client id, user name and password,
        a clean start and no session expiry; the PUBLISH carries no user
        properties of the gateway's."""
        self.start()
        self.publish()
        broker = self.connected()
        self.assertEqual(
            broker.connect,
            codec.Connect(
                client_id="dev-1",
                protocol_level=5,
                clean_start=True,
                keepalive=10,
                username="alice",
                password=b"secret",
            ),
        )
        [publish] = broker.received()
        self.assertEqual(publish, codec.Publish("t", b"p", qos=1, packet_id=1))

    def test_sender_user_properties_kept(self) -> None:
        """The sender's own user properties go out as given, nothing appended."""
        self.start()
        self.publish(user_properties=(("k", "v"),))
        [publish] = self.connected().received()
        assert isinstance(publish, codec.Publish)
        self.assertEqual(publish.properties.user_properties, (("k", "v"),))

    def test_anonymous(self) -> None:
        """A sender without credentials connects without them."""
        self.start()
        self.publish(sender(username=None, password=None))
        broker = self.connected()
        self.assertEqual(
            (broker.connect.username, broker.connect.password), (None, None)
        )

    def test_http10(self) -> None:
        """Without keep-alive: CONNECT, PUBLISH, PUBACK, DISCONNECT, and the
        session is gone; the next message makes a new one."""
        publisher = self.start()
        d = self.publish()
        self.assertEqual(publisher.session_count, 1)
        broker = self.connected()
        broker.received()
        self.assertNoResult(d)
        broker.send(codec.PubAck(1))
        self.successResultOf(d)
        self.assertClosed(broker)
        self.assertEqual(publisher.session_count, 0)
        self.publish()
        self.assertEqual(self.attempts(), 2)

    def test_http10_qos0(self) -> None:
        """QoS 0 without keep-alive: PUBLISH, a PINGREQ whose answer shows the
        broker read it (only then 200), then DISCONNECT."""
        self.start()
        d = self.publish(qos=0)
        broker = self.connected()
        self.assertEqual(broker.received(), [codec.Publish("t", b"p"), codec.PingReq()])
        self.assertNoResult(d)
        broker.send(codec.PingResp())
        self.successResultOf(d)
        self.assertEqual(broker.received(), [codec.Disconnect()])

    def test_new_session_waits_for_old_to_close(self) -> None:
        """A new session for a client id connects only once its previous session
        has closed, so that the broker never sees a takeover."""
        self.start()
        d = self.publish()
        broker = self.connected()
        broker.received()
        broker.send(codec.PubAck(1))
        self.successResultOf(d)
        again = self.publish()
        self.assertEqual(self.attempts(), 1)
        self.assertClosed(broker)
        self.assertEqual(self.attempts(), 2)
        second = self.connected()
        second.received()
        second.send(codec.PubAck(1))
        self.successResultOf(again)

    def test_waiting_session_given_up(self) -> None:
        """A session that waited for its predecessor in vain (its request timed
        out) never connects."""
        self.start(publish_timeout=10)
        first = self.publish()
        broker = self.connected()
        broker.received()
        broker.send(codec.PubAck(1))
        self.successResultOf(first)
        waiting = self.publish()
        self.clock.advance(10)
        self.assertFailsWith(waiting, 503, Code.BrokerUnavailable)
        self.assertClosed(broker)
        self.assertEqual(self.attempts(), 1)

    def test_stop_waits_for_closing(self) -> None:
        """Stopping fires only once sessions already closing have closed."""
        publisher = self.start()
        d = self.publish(qos=0)
        broker = self.connected()
        broker.send(codec.PingResp())
        self.successResultOf(d)
        self.assertEqual(
            broker.received(),
            [codec.Publish("t", b"p"), codec.PingReq(), codec.Disconnect()],
        )
        stopped = publisher.stopService()
        self.assertNoResult(stopped)
        broker.protocol.connectionLost(Failure(ConnectionLost()))
        self.successResultOf(stopped)

    def test_keep_alive_reuses_session(self) -> None:
        """Requests on one keep-alive connection share one session, which closes
        when the connection does."""
        publisher = self.start()
        first = self.publish(sender(connection="c1"))
        broker = self.connected()
        broker.received()
        broker.send(codec.PubAck(1))
        self.successResultOf(first)
        self.assertEqual(broker.received(), [])
        second = self.publish(sender(connection="c1"))
        [publish] = broker.received()
        assert isinstance(publish, codec.Publish)
        broker.send(codec.PubAck(publish.packet_id or 0))
        self.successResultOf(second)
        self.assertEqual(self.attempts(), 1)
        CONNECTIONS.close("c1")
        self.assertClosed(broker)
        self.assertEqual(publisher.session_count, 0)

    def test_connections_share_session(self) -> None:
        """Two connections with the same client id share one session; it closes
        only after both have closed."""
        self.start()
        self.publish(sender(connection="c1"))
        broker = self.connected()
        self.publish(sender(connection="c2"))
        self.assertEqual(len(broker.received()), 2)
        broker.send(codec.PubAck(1), codec.PubAck(2))
        self.assertEqual(self.attempts(), 1)
        CONNECTIONS.close("c1")
        self.assertEqual(broker.received(), [])
        CONNECTIONS.close("c2")
        self.assertClosed(broker)

    def test_closed_while_pending(self) -> None:
        """A connection that closes while its request waits: the session closes
        once the broker answered."""
        self.start()
        d = self.publish(sender(connection="c1"))
        broker = self.connected()
        broker.received()
        CONNECTIONS.close("c1")
        self.assertFalse(broker.transport.disconnecting)
        broker.send(codec.PubAck(1))
        self.successResultOf(d)
        self.assertClosed(broker)

    def test_unknown_connection_closed(self) -> None:
        """Closing a connection that holds nothing does nothing."""
        CONNECTIONS.close("nope")

    def test_other_credentials_forbidden(self) -> None:
        """A client id whose session was made with other credentials is 403, and
        the session goes on undisturbed."""
        self.start()
        self.publish(sender(connection="c1"))
        broker = self.connected()
        for other in (
            sender(password=b"guess", connection="c2"),
            sender(username="mallory", connection="c2"),
            sender(password=None),
        ):
            error = self.assertFailsWith(self.publish(other), 403, Code.Forbidden)
            self.assertEqual(error.message, "client id in use by another user")
        self.assertEqual(len(broker.received()), 1)
        self.assertEqual(self.attempts(), 1)
        self.assertFalse(broker.transport.disconnecting)

    def test_different_client_ids(self) -> None:
        """Each client id has a session of its own."""
        publisher = self.start()
        self.publish(sender("a", connection="c1"))
        self.publish(sender("b", connection="c1"))
        self.assertEqual(self.attempts(), 2)
        self.assertEqual(publisher.session_count, 2)

    def test_max_sessions(self) -> None:
        """Beyond max_sessions a new sender gets 503 with Retry-After; senders
        with a session go on."""
        self.start(max_sessions=2)
        self.publish(sender("a", connection="c1"))
        self.publish(sender("b", connection="c2"))
        error = self.assertFailsWith(
            self.publish(sender("c")), 503, Code.BrokerUnavailable
        )
        self.assertEqual(error.response_headers(), [("Retry-After", "1")])
        self.assertNoResult(self.publish(sender("a", connection="c3")))

    def test_idle_timeout(self) -> None:
        """A session idle for idle_timeout closes though a connection holds it."""
        # No keep-alive pings: this fake broker would not answer them.
        publisher = self.start(idle_timeout=30, keepalive=0)
        self.publish(sender(connection="c1"))
        broker = self.connected()
        broker.received()
        self.clock.advance(5)
        broker.send(codec.PubAck(1))
        self.clock.advance(29)
        self.assertFalse(broker.transport.disconnecting)
        self.clock.advance(1)
        self.assertClosed(broker)
        self.assertEqual(publisher.session_count, 0)
        # The connection no longer holds it: closing it later is harmless.
        CONNECTIONS.close("c1")

    def test_publish_timeout(self) -> None:
        """No PUBACK within publish_timeout: 503, and the session closes."""
        self.start(publish_timeout=10)
        d = self.publish()
        broker = self.connected()
        self.clock.advance(10)
        self.assertFailsWith(d, 503, Code.BrokerUnavailable)
        self.assertEqual(broker.received()[-1], codec.Disconnect())

    def test_stop(self) -> None:
        """Stopping fails what waits with 503, DISCONNECTs every session and
        fires once all have closed."""
        publisher = self.start()
        d = self.publish(sender("a", connection="c1"))
        a = self.connected()
        a.received()
        stopped = publisher.stopService()
        self.assertFailsWith(d, 503, Code.BrokerUnavailable)
        self.assertNoResult(stopped)
        self.assertClosed(a)
        self.successResultOf(stopped)
        self.assertFailsWith(self.publish(), 503, Code.BrokerUnavailable)


class RefusalTests(PassthroughTestCase):
    MQTT5 = [
        (0x86, 401, Code.Unauthorized),
        (0x8C, 401, Code.Unauthorized),
        (0x87, 401, Code.Unauthorized),
        (0x8A, 403, Code.Forbidden),
        (0x85, 400, Code.InvalidParameter),
        (0x97, 429, Code.RateLimited),
        (0x9F, 429, Code.RateLimited),
        (0x88, 503, Code.BrokerUnavailable),
        (0x89, 503, Code.BrokerUnavailable),
        (0x80, 502, Code.BrokerRejected),
        (0x9C, 502, Code.BrokerRejected),
    ]
    MQTT311 = [
        (2, 400, Code.InvalidParameter),
        (3, 503, Code.BrokerUnavailable),
        (4, 401, Code.Unauthorized),
        (5, 401, Code.Unauthorized),
    ]

    def refused(self, protocol: str, reason_code: int) -> GatewayError:
        d = self.publish(sender(connection="c1"))
        broker = FakeBroker(self.endpoints[0])
        broker.send(codec.Connack(reason_code=reason_code))
        self.assertTrue(broker.transport.disconnecting)
        broker.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.publisher.session_count, 0)
        error: GatewayError = self.failureResultOf(d, GatewayError).value
        return error

    def check(self, protocol: str, cases: list[tuple[int, int, Code]]) -> None:
        self.start(protocol=protocol)
        for reason_code, status, code in cases:
            error = self.refused(protocol, reason_code)
            self.assertEqual(
                (error.status, error.code), (status, code), hex(reason_code)
            )
            headers = dict(error.response_headers())
            if status == 401:
                self.assertEqual(headers, {"WWW-Authenticate": REALM})
            elif status in (429, 503):
                self.assertEqual(headers, {"Retry-After": "1"})
            else:
                self.assertEqual(headers, {})
        # Every refusal was final: one attempt each, no retries.
        self.assertEqual(self.attempts(), len(cases))

    def test_mqtt5_connack(self) -> None:
        """MQTT 5 CONNACK reason codes map to HTTP statuses."""
        self.check("5", self.MQTT5)

    def test_mqtt311_connack(self) -> None:
        """MQTT 3.1.1 CONNACK return codes map to HTTP statuses."""
        self.check("3.1.1", self.MQTT311)

    def test_311_refusal_after_fallback(self) -> None:
        """A broker that closes on MQTT 5 and refuses the 3.1.1 CONNECT with
        return code 4: 401 (read as a 3.1.1 code), and later sessions go straight
        to 3.1.1."""
        self.start()
        d = self.publish()
        FakeBroker(self.endpoints[0]).drop()
        broker = FakeBroker(self.endpoints[0])
        self.assertEqual(broker.connect.protocol_level, 4)
        broker.send(codec.Connack(reason_code=4))
        self.assertFailsWith(d, 401, Code.Unauthorized)
        self.publish(sender("other"))
        self.assertEqual(FakeBroker(self.endpoints[0]).connect.protocol_level, 4)

    def test_puback_not_authorized(self) -> None:
        """PUBACK 0x87 is 403; the keep-alive session stays for the next request."""
        self.start()
        d = self.publish(sender(connection="c1"))
        broker = self.connected()
        broker.received()
        broker.send(codec.PubAck(1, reason_code=0x87))
        self.assertFailsWith(d, 403, Code.Forbidden)
        self.assertFalse(broker.transport.disconnecting)
        self.publish(sender(connection="c1"))
        self.assertEqual(len(broker.received()), 1)

    def test_puback_codes(self) -> None:
        """PUBACK/PUBREC reason codes map as in gateway mode."""
        self.start()
        one = self.publish(sender(connection="c1"))
        two = self.publish(sender(connection="c1"), qos=2)
        broker = self.connected()
        broker.received()
        broker.send(codec.PubAck(1, reason_code=0x97), codec.PubRec(2, 0x90))
        self.assertFailsWith(one, 429, Code.RateLimited)
        self.assertFailsWith(two, 400, Code.InvalidTopic)

    def test_mqtt5_properties_on_311(self) -> None:
        """MQTT 5 properties to a 3.1.1 broker: 400 UnsupportedProperty."""
        self.start(protocol="3.1.1")
        d = self.publish(content_type="text/plain")
        self.connected()
        self.assertFailsWith(d, 400, Code.UnsupportedProperty)

    def test_connection_lost(self) -> None:
        """A lost connection fails what is in flight with 503 and ends the
        session; the next request opens a new one."""
        publisher = self.start()
        d = self.publish(sender(connection="c1"))
        broker = self.connected()
        broker.received()
        broker.drop()
        self.assertFailsWith(d, 503, Code.BrokerUnavailable)
        self.assertEqual(publisher.session_count, 0)
        self.publish(sender(connection="c1"))
        self.assertEqual(self.attempts(), 2)


class BrokerChoiceTests(PassthroughTestCase):
    def test_unreachable(self) -> None:
        """No broker reachable: 503 with Retry-After, connected is False; the
        next message that gets through makes it True again."""
        publisher = self.start()
        self.assertTrue(publisher.connected)
        d = self.publish()
        self.endpoints[0].attempts[0][1].errback(ConnectionRefusedError())
        error = self.assertFailsWith(d, 503, Code.BrokerUnavailable)
        self.assertEqual(error.response_headers(), [("Retry-After", "1")])
        self.assertFalse(publisher.connected)
        self.assertEqual(publisher.session_count, 0)
        d = self.publish()
        broker = self.connected()
        self.assertFalse(publisher.connected)
        broker.send(codec.PubAck(1))
        self.successResultOf(d)
        self.assertTrue(publisher.connected)

    def test_refusal_is_reachable(self) -> None:
        """A broker that refuses the sender still counts as reachable."""
        publisher = self.start()
        publisher.connected = False
        self.publish()
        FakeBroker(self.endpoints[0]).send(codec.Connack(reason_code=0x86))
        self.assertTrue(publisher.connected)

    def test_next_broker(self) -> None:
        """An unreachable broker passes the session on to the next one; later
        sessions start at the broker that took a message."""
        self.start(brokers=2)
        d = self.publish()
        self.endpoints[0].attempts[0][1].errback(ConnectionRefusedError())
        broker = self.connected(1)
        broker.received()
        broker.send(codec.PubAck(1))
        self.successResultOf(d)
        self.publish(sender("other"))
        self.assertEqual((self.attempts(0), self.attempts(1)), (1, 2))

    def test_refusal_does_not_fail_over(self) -> None:
        """A broker that refuses the credentials decides: no other is asked."""
        self.start(brokers=2)
        d = self.publish()
        FakeBroker(self.endpoints[0]).send(codec.Connack(reason_code=0x86))
        self.assertFailsWith(d, 401, Code.Unauthorized)
        self.assertEqual(self.attempts(1), 0)

    def test_unavailable_fails_over(self) -> None:
        """A broker that says it is unavailable passes the session on."""
        self.start(brokers=2)
        d = self.publish()
        FakeBroker(self.endpoints[0]).send(codec.Connack(reason_code=0x88))
        self.connected(1).send(codec.PubAck(1))
        self.successResultOf(d)


class ProbeTests(PassthroughTestCase):
    def answer(self, index: int, attempt: int = -1) -> StringTransport:
        factory, d = self.endpoints[index].attempts[attempt]
        protocol = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        d.callback(protocol)
        return transport

    def refuse(self, index: int, attempt: int = -1) -> None:
        self.endpoints[index].attempts[attempt][1].errback(ConnectionRefusedError())

    def test_start_probe(self) -> None:
        """On start a bare TCP connection checks the brokers in order; one that
        accepts makes the publisher ready, and the probe connection is closed."""
        publisher = self.start(brokers=2, probe_interval=5)
        self.refuse(0)
        transport = self.answer(1)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(publisher.connected)
        self.clock.advance(60)
        self.assertEqual((self.attempts(0), self.attempts(1)), (1, 1))

    def test_probes_until_reachable(self) -> None:
        """While no broker is reachable the probe asks every probe_interval
        seconds (a silent broker counts as unreachable after the interval)."""
        publisher = self.start(probe_interval=5)
        self.clock.advance(5)
        self.assertFalse(publisher.connected)
        self.assertEqual(self.attempts(), 1)
        self.clock.advance(5)
        self.assertEqual(self.attempts(), 2)
        self.refuse(0)
        self.clock.advance(5)
        self.answer(0)
        self.assertTrue(publisher.connected)

    def test_unreachable_sender_starts_probe(self) -> None:
        """A sender that found no broker makes the publisher not ready and starts
        probing; a lost connection makes it probe once."""
        publisher = self.start(probe_interval=5)
        self.answer(0)
        d = self.publish(sender(connection="c1"))
        self.refuse(0)
        self.assertFailsWith(d, 503, Code.BrokerUnavailable)
        self.assertFalse(publisher.connected)
        self.assertEqual(self.attempts(), 3)
        self.answer(0)
        self.assertTrue(publisher.connected)
        self.publish(sender(connection="c1"))
        self.connected().drop()
        self.assertEqual(self.attempts(), 5)
        self.refuse(0)
        self.assertFalse(publisher.connected)

    def test_stop_probe(self) -> None:
        """Stopping the publisher stops the probe."""
        publisher = self.start(probe_interval=5)
        publisher.stopService()
        self.clock.advance(60)
        self.assertEqual(self.attempts(), 1)
