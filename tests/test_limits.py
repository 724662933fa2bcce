"""
Token buckets, to the token: how many requests pass, and what Retry-After says.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.limits import KeyedBuckets, TokenBucket, retry_after


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


class RetryAfterTests(SynchronousTestCase):
    def test_whole_seconds(self) -> None:
        """Retry-After is the wait rounded up, at least 1."""
        self.assertEqual(
            [retry_after(w) for w in (0, 0.01, 1, 1.2, 30)], [1, 1, 1, 2, 30]
        )
