"""
L{RedisStore} with a connection the test controls and a fake clock: a call that
fails or outlasts the timeout marks Redis down, a PING every second while it is
down notices its return, and no call is left waiting.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster.redis import RedisStore
from gateway.cluster.scripts import LEASE
from gateway.config import RedisAddress


class Connection:
    """Answers each command with a Deferred the test fires."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, Deferred[Any]]] = []

    def _command(self, name: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.commands.append((name, d))
        return d

    def eval(self, source: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        return self._command("eval")

    def set(self, key: str, value: int, **options: Any) -> Deferred[Any]:
        return self._command("set")

    def ping(self) -> Deferred[Any]:
        return self._command("ping")

    def disconnect(self) -> Deferred[None]:
        return succeed(None)


class RedisStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connection = Connection()
        self.store = RedisStore(
            RedisAddress("127.0.0.1"),
            self.clock,
            timeout=0.5,
            probe=1.0,
            connect=lambda address, reactor, timeout: self.connection,
        )
        self.store.startService()
        self.addCleanup(self.store.stopService)

    def names(self) -> list[str]:
        return [name for name, _ in self.connection.commands]

    def test_answer(self) -> None:
        """An answer in time is the call's result; Redis stays up."""
        d = self.store.run(LEASE, ["k"], [1, 1, 1, 1])
        self.connection.commands[0][1].callback([1, 0])
        self.assertEqual(self.successResultOf(d), [1, 0])
        self.assertTrue(self.store.health.up)

    def test_timeout_then_probe(self) -> None:
        """A late answer: down; a PING each second until one is answered."""
        d = self.store.run(LEASE, ["k"], [1, 1, 1, 1])
        self.clock.advance(0.5)
        self.failureResultOf(d)
        self.assertFalse(self.store.health.up)
        self.clock.advance(1.0)
        self.assertEqual(self.names(), ["eval", "ping"])
        self.clock.advance(1.0)  # the first PING times out too
        self.assertEqual(self.names(), ["eval", "ping", "ping"])
        self.connection.commands[-1][1].callback("PONG")
        self.assertTrue(self.store.health.up)
        self.assertEqual(self.store.health.outages, 1)
        self.clock.advance(5.0)
        self.assertEqual(len(self.names()), 3, "no PING while up")

    def test_refused(self) -> None:
        """A failed call marks Redis down at once; SET NX answers a bool."""
        d = self.store.set_if_absent("n", 10)
        self.connection.commands[0][1].errback(ConnectionError("refused"))
        self.failureResultOf(d, ConnectionError)
        self.assertFalse(self.store.health.up)
        self.clock.advance(1.0)
        self.connection.commands[-1][1].callback("PONG")
        fresh = self.store.set_if_absent("n", 10)
        self.connection.commands[-1][1].callback("OK")
        self.assertTrue(self.successResultOf(fresh))
        again = self.store.set_if_absent("n", 10)
        self.connection.commands[-1][1].callback(None)
        self.assertFalse(self.successResultOf(again))

    def test_timeout_logged_plainly(self) -> None:
        """The one warning of an outage by timeout says how long was waited."""
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        d = self.store.run(LEASE, ["k"], [1, 1, 1, 1])
        self.clock.advance(0.5)
        self.failureResultOf(d)
        [warning] = [e for e in events if "unreachable" in e.get("log_format", "")]
        self.assertEqual(warning["why"], "no answer within 0.5 s")
