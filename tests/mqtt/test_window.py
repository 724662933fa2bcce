"""
The in-flight window alone, without a reactor or a connection: time is a number
passed in, what to write comes back as bytes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from gateway.model import Message
from gateway.mqtt import codec
from gateway.mqtt.outcomes import Outcome, PublishFailed
from gateway.mqtt.pending import BrokerLimits, Learned, Pending
from gateway.mqtt.window import Window


def decode(chunks: list[bytes], level: int = codec.MQTT_5) -> list[codec.Packet]:
    return codec.Decoder(level).feed(b"".join(chunks))


class WindowTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.said: list[str] = []
        self.window = Window(
            publish_timeout=10,
            max_queue=100,
            max_queue_bytes=10_000,
            max_queue_delay=2,
            max_inflight=1000,
            say=lambda format, **kw: self.said.append(format.format(**kw)),
        )

    def pending(self, qos: int = 1, **kw: Any) -> Pending:
        kw.setdefault("payload", b"p")
        return Pending(Message("t", qos=qos, **kw), (), "ID", Deferred())

    def up(self, now: float = 0, resumed: bool = False, **limits: Any) -> list[bytes]:
        return self.window.connected(
            codec.MQTT_5, BrokerLimits(**limits), Learned(), resumed, now
        )

    def failure(self, pending: Pending) -> PublishFailed:
        error = self.failureResultOf(pending.deferred, PublishFailed).value
        assert isinstance(error, PublishFailed)
        return error


class QueueAndWindowTests(WindowTestCase):
    def test_waits_for_a_session(self) -> None:
        """Offered while down, a message is sent once the session is up."""
        p = self.pending()
        self.assertEqual(self.window.offer(p, 0), [])
        self.assertEqual(self.window.queued, 1)
        [packet] = decode(self.up(1))
        assert isinstance(packet, codec.Publish)
        self.assertEqual((packet.packet_id, packet.qos), (1, 1))
        self.window.puback(codec.PubAck(1), 1)
        self.assertEqual(self.successResultOf(p.deferred).reason_code, 0)

    def test_receive_maximum(self) -> None:
        """No more than Receive Maximum in flight; an ack lets the next go."""
        self.up(receive_maximum=2)
        out = [self.window.offer(self.pending(), 0) for _ in range(3)]
        self.assertEqual([len(o) for o in out], [1, 1, 0])
        [third] = decode(self.window.puback(codec.PubAck(1), 0))
        self.assertEqual(third.packet_id, 3)  # type: ignore[union-attr]

    def test_timeout_and_deadline(self) -> None:
        """next_deadline is the earliest waiting request's; expire fails it with
        TIMEOUT at the publish timeout, not before."""
        self.up()
        p = self.pending()
        self.window.offer(p, 5)
        self.assertEqual(self.window.next_deadline(), 15)
        self.window.expire(14.9)
        self.assertNoResult(p.deferred)
        self.window.expire(15)
        self.assertEqual(self.failure(p).outcome, Outcome.TIMEOUT)
        self.assertIsNone(self.window.next_deadline())

    def test_refusal_when_backlogged(self) -> None:
        """A queue that has not moved for max_queue_delay refuses at once."""
        self.up(receive_maximum=1)
        self.window.offer(self.pending(), 0)
        self.window.offer(self.pending(), 0)
        self.assertIsNone(self.window.refusal(Message("t", b""), 0.1))
        self.assertIsNotNone(self.window.refusal(Message("t", b""), 3))

    def test_limits(self) -> None:
        """Above Maximum QoS or retained without Retain Available: refused with
        the outcome that says which, before anything is written."""
        self.up(maximum_qos=1, retain_available=False)
        q2, kept = self.pending(qos=2), self.pending(retain=True)
        self.assertEqual(self.window.offer(q2, 0), [])
        self.assertEqual(self.window.offer(kept, 0), [])
        self.assertEqual(self.failure(q2).outcome, Outcome.QOS_LIMIT)
        self.assertEqual(self.failure(kept).outcome, Outcome.RETAIN_LIMIT)


class QoS0Tests(WindowTestCase):
    def test_barrier(self) -> None:
        """QoS 0 needs a PINGREQ after it and succeeds on its answer; a second
        message sent meanwhile waits for the next PINGREQ."""
        self.up()
        first, second = self.pending(qos=0), self.pending(qos=0)
        self.window.offer(first, 0)
        self.assertTrue(self.window.barrier_needed)
        covered = self.window.barrier_sent()
        self.window.offer(second, 0)
        self.assertFalse(self.window.barrier_needed)
        self.window.qos0_read(covered, 0)
        self.successResultOf(first.deferred)
        self.assertNoResult(second.deferred)
        self.assertTrue(self.window.barrier_needed)


class ResumptionTests(WindowTestCase):
    def test_resumed_sends_dup(self) -> None:
        """On a kept session an unacknowledged QoS 1 message goes again, DUP."""
        self.up()
        p = self.pending()
        self.window.offer(p, 0)
        self.window.lost(1)
        [again] = decode(self.up(2, resumed=True))
        assert isinstance(again, codec.Publish)
        self.assertEqual((again.packet_id, again.dup), (1, True))

    def test_lost_session_qos2(self) -> None:
        """A lost session fails QoS 2 (SESSION_LOST) and releases its id."""
        self.up()
        p = self.pending(qos=2)
        self.window.offer(p, 0)
        self.window.lost(1)
        out = decode(self.up(2, resumed=False))
        self.assertEqual(out, [codec.PubRel(1)])
        self.assertEqual(self.failure(p).outcome, Outcome.SESSION_LOST)
        self.window.pubcomp(codec.PubComp(1), 2)
        self.assertEqual(self.window.inflight, {})


class SuspectTests(WindowTestCase):
    def test_halving_then_blame(self) -> None:
        """Four suspects go again two at a time (each ack lets the next go),
        then one at a time; the one on the wire alone at a loss it has been part
        of twice is the culprit (CLOSED_ON), the rest flow."""
        self.up()
        ps = [self.pending() for _ in range(4)]
        for p in ps:
            self.window.offer(p, 0)
        self.window.lost(1)
        self.assertEqual(len(decode(self.up(1, resumed=True))), 2)
        [three] = decode(self.window.puback(codec.PubAck(1), 1))
        self.assertEqual(three.packet_id, 3)  # type: ignore[union-attr]
        [four] = decode(self.window.puback(codec.PubAck(2), 1))
        self.assertEqual(four.packet_id, 4)  # type: ignore[union-attr]
        self.window.lost(2)
        [again] = decode(self.up(2, resumed=True))
        self.assertEqual(again.packet_id, 3)  # type: ignore[union-attr]
        self.window.lost(3)
        self.assertEqual(self.failure(ps[2]).outcome, Outcome.CLOSED_ON)
        [four] = decode(self.up(3, resumed=True))
        self.assertEqual(four.packet_id, 4)  # type: ignore[union-attr]
        self.window.puback(codec.PubAck(4), 3)
        self.successResultOf(ps[3].deferred)
        self.assertFalse(self.window.careful)
        self.assertEqual(len(self.said), 1)

    def test_watchdog(self) -> None:
        """Nothing confirmed for 1.5 publish timeouts: wedged."""
        self.up()
        self.window.offer(self.pending(), 0)
        self.assertEqual(self.window.watchdog_deadline(), 15)
        self.assertFalse(self.window.wedged(14.9))
        self.assertTrue(self.window.wedged(15))
        self.window.puback(codec.PubAck(1), 15)
        self.assertIsNone(self.window.watchdog_deadline())

    def test_downgrade(self) -> None:
        """PUBACK to QoS 2: QOS_LIMIT for it, and QoS 2 refused afterwards."""
        self.up()
        p = self.pending(qos=2)
        self.window.offer(p, 0)
        self.window.puback(codec.PubAck(1), 0)
        self.assertEqual(self.failure(p).outcome, Outcome.QOS_LIMIT)
        later = self.pending(qos=2)
        self.assertEqual(self.window.offer(later, 0), [])
        self.assertEqual(self.failure(later).outcome, Outcome.QOS_LIMIT)
