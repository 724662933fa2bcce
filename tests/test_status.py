"""
Publishers tell their connection state as a value, and observers hear each change.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.mqtt import codec
from gateway.status import PublisherStatus, StatusObservers
from tests.fakes import FakeBroker, SessionTestCase


class ObserversTests(SynchronousTestCase):
    def test_notify_and_stop(self) -> None:
        """Every observer hears each change until it stops; one that raises does
        not keep the others from hearing."""
        observers = StatusObservers()
        heard: list[PublisherStatus] = []

        def broken(status: PublisherStatus) -> None:
            raise RuntimeError("observer bug")

        observers.observe(broken)
        stop = observers.observe(heard.append)
        observers.notify(PublisherStatus(connected=True))
        stop()
        observers.notify(PublisherStatus(connected=False))
        self.assertEqual(heard, [PublisherStatus(connected=True)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class SessionStatusTests(SessionTestCase):
    def test_up_down_up(self) -> None:
        """The session reports up (broker, level), down, and up again with one
        reconnect counted; status() tells in-flight and queued counts."""
        session = self.start(protocol="5")
        heard: list[PublisherStatus] = []
        self.publisher.observe(heard.append)
        broker = self.connected()
        self.publish()
        self.assertEqual(
            self.publisher.status(),
            PublisherStatus(
                connected=True, broker="mqtt://a", protocol_level=5, inflight=1
            ),
        )
        broker.drop()
        self.clock.advance(2)
        again = FakeBroker(self.endpoints[0])
        again.accept(session_present=True)
        again.send(codec.PubAck(1))
        self.assertEqual(
            [(s.connected, s.reconnects) for s in heard],
            [(True, 0), (False, 0), (True, 1)],
        )
        self.assertEqual(session.status().inflight, 0)
