"""
The gateway's broker session, driven deterministically: a fake
broker answers over StringTransports and a Clock stands in for time.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.python.failure import Failure

from gateway.errors import Code, GatewayError
from gateway.model import Message
from gateway.mqtt import codec
from tests.fakes import ME, FakeBroker, SessionTestCase

SENDER = (("http-client-id", "dev-1"), ("http-username", "alice"))


class HandshakeTests(SessionTestCase):
    def test_connect_packet(self) -> None:
        """The first CONNECT is MQTT 5 with a clean start and a session expiry."""
        self.start()
        broker = FakeBroker(self.endpoints[0])
        self.assertEqual(
            broker.connect,
            codec.Connect(
                client_id="gw",
                protocol_level=5,
                clean_start=True,
                keepalive=10,
                properties=codec.Properties(session_expiry_interval=300),
            ),
        )

    def test_publish_waits_for_connack(self) -> None:
        """A message sent before the session is up goes out after CONNACK."""
        session = self.start()
        d = self.publish()
        broker = FakeBroker(self.endpoints[0])
        self.assertEqual(broker.received(), [])
        self.assertNoResult(d)
        broker.accept()
        self.assertTrue(session.connected)
        [packet] = broker.received()
        self.assertEqual(
            packet,
            codec.Publish(
                "t",
                b"p",
                qos=1,
                packet_id=1,
                properties=codec.Properties(user_properties=SENDER),
            ),
        )

    def test_fallback_when_closed(self) -> None:
        """A broker that closes the connection on an MQTT 5 CONNECT is asked again
        at once in MQTT 3.1.1 (first with a clean session, then with one it
        keeps); MQTT 5 properties are then refused, not dropped."""
        session = self.start()
        FakeBroker(self.endpoints[0]).drop()
        wipe = FakeBroker(self.endpoints[0])
        self.assertEqual(
            (wipe.connect.protocol_level, wipe.connect.clean_start), (4, True)
        )
        wipe.accept()
        self.assertEqual(wipe.received(), [codec.Disconnect()])
        wipe.drop()
        broker = FakeBroker(self.endpoints[0])
        self.assertEqual(
            (broker.connect.protocol_level, broker.connect.clean_start), (4, False)
        )
        broker.accept()
        self.assertEqual(session.protocol_level, 4)
        plain = self.publish()
        fancy = self.publish(content_type="text/plain")
        [packet] = broker.received()
        self.assertEqual(packet, codec.Publish("t", b"p", qos=1, packet_id=1))
        self.assertFailsWith(fancy, 400, Code.UnsupportedProperty)
        broker.send(codec.PubAck(1))
        self.assertEqual(self.successResultOf(plain).reason_code, 0)

    def test_silent_broker_found_by_probe(self) -> None:
        """A broker silent to an MQTT 5 CONNECT (amqtt) but answering a 3.1.1 probe
        within half a second is used in 3.1.1 at once, and remembered."""
        session = self.start()
        silent = FakeBroker(self.endpoints[0])
        self.clock.advance(0.5)
        probe = FakeBroker(self.endpoints[0])
        self.assertEqual(
            (probe.connect.protocol_level, probe.connect.client_id), (4, "gw-probe")
        )
        probe.accept()
        self.assertEqual(probe.received(), [codec.Disconnect()])
        self.assertTrue(silent.transport.disconnecting)
        wipe = FakeBroker(self.endpoints[0])
        wipe.accept()
        wipe.drop()
        broker = FakeBroker(self.endpoints[0])
        broker.accept()
        self.assertEqual(session.protocol_level, 4)
        self.assertEqual(self.clock.seconds(), 0.5)
        # A later reconnect goes straight to 3.1.1.
        broker.drop()
        self.clock.advance(1)
        self.assertEqual(FakeBroker(self.endpoints[0]).connect.protocol_level, 4)

    def test_stalled_broker_keeps_mqtt5(self) -> None:
        """A broker silent to MQTT 5 and to the 3.1.1 probe is stalled, not a 3.1.1
        broker: the attempt fails and the next one asks in MQTT 5 again."""
        self.start()
        first = FakeBroker(self.endpoints[0])
        self.clock.advance(0.5)
        probe = FakeBroker(self.endpoints[0])
        self.clock.advance(4.5)
        self.assertTrue(first.transport.disconnecting)
        self.assertTrue(probe.transport.disconnecting)
        self.assertEqual(len(self.endpoints[0].attempts), 2)
        self.clock.advance(2)
        self.assertEqual(FakeBroker(self.endpoints[1]).connect.protocol_level, 5)

    def test_tls_failure_is_no_fallback(self) -> None:
        """A TLS failure before CONNACK is reported as such and does not make the
        session fall back to 3.1.1."""
        from OpenSSL import SSL

        self.start()
        broker = FakeBroker(self.endpoints[0])
        broker.transport.loseConnection()
        broker.protocol.connectionLost(
            Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))
        )
        self.assertEqual(len(self.endpoints[0].attempts), 1)
        self.clock.advance(2)
        self.assertEqual(FakeBroker(self.endpoints[1]).connect.protocol_level, 5)

    def test_fallback_on_311_connack(self) -> None:
        """A 3.1.1 broker's refusal (return code 1) leads to a 3.1.1 CONNECT."""
        self.start()
        first = FakeBroker(self.endpoints[0])
        first.protocol.dataReceived(b"\x20\x02\x00\x01")
        self.assertEqual(FakeBroker(self.endpoints[0]).connect.protocol_level, 4)

    def test_no_fallback_when_fixed(self) -> None:
        """With protocol = "5" a refusal is a failed attempt, not a fallback."""
        self.start(protocol="5")
        FakeBroker(self.endpoints[0]).drop()
        self.assertEqual(len(self.endpoints[0].attempts), 1)
        self.assertEqual(len(self.endpoints[1].attempts), 0)
        self.clock.advance(2)
        self.assertEqual(len(self.endpoints[1].attempts), 1)

    def test_refused_credentials(self) -> None:
        """CONNACK 0x86 is a failed attempt: back off, try the next broker."""
        self.start(protocol="5")
        refused = FakeBroker(self.endpoints[0])
        refused.send(codec.Connack(reason_code=0x86))
        self.assertTrue(refused.transport.disconnecting)
        self.clock.advance(2)
        self.assertEqual(len(self.endpoints[1].attempts), 1)


