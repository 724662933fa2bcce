"""
Token buckets, to the token: how many requests pass, and what Retry-After says.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import LimitsConfig
from gateway.errors import Code, GatewayError
from gateway.limits import (
    DrainRate,
    KeyedBuckets,
    RateLimiter,
    TokenBucket,
    retry_after,
)
from gateway.model import Identity


class TokenBucketTests(SynchronousTestCase):
    def test_burst_then_rate(self) -> None:
        """A full bucket passes `burst` at once, then one per 1/rate seconds."""
        bucket = TokenBucket(rate=2, burst=3, now=0)
        self.assertEqual([bucket.take(0) for _ in range(3)], [0, 0, 0])
        self.assertEqual(bucket.take(0), 0.5)
        self.assertEqual(bucket.take(0.25), 0.25)
        self.assertEqual(bucket.take(0.5), 0)
        self.assertEqual(bucket.take(0.5), 0.5)

    def test_refill_capped(self) -> None:
        """A long pause refills to `burst`, never beyond."""
        bucket = TokenBucket(rate=10, burst=2, now=0)
        self.assertEqual([bucket.take(100) for _ in range(3)], [0, 0, 0.1])

    def test_refused_takes_nothing(self) -> None:
        """A refused request does not push the next allowed one further away."""
        bucket = TokenBucket(rate=1, burst=1, now=0)
        bucket.take(0)
        for _ in range(10):
            bucket.take(0.5)
        self.assertEqual(bucket.take(1.0), 0)

    @given(
        rate=st.floats(0.1, 1000),
        burst=st.integers(1, 100),
        times=st.lists(st.floats(0, 100), max_size=200),
    )
    def test_never_more_than_allowed(
        self, rate: float, burst: int, times: list[float]
    ) -> None:
        """Over any interval no more than burst + rate * elapsed pass."""
        bucket = TokenBucket(rate, burst, now=0)
        times.sort()
        passed = sum(1 for t in times if bucket.take(t) == 0)
        elapsed = times[-1] if times else 0
        self.assertLessEqual(passed, burst + rate * elapsed + 1e-6)


class KeyedBucketsTests(SynchronousTestCase):
    def test_per_key(self) -> None:
        """Each key has its own bucket."""
        buckets = KeyedBuckets(rate=1, burst=1)
        self.assertEqual(buckets.take("a", 0), 0)
        self.assertEqual(buckets.take("b", 0), 0)
        self.assertEqual(buckets.take("a", 0), 1)
        self.assertEqual(buckets.wait("a", 0), 1)
        self.assertEqual(buckets.wait("c", 0), 0)
        self.assertEqual(len(buckets), 2)

    def test_bounded(self) -> None:
        """The table never holds more than max_keys buckets; refilled ones go
        first, then the least recently used."""
        buckets = KeyedBuckets(rate=1, burst=1, max_keys=3)
        for key in "abc":
            buckets.take(key, 0)
        buckets.take("a", 0.5)
        buckets.take("d", 0.5)
        self.assertEqual(len(buckets), 3)
        self.assertEqual(buckets.wait("a", 0.5), 0.5)
        self.assertEqual(buckets.wait("b", 0.5), 0)

    def test_refilled_dropped(self) -> None:
        """Adding a key drops the least recently used buckets that have refilled,
        long before the table is full."""
        buckets = KeyedBuckets(rate=1, burst=1, max_keys=1000)
        buckets.take("a", 0)
        buckets.take("b", 0.5)
        buckets.take("c", 1.2)
        self.assertEqual(len(buckets), 2)
        buckets.take("d", 10)
        self.assertEqual(len(buckets), 1)

    def test_many_keys_cheap(self) -> None:
        """A flood of new keys (client ids are the client's choice) into a full
        table of buckets that never refill costs constant work per key, not a
        scan of the table."""
        buckets = KeyedBuckets(rate=0.001, burst=1, max_keys=1000)
        looked_at = []
        full = TokenBucket.full

        def counting(bucket: TokenBucket, now: float) -> bool:
            looked_at.append(1)
            return full(bucket, now)

        self.patch(TokenBucket, "full", counting)
        for n in range(20_000):
            buckets.take(str(n), 0)
        self.assertEqual(len(buckets), 1000)
        self.assertLessEqual(len(looked_at), 20_000)


class RetryAfterTests(SynchronousTestCase):
    def test_whole_seconds(self) -> None:
        """Retry-After is the wait rounded up, at least 1."""
        self.assertEqual(
            [retry_after(w) for w in (0, 0.01, 1, 1.2, 30)], [1, 1, 1, 2, 30]
        )


def limits(
    rate: float = 0, burst: int = 0, client_rate: float = 0, client_burst: int = 0
) -> LimitsConfig:
    return LimitsConfig(
        rate=rate, burst=burst, client_rate=client_rate, client_burst=client_burst
    )


def sender(client_id: str) -> Identity:
    return Identity(client_id=client_id)


A, B = sender("a"), sender("b")


class RateLimiterTests(SynchronousTestCase):
    def passes(self, limiter: RateLimiter, identity: Identity, now: float) -> int:
        """0 when the message passes, else the Retry-After of the 429."""
        try:
            limiter.check(identity, now)
        except GatewayError as e:
            self.assertEqual((e.code, e.status), (Code.RateLimited, 429))
            self.assertIn(("Retry-After", str(e.retry_after)), e.response_headers())
            assert e.retry_after is not None
            return e.retry_after
        return 0

    def test_gateway_rate(self) -> None:
        """[limits] rate/burst: burst at once, then rate per second, whoever
        sends."""
        limiter = RateLimiter(limits(rate=2, burst=3))
        got = [self.passes(limiter, sender(str(n)), 100.0) for n in range(4)]
        self.assertEqual(got, [0, 0, 0, 1])
        self.assertEqual(self.passes(limiter, A, 100.25), 1)
        self.assertEqual(self.passes(limiter, B, 100.5), 0)
        self.assertEqual(self.passes(limiter, B, 100.5), 1)
        self.assertEqual(limiter.refused, 3)

    def test_retry_after_is_the_wait(self) -> None:
        """Retry-After is the real wait for the next token, rounded up."""
        limiter = RateLimiter(limits(rate=0.25, burst=1))
        self.assertEqual(self.passes(limiter, A, 0), 0)
        self.assertEqual(self.passes(limiter, A, 0), 4)
        self.assertEqual(self.passes(limiter, A, 1.5), 3)
        self.assertEqual(self.passes(limiter, A, 3.01), 1)
        self.assertEqual(self.passes(limiter, A, 4), 0)

    def test_client_rate(self) -> None:
        """client_rate/client_burst: each client id has its own bucket."""
        limiter = RateLimiter(limits(client_rate=1, client_burst=2))
        self.assertEqual([self.passes(limiter, A, 0) for _ in range(3)], [0, 0, 1])
        self.assertEqual([self.passes(limiter, B, 0) for _ in range(2)], [0, 0])
        self.assertEqual(self.passes(limiter, A, 1), 0)
        self.assertEqual(self.passes(limiter, A, 1), 1)
        self.assertEqual(limiter.tracked_clients, 2)

    def test_refusal_takes_nothing(self) -> None:
        """A message refused by one bucket takes no token from the other: a
        client over its own limit does not use up the gateway's rate."""
        limiter = RateLimiter(limits(rate=1, burst=3, client_rate=1, client_burst=1))
        self.assertEqual(self.passes(limiter, A, 0), 0)
        for _ in range(10):
            self.assertEqual(self.passes(limiter, A, 0), 1)
        self.assertEqual(
            [self.passes(limiter, B, 0), self.passes(limiter, sender("c"), 0)], [0, 0]
        )
        self.assertEqual(self.passes(limiter, sender("d"), 0), 1)

    def test_longer_wait_wins(self) -> None:
        """With both buckets empty, Retry-After is the longer wait, and the
        message names the bucket."""
        limiter = RateLimiter(limits(rate=1, burst=1, client_rate=0.1, client_burst=1))
        limiter.check(A, 0)
        with self.assertRaises(GatewayError) as e:
            limiter.check(A, 0)
        self.assertEqual(e.exception.retry_after, 10)
        self.assertIn("client 'a'", e.exception.message)
        with self.assertRaises(GatewayError) as e:
            limiter.check(B, 0)
        self.assertEqual(e.exception.retry_after, 1)
        self.assertIn("gateway", e.exception.message)

    def test_off(self) -> None:
        """A rate of 0 turns its limit off."""
        limiter = RateLimiter(limits())
        self.assertEqual(sum(self.passes(limiter, A, 0) for _ in range(10_000)), 0)
        self.assertEqual(limiter.tracked_clients, 0)

    def test_defaults(self) -> None:
        """The defaults: 1000 messages/s for the gateway, no client limit."""
        limiter = RateLimiter(LimitsConfig())
        got = [self.passes(limiter, sender(str(n % 7)), 5.0) for n in range(1001)]
        self.assertEqual(got.count(0), 1000)
        self.assertEqual(got[-1], 1)

    def test_client_table_bounded(self) -> None:
        """However many client ids are used, at most max_clients buckets are
        kept, and idle ones are forgotten as new ones come."""
        limiter = RateLimiter(limits(client_rate=1, client_burst=1), max_clients=50)
        for n in range(1000):
            limiter.check(sender(f"c{n}"), 0)
        self.assertEqual(limiter.tracked_clients, 50)
        limiter.check(sender("late"), 10)
        self.assertEqual(limiter.tracked_clients, 1)

    @given(
        rate=st.floats(0.5, 100),
        burst=st.integers(1, 20),
        client_rate=st.floats(0.5, 100),
        client_burst=st.integers(1, 20),
        events=st.lists(
            st.tuples(st.sampled_from("abc"), st.floats(0, 10)), max_size=300
        ),
    )
    def test_never_more_than_allowed(
        self,
        rate: float,
        burst: int,
        client_rate: float,
        client_burst: int,
        events: list[tuple[str, float]],
    ) -> None:
        """Over any run, no more pass than burst + rate * elapsed, for the
        gateway and for each client; a refusal's Retry-After is at least 1."""
        limiter = RateLimiter(limits(rate, burst, client_rate, client_burst))
        events.sort(key=lambda e: e[1])
        passed: dict[str, int] = {}
        for client, now in events:
            if self.passes(limiter, sender(client), now) == 0:
                passed[client] = passed.get(client, 0) + 1
        elapsed = events[-1][1] if events else 0
        self.assertLessEqual(sum(passed.values()), burst + rate * elapsed + 1e-6)
        for count in passed.values():
            self.assertLessEqual(count, client_burst + client_rate * elapsed + 1e-6)


class DrainRateTests(SynchronousTestCase):
    def drain(
        self, rate: DrainRate, start: float, seconds: float, per_s: float
    ) -> float:
        """Keep the queue backlogged from C{start} for C{seconds}, C{per_s}
        messages leaving per second (counted every 10 ms); return the end."""
        steps = round(seconds * 100)
        rate.waiting(True, start)
        for step in range(1, steps + 1):
            rate.departed(int(per_s * step / 100) - int(per_s * (step - 1) / 100))
            rate.waiting(True, start + step / 100)
        return start + steps / 100

    def test_measured_while_backlogged(self) -> None:
        """The rate is departures per second over at least half a second of
        backlog; a newcomer behind n messages waits n / rate."""
        rate = DrainRate()
        self.assertIsNone(rate.wait(5, 0))
        now = self.drain(rate, 0, 0.4, 10)
        self.assertIsNone(rate.rate)
        now = self.drain(rate, now, 0.6, 10)
        assert rate.rate is not None
        self.assertAlmostEqual(rate.rate, 10, delta=1)
        wait = rate.wait(20, now)
        assert wait is not None
        self.assertAlmostEqual(wait, 2, delta=0.2)

    def test_light_traffic_is_not_a_slow_consumer(self) -> None:
        """Stretches that end with the queue empty never lower the estimate,
        nor set the first one."""
        rate = DrainRate()
        for n in range(100):
            rate.waiting(True, n)
            rate.departed()
            rate.waiting(False, n + 0.01)
        self.assertIsNone(rate.rate)
        now = self.drain(rate, 200, 1, 100)
        rate.waiting(False, now)
        before = rate.rate
        rate.waiting(True, 300)
        rate.departed()
        rate.waiting(False, 300.2)
        self.assertEqual(rate.rate, before)

    def test_quick_drain_raises(self) -> None:
        """A queue that emptied fast shows the consumer is at least that fast."""
        rate = DrainRate()
        self.drain(rate, 0, 1, 10)
        rate.waiting(True, 10)
        rate.departed(300)
        rate.waiting(False, 10.1)
        self.assertAlmostEqual(rate.rate, 3000)

    def test_stalled(self) -> None:
        """No departures for half a second of backlog: a newcomer would wait
        forever (the estimate halves with every such stretch once known)."""
        rate = DrainRate()
        rate.waiting(True, 0)
        self.assertEqual(rate.wait(1, 0.5), float("inf"))
        known = DrainRate()
        now = self.drain(known, 0, 1, 100)
        self.drain(known, now, 0.5, 0)
        assert known.rate is not None
        self.assertAlmostEqual(known.rate, 50, delta=5)
