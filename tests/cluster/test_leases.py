"""
The leased token buckets: what one process lets through from its leases, when
it asks Redis for more, and that processes sharing one bucket stay within its
rate; with Redis down, local buckets ("open") or 503 ("closed").
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster.leases import (
    LEASE_LIFETIME,
    Lease,
    lease_size,
    shared_rate_limiter,
)
from gateway.config import LimitsConfig
from gateway.errors import GatewayError
from gateway.limits import RateLimiter
from gateway.model import Identity
from gateway.workers.policy import divided_limits
from tests.cluster.fakes import FakeStore, SimulatedRedis

ALICE = Identity(client_id="alice")


def passes(limiter: RateLimiter, now: float, identity: Identity = ALICE) -> bool:
    """Whether one message passes the limiter at C{now} (429 -> False)."""
    try:
        limiter.check(identity, now)
    except GatewayError as e:
        assert e.status == 429, e
        return False
    return True


class LeaseSizeTests(SynchronousTestCase):
    def test_size(self) -> None:
        """10 ms of the rate, at least one token, at most the burst."""
        self.assertEqual(lease_size(1000, 1000), 10)
        self.assertEqual(lease_size(50, 50), 1)
        self.assertEqual(lease_size(100_000, 20), 20)
        self.assertEqual(lease_size(0.1, 5), 1)


class LeaseTests(SynchronousTestCase):
    """The pure policy."""

    def test_credit_then_refused(self) -> None:
        """With nothing leased, a process may run one lease ahead, no more."""
        lease = Lease(rate=1000, size=10)
        for _ in range(10):
            self.assertEqual(lease.wait(0.0), 0.0)
            lease.take()
        self.assertGreater(lease.wait(0.0), 0.0)
        self.assertEqual(lease.want(0.0), (20, 5))

    def test_ask_ahead_of_need(self) -> None:
        """A process asks again once it holds less than half a lease."""
        lease = Lease(rate=1000, size=10)
        lease.granted(10, 0.0, 0.0)
        self.assertEqual(lease.want(0.0), (0, 0))
        for _ in range(5):
            lease.take()
        self.assertEqual(lease.want(0.0), (0, 0))
        lease.take()
        self.assertEqual(lease.want(0.0), (6, 5))
        lease.asking = True
        self.assertEqual(lease.want(0.0), (0, 0))

    def test_empty_bucket_backs_off(self) -> None:
        """Told the shared bucket is empty, it does not ask before the wait."""
        lease = Lease(rate=100, size=1)
        lease.take()
        lease.granted(0, 0.25, 1.0)
        self.assertEqual(lease.want(1.2), (0, 0))
        self.assertAlmostEqual(lease.wait(1.2), 0.05)
        self.assertEqual(lease.want(1.25), (2, 1))

    def test_unspent_tokens_expire(self) -> None:
        """Tokens not spent within the lifetime are forgotten; debts are not."""
        lease = Lease(rate=1000, size=10)
        lease.granted(10, 0.0, 0.0)
        lease.wait(LEASE_LIFETIME - 0.001)
        self.assertEqual(lease.balance, 10)
        lease.wait(LEASE_LIFETIME)
        self.assertEqual(lease.balance, 0)
        lease.take()
        lease.wait(100.0)
        self.assertEqual(lease.balance, -1)


class LeasedLimiterTests(SynchronousTestCase):
    """One process's limiter against a store answered by the test."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeStore()
        self.limiter = shared_rate_limiter(
            LimitsConfig(rate=1000, burst=1000), self.store, self.clock
        )

    def test_no_round_trip_per_message(self) -> None:
        """Messages pass without waiting for Redis, one call per half lease."""
        self.assertTrue(passes(self.limiter, 0.0))
        [call] = self.store.calls
        self.assertEqual(call.name, "lease")
        self.assertEqual(call.keys, ["mqtt-http-gateway:rate"])
        self.assertEqual(call.args, [1000, 1000, 10, 5])
        for _ in range(9):
            self.assertTrue(passes(self.limiter, 0.0))
        self.assertEqual(len(self.store.calls), 1)
        self.store.answer([10, 0])
        for _ in range(100):
            self.assertTrue(passes(self.limiter, 0.0))
            if self.store.pending():
                self.store.answer([self.store.pending()[0].args[2], 0])
        self.assertLessEqual(len(self.store.calls), 1 + 100 // 5 + 1)

    def test_refused_while_lease_is_out(self) -> None:
        """Past one lease of debt, messages are refused (429), asking nothing."""
        for _ in range(10):
            self.assertTrue(passes(self.limiter, 0.0))
        self.assertFalse(passes(self.limiter, 0.0))
        self.assertEqual(len(self.store.calls), 1)
        self.store.answer([0, 300])
        self.assertFalse(passes(self.limiter, 0.1))
        self.assertEqual(len(self.store.calls), 1)
        self.assertFalse(passes(self.limiter, 0.3))
        self.assertEqual(len(self.store.calls), 2)
        self.assertEqual(self.limiter.refused, 3)

    def test_open_falls_back_to_local(self) -> None:
        """Redis down with "open": the local bucket of the same rate decides."""
        self.assertTrue(passes(self.limiter, 0.0))
        self.store.fail()
        results = [passes(self.limiter, 0.0) for _ in range(1100)]
        self.assertEqual(results.count(True), 1000)
        self.assertEqual(len(self.store.calls), 1)
        self.assertGreaterEqual(self.store.health.fallbacks, 1100)
        self.store.health.succeeded()
        self.assertTrue(passes(self.limiter, 0.0))
        self.assertEqual(len(self.store.calls), 2)

    def halved(self, limits: LimitsConfig) -> RateLimiter:
        """The limiter of a worker of two, with Redis gone after one message."""
        limiter = shared_rate_limiter(
            limits, self.store, self.clock, alone=divided_limits(limits, 2)
        )
        self.assertTrue(passes(limiter, 0.0))
        self.store.fail()
        return limiter

    def shared_again(
        self, limiter: RateLimiter, now: float, tries: int, shared: list[float]
    ) -> int:
        """
        Redis back: how many of C{tries} messages pass at C{now}, every lease
        asked for granted in full (and asked of the C{shared} rate and burst).
        """
        self.store.health.succeeded()
        admitted = 0
        for _ in range(tries):
            admitted += passes(limiter, now)
            for call in self.store.pending():
                self.assertEqual(call.args[:2], shared)
                call.answer.callback([call.args[2], 0])
        return admitted

    def test_open_falls_back_to_share(self) -> None:
        """
        Redis down with "open" for a worker of two: its local bucket admits half
        the configured rate and burst; Redis back, the leased whole limit
        applies again.
        """
        limiter = self.halved(LimitsConfig(rate=1000, burst=1000))
        self.assertEqual(sum(passes(limiter, 0.0) for _ in range(1100)), 500)
        # One second on, the share's rate: 500 more.
        self.assertEqual(sum(passes(limiter, 1.0) for _ in range(1100)), 500)
        # The local share is spent, yet leases of the whole bucket pass.
        self.assertEqual(self.shared_again(limiter, 1.0, 100, [1000, 1000]), 100)

    def test_open_falls_back_to_client_share(self) -> None:
        """The same for the per-client buckets: half of client_rate/burst."""
        limiter = self.halved(
            LimitsConfig(rate=0, burst=0, client_rate=10, client_burst=11)
        )
        self.assertEqual(sum(passes(limiter, 0.0) for _ in range(20)), 6)
        # Two seconds on, refilled at 5/s and full at 6 again.
        self.assertEqual(sum(passes(limiter, 2.0) for _ in range(20)), 6)
        # The first waits for the lease repaying the debt from before the outage.
        self.assertEqual(self.shared_again(limiter, 2.0, 10, [10, 11]), 9)

    def test_closed_refuses(self) -> None:
        """Redis down with "closed": 503 with Retry-After, until it is back."""
        store = FakeStore("closed")
        limiter = shared_rate_limiter(
            LimitsConfig(rate=10, burst=10, client_rate=5, client_burst=5),
            store,
            self.clock,
        )
        self.assertTrue(passes(limiter, 0.0))
        store.fail()
        with self.assertRaises(GatewayError) as caught:
            limiter.check(ALICE, 0.0)
        self.assertEqual(caught.exception.status, 503)
        self.assertEqual(caught.exception.retry_after, 1)
        store.health.succeeded()
        # Back up: the leases owed are asked for again and then spent.
        self.assertFalse(passes(limiter, 0.0))
        while store.pending():
            store.answer([2, 0])
        self.assertTrue(passes(limiter, 0.0))

    def test_clients_bounded(self) -> None:
        """Per-client leases live in a bounded table, keyed per client id."""
        store = FakeStore()
        limiter = shared_rate_limiter(
            LimitsConfig(rate=0, burst=0, client_rate=10, client_burst=10),
            store,
            self.clock,
            max_clients=3,
        )
        for n in range(5):
            self.assertTrue(passes(limiter, 0.0, Identity(client_id=f"c{n}")))
        self.assertEqual(limiter.tracked_clients, 3)
        self.assertEqual(
            [c.keys for c in store.calls],
            [[f"mqtt-http-gateway:client:c{n}"] for n in range(5)],
        )
        # c4 owes one token; its lease repays it and brings one more, then one
        # of credit, and the next message is refused.
        c4 = Identity(client_id="c4")
        self.assertFalse(passes(limiter, 0.0, c4))
        store.calls[-1].answer.callback([2, 0])
        self.assertTrue(passes(limiter, 0.0, c4))
        self.assertTrue(passes(limiter, 0.0, c4))
        self.assertFalse(passes(limiter, 0.0, c4))


class FleetTests(SynchronousTestCase):
    """Processes sharing one bucket, simulated to the millisecond."""

    def run_fleet(self, processes: int, rate: float, burst: int) -> tuple[int, float]:
        clock = Clock()
        redis = SimulatedRedis(clock)
        limits = LimitsConfig(rate=rate, burst=burst)
        limiters = [shared_rate_limiter(limits, redis, clock) for _ in range(processes)]
        admitted = 0
        seconds = 5.0
        # Each process offers three times its share of the rate.
        step = 1.0 / (3 * rate)
        while clock.seconds() < seconds:
            for limiter in limiters:
                admitted += passes(limiter, clock.seconds())
            clock.advance(step * processes)
        return admitted, rate * seconds + burst

    def test_two_processes_one_limit(self) -> None:
        """Two processes admit the configured rate between them, within 10%."""
        admitted, expected = self.run_fleet(2, rate=200, burst=50)
        self.assertGreaterEqual(admitted, 0.9 * expected)
        self.assertLessEqual(admitted, 1.1 * expected)

    def test_many_processes_one_limit(self) -> None:
        """Ten processes too, at a rate with leases of many tokens."""
        admitted, expected = self.run_fleet(10, rate=5000, burst=1000)
        self.assertGreaterEqual(admitted, 0.9 * expected)
        self.assertLessEqual(admitted, 1.1 * expected)