class DeliveryTests(SessionTestCase):
    def test_qos1(self) -> None:
        """QoS 1 answers only after PUBACK; 0x10 (no subscribers) is success."""
        self.start()
        broker = self.connected()
        d = self.publish()
        broker.received()
        self.assertNoResult(d)
        broker.send(codec.PubAck(1, reason_code=0x10))
        result = self.successResultOf(d)
        self.assertEqual(result.reason_code, 0x10)
        self.assertRegex(result.message_id, "^[0-9A-F]{32}$")

    def test_qos2(self) -> None:
        """QoS 2 answers after PUBREC, PUBREL, PUBCOMP."""
        self.start()
        broker = self.connected()
        d = self.publish(qos=2)
        [publish] = broker.received()
        assert isinstance(publish, codec.Publish)
        self.assertEqual(publish.qos, 2)
        broker.send(codec.PubRec(1))
        self.assertEqual(broker.received(), [codec.PubRel(1)])
        self.assertNoResult(d)
        broker.send(codec.PubComp(1))
        self.successResultOf(d)

    def test_qos0(self) -> None:
        """QoS 0 answers once the broker has read it: the PINGREQ written after it
        is answered."""
        self.start()
        d = self.publish(qos=0)
        self.assertNoResult(d)
        broker = self.connected()
        packet, ping = broker.received()
        assert isinstance(packet, codec.Publish)
        self.assertEqual((packet.qos, packet.packet_id), (0, None))
        self.assertEqual(ping, codec.PingReq())
        self.assertNoResult(d)
        broker.send(codec.PingResp())
        self.successResultOf(d)

    def test_reason_codes(self) -> None:
        """Broker refusals map to HTTP statuses ."""
        self.start()
        broker = self.connected()
        cases = [
            (0x87, 403, Code.Forbidden),
            (0x90, 400, Code.InvalidTopic),
            (0x99, 400, Code.InvalidParameter),
            (0x95, 413, Code.PayloadTooLarge),
            (0x97, 429, Code.RateLimited),
            (0x80, 502, Code.BrokerRejected),
        ]
        for packet_id, (reason, status, code) in enumerate(cases, 1):
            d = self.publish()
            broker.send(codec.PubAck(packet_id, reason_code=reason))
            self.assertFailsWith(d, status, code)

    def test_qos2_refused_at_pubrec(self) -> None:
        """A PUBREC failure code ends a QoS 2 message: no PUBREL."""
        self.start()
        broker = self.connected()
        d = self.publish(qos=2)
        broker.received()
        broker.send(codec.PubRec(1, reason_code=0x87))
        self.assertFailsWith(d, 403, Code.Forbidden)
        self.assertEqual(broker.received(), [])

    def test_timeout(self) -> None:
        """No acknowledgement within publish_timeout: 503 with Retry-After."""
        self.start(publish_timeout=10)
        self.connected()
        d = self.publish()
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        error = self.assertFailsWith(d, 503, Code.BrokerUnavailable)
        self.assertEqual(error.response_headers(), [("Retry-After", "1")])

    def test_late_ack_after_timeout(self) -> None:
        """A PUBACK after the timeout frees the window and raises nothing."""
        session = self.start(publish_timeout=1)
        broker = self.connected()
        d = self.publish()
        self.clock.advance(1)
        self.failureResultOf(d, GatewayError)
        self.assertEqual(session.inflight_count, 1)
        broker.send(codec.PubAck(1))
        self.assertEqual(session.inflight_count, 0)


