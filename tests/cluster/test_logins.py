"""
L{SharedFailures}: failed logins counted for the fleet, with the refusal of a
blocked address decided locally, from the answers of Redis.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.identify import Authenticator, Claim
from gateway.cluster.logins import SharedFailures
from gateway.errors import GatewayError
from gateway.model import Connection, Peer
from tests.cluster.fakes import FakeStore


def claim(user: str, password: bytes, host: str) -> Claim:
    """Basic credentials sent from C{host}."""
    return Claim(basic=(user, password), connection=Connection("c", Peer(host, 4000)))


WRONG = claim("bob", b"wrong", "192.0.2.7")


class Passwords:
    def verify(self, user: str, password: bytes) -> bool:
        return password == b"right"


class SharedFailuresTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeStore()
        self.failures = SharedFailures(self.store, self.clock)
        self.failures.startService()
        self.addCleanup(self.failures.stopService)
        self.auth = Authenticator(
            Passwords(), allow_anonymous=False, failures=self.failures
        )
        # The first refresh of the blocked table.
        refresh = self.store.answer([])
        self.assertEqual(refresh.name, "blocked")

    def status(self, claim: Claim = WRONG) -> int:
        try:
            self.auth.authenticate(claim, self.clock.seconds())
        except GatewayError as e:
            return e.status
        return 200

    def test_failure_counted_in_redis(self) -> None:
        """Each failure is one script call naming the address."""
        self.assertEqual(self.status(), 401)
        [call] = self.store.pending()
        self.assertEqual(call.name, "failure")
        self.assertEqual(
            call.keys,
            ["mqtt-http-gateway:login:192.0.2.7", "mqtt-http-gateway:login-blocked"],
        )
        self.assertEqual(call.args, [0.1, 5, "192.0.2.7"])

    def test_success_asks_nothing(self) -> None:
        """A request from an address that has not failed never waits for Redis."""
        right = claim("bob", b"right", "198.51.100.1")
        self.assertEqual(self.status(right), 200)
        self.assertEqual(self.store.pending(), [])

    def test_blocked_by_the_answer(self) -> None:
        """Redis says the address is over its limit: refused here until then."""
        self.assertEqual(self.status(), 401)
        self.store.answer(3000)
        self.assertEqual(self.status(), 429)
        self.clock.advance(3)
        self.assertEqual(self.status(), 401)

    def test_blocked_elsewhere(self) -> None:
        """An address blocked by other processes is refused after one refresh."""
        self.assertEqual(self.status(), 401)
        self.store.answer(0)
        self.clock.advance(0.5)
        refresh = self.store.answer(["192.0.2.7", 9000, "203.0.113.9", 100])
        self.assertEqual(refresh.keys, ["mqtt-http-gateway:login-blocked"])
        self.assertEqual(self.status(), 429)
        self.assertEqual(self.status(claim("x", b"y", "203.0.113.9")), 429)
        self.clock.advance(0.5)
        self.store.answer([])
        self.assertEqual(self.status(), 401)

    def test_local_count_too(self) -> None:
        """Five failures here block the sixth at once, before Redis answers."""
        for _ in range(5):
            self.assertEqual(self.status(), 401)
        self.assertEqual(self.status(), 429)

    def test_down_counts_locally(self) -> None:
        """With Redis down, the local count decides, even when failing closed."""
        store = FakeStore("closed")
        failures = SharedFailures(store, self.clock)
        auth = Authenticator(Passwords(), allow_anonymous=False, failures=failures)
        store.health.failed("refused")
        for attempt in range(6):
            with self.assertRaises(GatewayError) as caught:
                auth.authenticate(WRONG, 0.0)
            self.assertEqual(caught.exception.status, 429 if attempt == 5 else 401)
        self.assertEqual(store.calls, [])
