"""
What a 200 promises when the broker misbehaves: no packet wedges the session, QoS 0
is answered only once the broker read it, QoS granted below what was asked is never
hidden. Driven deterministically by the fake broker of L{tests.fakes}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from gateway.errors import Code
from gateway.model import PublishResult
from gateway.mqtt import codec
from tests.fakes import FakeBroker, SessionTestCase


def publishes(broker: FakeBroker) -> list[codec.Publish]:
    """The PUBLISH packets the broker received since last asked (nothing else)."""
    packets = broker.received()
    assert all(isinstance(p, codec.Publish) for p in packets), packets
    return packets  # type: ignore[return-value]


class WedgeTests(SessionTestCase):
    """A packet the broker closes the connection on fails alone and is never
    sent again; every other request keeps being served."""

    def reconnect(self, **accept: Any) -> FakeBroker:
        self.clock.advance(2)
        broker = FakeBroker(self.endpoints[0])
        broker.accept(session_present=True, **accept)
        return broker

    def test_poison_among_many(self) -> None:
        """Of four QoS 1 messages on the wire when the broker cut the connection,
        the one it cuts on again is found by sending them again in halves, fails
        with 502, and is never sent again; the other three are delivered, and so
        is a request made meanwhile."""
        self.start(protocol="5", max_queue_delay=30)
        broker = self.connected()
        sent = [self.publish() for _ in range(4)]
        self.assertEqual(len(broker.received()), 4)
        broker.drop()  # on message 3
        meanwhile = self.publish()
        broker = self.reconnect()
        self.assertEqual(
            [p.packet_id for p in publishes(broker)],
            [1, 2],
        )
        broker.send(codec.PubAck(1), codec.PubAck(2))
        self.assertEqual(
            [p.packet_id for p in publishes(broker)],
            [3, 4],
        )
        broker.drop()
        broker = self.reconnect()
        [again] = publishes(broker)
        self.assertEqual(again.packet_id, 3)
        broker.drop()
        error = self.assertFailsWith(sent[2], 502, Code.BrokerRejected)
        self.assertIn("closed the connection on this message", error.message)
        broker = self.reconnect()
        [four] = publishes(broker)
        self.assertEqual((four.packet_id, four.dup), (4, True))
        broker.send(codec.PubAck(4))
        [new] = publishes(broker)
        self.assertEqual(new.packet_id, 5)
        broker.send(codec.PubAck(5))
        for d in (*sent[:2], sent[3], meanwhile):
            self.successResultOf(d)
        # Later requests flow at once.
        later = self.publish()
        [packet] = publishes(broker)
        broker.send(codec.PubAck(packet.packet_id or 0))
        self.successResultOf(later)

    def test_lone_poison_needs_two_cuts(self) -> None:
        """A message alone on the wire at one cut is sent again (the cut may have
        been the network's); at a second cut it is the culprit."""
        self.start(protocol="5")
        broker = self.connected()
        d = self.publish()
        broker.received()
        broker.drop()
        broker = self.reconnect()
        self.assertEqual(len(broker.received()), 1)
        self.assertNoResult(d)
        broker.drop()
        self.assertFailsWith(d, 502, Code.BrokerRejected)

    def test_silent_wedge_found(self) -> None:
        """A broker that stops acknowledging on a connection it keeps open (as
        RabbitMQ does after a PUBLISH over its max_message_size) is cut after
        1.5 publish timeouts of silence. The messages are sent again one at a
        time though their requests timed out, so that the one the broker stays
        silent on again (2 s at most) is found and never sent again."""
        self.start(protocol="5", publish_timeout=4, max_queue_delay=60)
        broker = self.connected()
        taken = self.publish()
        broker.received()
        broker.send(codec.PubAck(1))
        self.successResultOf(taken)
        good, bad = self.publish(), self.publish(payload=b"too big")
        self.assertEqual(len(broker.received()), 2)
        self.clock.advance(5.9)
        self.assertFalse(broker.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(broker.transport.disconnecting)
        broker.drop()
        self.assertFailsWith(good, 503, Code.BrokerUnavailable)  # timed out at 4 s
        self.assertFailsWith(bad, 503, Code.BrokerUnavailable)
        broker = self.reconnect()
        [first] = publishes(broker)
        broker.send(codec.PubAck(first.packet_id or 0))
        [second] = publishes(broker)
        self.assertEqual(second.payload, b"too big")
        self.clock.advance(2)
        self.assertTrue(broker.transport.disconnecting)
        broker.drop()
        broker = self.reconnect()
        self.assertEqual(broker.received(), [])  # neither is sent again
        later = self.publish()
        [packet] = publishes(broker)
        broker.send(codec.PubAck(packet.packet_id or 0))
        self.successResultOf(later)

    def test_disconnect_reason_names_the_fault(self) -> None:
        """An MQTT 5 DISCONNECT reason before the close says what was wrong:
        0x95 (packet too large) is 413."""
        self.start(protocol="5")
        broker = self.connected()
        d = self.publish()
        broker.received()
        broker.drop()
        broker = self.reconnect()
        broker.received()
        broker.send(codec.Disconnect(reason_code=0x95))
        broker.drop()
        self.assertFailsWith(d, 413, Code.PayloadTooLarge)

    def test_oversize_on_311_learned(self) -> None:
        """MQTT 3.1.1 cannot announce a packet size limit. A message larger than
        any the broker took, that it closes the connection on, fails alone
        (502: it may be its size, or its content); when a second one does, the
        limit is taken as learned (413), and messages as large are refused at
        once from then on while smaller ones flow."""
        self.start(protocol="3.1.1")
        broker = self.connected_311()
        small = self.publish()
        broker.received()
        broker.send(codec.PubAck(1))
        self.successResultOf(small)
        for size, status, code in (
            (6000, 502, Code.BrokerRejected),
            (5000, 413, Code.PayloadTooLarge),
        ):
            big = self.publisher.publish(
                self.message(payload=b"x" * size), self.identity()
            )
            broker.received()
            broker.drop()
            broker = self.reconnect()
            broker.received()
            broker.drop()
            error = self.assertFailsWith(big, status, code)
            self.assertIn("larger than any it has taken", error.message)
            broker = self.reconnect()
        for size in (5000, 9000):
            again = self.publisher.publish(
                self.message(payload=b"x" * size), self.identity()
            )
            self.assertFailsWith(again, 413, Code.PayloadTooLarge)
        self.assertEqual(broker.received(), [])
        ok = self.publish(payload=b"x" * 4000)
        [packet] = publishes(broker)
        broker.send(codec.PubAck(packet.packet_id or 0))
        self.successResultOf(ok)

    def test_qos0_not_200_when_it_cost_the_session(self) -> None:
        """A QoS 0 message the connection was lost after (before the broker
        confirmed reading it) is never 200: alone, it is the culprit (502);
        with others, each gets 503. None is sent again."""
        self.start(protocol="5")
        broker = self.connected()
        alone = self.publish(qos=0)
        broker.received()
        broker.drop()
        self.assertFailsWith(alone, 502, Code.BrokerRejected)
        broker = self.reconnect()
        first, second = self.publish(qos=0), self.publish(qos=0)
        # One PINGREQ at a time: the second message waits for the next one.
        self.assertEqual(
            [type(p) for p in broker.received()],
            [codec.Publish, codec.PingReq, codec.Publish],
        )
        broker.drop()
        for d in (first, second):
            self.assertFailsWith(d, 503, Code.BrokerUnavailable)
        broker = self.reconnect()
        self.assertEqual(broker.received(), [])

    def test_abandoned_qos1_not_resent(self) -> None:
        """A QoS 1 message whose request timed out (503) is not sent again after
        a reconnect once three publish timeouts have passed since it was sent:
        nobody waits for it any more."""
        self.start(protocol="5", publish_timeout=1)
        broker = self.connected()
        d = self.publish()
        broker.received()
        self.clock.advance(1)
        self.assertFailsWith(d, 503, Code.BrokerUnavailable)
        broker.send(codec.PingResp())  # the link lives; the broker is slow
        self.clock.advance(0.4)
        broker.drop()
        self.clock.advance(2)
        broker = FakeBroker(self.endpoints[0])
        broker.accept(session_present=True)
        self.assertEqual(broker.received(), [])


class GrantedQoSTests(SessionTestCase):
    def test_puback_to_qos2(self) -> None:
        """A broker answering a QoS 2 PUBLISH with PUBACK (RabbitMQ) offers QoS 1
        at most: that request is 400 InvalidQoS (exactly once was not promised),
        later QoS 2 requests are refused before sending, QoS 1 still flows."""
        self.start(protocol="3.1.1")
        broker = self.connected_311()
        d = self.publish(qos=2)
        broker.received()
        broker.send(codec.PubAck(1))
        error = self.assertFailsWith(d, 400, Code.InvalidQoS)
        self.assertEqual(error.parameter, "qos")
        self.assertFailsWith(self.publish(qos=2), 400, Code.InvalidQoS)
        self.assertEqual(broker.received(), [])
        ok = self.publish(qos=1)
        [packet] = publishes(broker)
        broker.send(codec.PubAck(packet.packet_id or 0))
        self.successResultOf(ok)


class StringSafetyNetTests(SessionTestCase):
    def test_unsendable_string_never_written(self) -> None:
        """A message whose strings a strict broker would disconnect on (here a
        sender id with a control character, which no adapter let through) fails
        with 400 and nothing is written."""
        from gateway.model import Identity

        self.start(protocol="5")
        broker = self.connected()
        d: Deferred[PublishResult] = self.publisher.publish(
            self.message(), Identity(client_id="dev\x01")
        )
        self.assertFailsWith(d, 400, Code.InvalidParameter)
        self.assertEqual(broker.received(), [])
        ok = self.publish()
        self.assertEqual(len(broker.received()), 1)
        self.assertNoResult(ok)