class LimitTests(SessionTestCase):
    def test_receive_maximum(self) -> None:
        """No more than Receive Maximum messages in flight; the rest queue."""
        session = self.start()
        broker = self.connected(receive_maximum=2)
        ds = [self.publish() for _ in range(3)]
        self.assertEqual(len(broker.received()), 2)
        self.assertEqual((session.inflight_count, session.queued_count), (2, 1))
        broker.send(codec.PubAck(1))
        self.successResultOf(ds[0])
        [third] = broker.received()
        assert isinstance(third, codec.Publish)
        self.assertEqual(third.packet_id, 3)

    def test_queue_bound(self) -> None:
        """Beyond the queue bound a message is refused at once with 503."""
        session = self.start(max_queue=2)
        waiting = [self.publish(), self.publish()]
        self.assertFailsWith(self.publish(), 503, Code.BrokerUnavailable)
        session.stopService()
        for d in waiting:
            self.assertFailsWith(d, 503, Code.BrokerUnavailable)

    def test_broker_limits(self) -> None:
        """Maximum QoS, Retain Available and Maximum Packet Size are honoured."""
        self.start()
        broker = self.connected(
            maximum_qos=1, retain_available=0, maximum_packet_size=64
        )
        self.assertFailsWith(self.publish(qos=2), 400, Code.InvalidQoS)
        self.assertFailsWith(self.publish(retain=True), 400, Code.InvalidRetained)
        big = self.publisher.publish(Message("t", b"x" * 100), ME)
        self.assertFailsWith(big, 413, Code.PayloadTooLarge)
        self.assertEqual(broker.received(), [])

    def test_packet_ids_skip_inflight(self) -> None:
        """Packet ids wrap at 65535 and never reuse one still in flight."""
        session = self.start()
        broker = self.connected()
        session.window._next_packet_id = 65535
        self.publish()
        self.publish()
        ids = [p.packet_id for p in broker.received()]  # type: ignore[union-attr]
        self.assertEqual(ids, [65535, 1])


class ReconnectTests(SessionTestCase):
    def test_retransmit_with_dup(self) -> None:
        """After a reconnect to a kept session, unacknowledged QoS 1 messages are
        sent again with DUP, a released QoS 2 message gets its PUBREL again; new
        messages follow once the resent ones are confirmed."""
        session = self.start()
        broker = self.connected()
        one = self.publish()
        two = self.publish(qos=2)
        broker.received()
        broker.send(codec.PubRec(2))
        broker.drop()
        self.assertFalse(session.connected)
        # Requests arriving now wait for the reconnect rather than fail.
        three = self.publish()
        self.assertNoResult(three)
        self.clock.advance(1)
        again = FakeBroker(self.endpoints[0])
        self.assertFalse(again.connect.clean_start)
        again.accept(session_present=True)
        self.assertEqual(
            again.received(),
            [
                codec.PubRel(2),
                codec.Publish(
                    "t",
                    b"p",
                    qos=1,
                    dup=True,
                    packet_id=1,
                    properties=codec.Properties(user_properties=SENDER),
                ),
            ],
        )
        again.send(codec.PubAck(1), codec.PubComp(2))
        [packet] = again.received()
        assert isinstance(packet, codec.Publish)
        self.assertEqual((packet.packet_id, packet.dup), (3, False))
        again.send(codec.PubAck(3))
        for d in (one, two, three):
            self.successResultOf(d)

    def test_new_session_resends_as_new(self) -> None:
        """When the broker lost the session, an unacknowledged QoS 1 message goes
        out again as a new message (no DUP); QoS 2 messages, before or after
        PUBREC, fail with 503: the broker may or may not have delivered them, and
        a 200 must mean delivered exactly once."""
        self.start()
        broker = self.connected()
        one = self.publish()
        two = self.publish(qos=2)
        three = self.publish(qos=2)
        broker.received()
        broker.send(codec.PubRec(2))
        broker.drop()
        self.clock.advance(1)
        again = self.connected(session_present=False)
        for d in (two, three):
            error = self.assertFailsWith(d, 503, Code.BrokerUnavailable)
            self.assertIn("lost the session", error.message)
        # Their ids are released (a broker may keep them all the same) before
        # any later message can use them.
        rel2, rel3, packet = again.received()
        assert isinstance(packet, codec.Publish)
        self.assertEqual((packet.packet_id, packet.dup), (1, False))
        self.assertEqual((rel2, rel3), (codec.PubRel(2), codec.PubRel(3)))
        again.send(codec.PubAck(1))
        self.successResultOf(one)
        self.assertEqual(self.publisher.session.inflight_count, 2)
        again.send(codec.PubComp(2), codec.PubComp(3))
        self.assertEqual(self.publisher.session.inflight_count, 0)

    def test_unreachable(self) -> None:
        """When a connection attempt fails, waiting requests get 503 with the time
        to the next attempt, new ones are refused at once, and the next attempt
        goes to the next broker with a longer back-off."""
        self.start(protocol="5")
        waiting = self.publish()
        self.endpoints[0].attempts[0][1].errback(ConnectionRefusedError())
        error = self.assertFailsWith(waiting, 503, Code.BrokerUnavailable)
        self.assertEqual(error.retry_after, 2)
        self.assertFailsWith(self.publish(), 503, Code.BrokerUnavailable)
        self.clock.advance(2)
        self.endpoints[1].attempts[0][1].errback(ConnectionRefusedError())
        self.clock.advance(3.9)
        self.assertEqual(len(self.endpoints[0].attempts), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.endpoints[0].attempts), 2)
        self.connected(0)
        d = self.publish()
        self.assertNoResult(d)

    def test_stop(self) -> None:
        """Stopping fails what waits with 503 and DISCONNECTs cleanly."""
        session = self.start()
        broker = self.connected()
        d = self.publish()
        broker.received()
        stopped = session.stopService()
        self.assertFailsWith(d, 503, Code.BrokerUnavailable)
        self.assertEqual(broker.received(), [codec.Disconnect()])
        self.assertTrue(broker.transport.disconnecting)
        self.assertNoResult(stopped)
        broker.protocol.connectionLost(Failure(ConnectionLost()))
        self.successResultOf(stopped)


class KeepAliveTests(SessionTestCase):
    def test_ping(self) -> None:
        """An idle session sends PINGREQ; a broker silent after it is dropped."""
        self.start()
        broker = self.connected()
        self.clock.advance(5)
        self.assertEqual(broker.received(), [codec.PingReq()])
        broker.send(codec.PingResp())
        self.clock.advance(5)
        self.assertEqual(broker.received(), [codec.PingReq()])
        self.clock.advance(5)
        self.assertFalse(broker.transport.disconnecting)
        self.clock.advance(5)
        self.assertTrue(broker.transport.disconnecting)


class ClosingConnectionTests(SessionTestCase):
    def test_nothing_answered_while_closing(self) -> None:
        """Once the connection is closing, a QoS 0 message is not answered 200
        (nothing was written): it waits for the next session."""
        session = self.start()
        broker = self.connected()
        broker.protocol.disconnect()
        broker.received()
        self.assertFalse(session.connected)
        d = self.publish(qos=0)
        self.assertNoResult(d)
        self.assertEqual(broker.received(), [])

    def test_stuck_broker_cut_off(self) -> None:
        """A broker that does not let a DISCONNECTed connection close is cut off
        after a grace period, so shutdown cannot hang on it."""
        self.start()
        broker = self.connected()
        aborted: list[bool] = []
        broker.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        broker.protocol.disconnect()
        self.clock.advance(5)
        self.assertEqual(aborted, [True])

    def test_resume_at_another_level(self) -> None:
        """A reconnect that falls back to MQTT 3.1.1 resends unacknowledged
        messages in 3.1.1 form (no user properties); one carrying the sender's own
        MQTT 5 properties fails with UnsupportedProperty."""
        self.start()
        broker = self.connected()
        plain = self.publish()
        fancy = self.publish(content_type="text/plain")
        broker.received()
        broker.drop()
        self.clock.advance(1)
        FakeBroker(self.endpoints[0]).drop()  # MQTT 5 refused: fall back
        again = FakeBroker(self.endpoints[0])
        self.assertEqual(again.connect.protocol_level, 4)
        again.accept(session_present=True)
        self.assertEqual(
            again.received(), [codec.Publish("t", b"p", qos=1, dup=True, packet_id=1)]
        )
        self.assertFailsWith(fancy, 400, Code.UnsupportedProperty)
        again.send(codec.PubAck(1))
        self.successResultOf(plain)
