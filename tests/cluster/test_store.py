"""
L{RedisStore} against a real redis-server: the scripts' answers, C{EVALSHA}
falling back to C{EVAL} when Redis forgot them, and an outage noticed, logged
once and recovered from.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, TimeoutError, ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from gateway.cluster.redis import RedisStore
from gateway.cluster.scripts import BLOCKED, FAILURE, LEASE
from gateway.config import parse_redis_url
from tests.brokers import poll
from tests.cluster.redisserver import RedisServer


class RedisStoreTests(TestCase):
    timeout = 30

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        from twisted.internet import reactor

        self.reactor: Any = reactor
        return ensureDeferred(self.start())

    async def start(self) -> None:
        self.redis = RedisServer()
        await self.redis.start()
        self.addCleanup(self.redis.stop)
        self.store = RedisStore(
            parse_redis_url(self.redis.url), self.reactor, timeout=0.3, probe=0.2
        )
        self.store.startService()
        self.addCleanup(self.store.stopService)

    async def test_lease(self) -> None:
        """Leases take whole tokens down to what is needed, then say how long."""
        keys = ["t:lease"]
        self.assertEqual(await self.store.run(LEASE, keys, [10, 20, 15, 5]), [15, 0])
        self.assertEqual(await self.store.run(LEASE, keys, [10, 20, 15, 5]), [5, 0])
        granted, wait_ms = await self.store.run(LEASE, keys, [10, 20, 15, 5])
        self.assertEqual(granted, 0)
        self.assertTrue(400 <= wait_ms <= 500, wait_ms)

    async def test_script_forgotten(self) -> None:
        """After SCRIPT FLUSH the next call still runs (EVAL again)."""
        await self.store.run(LEASE, ["t:flush"], [10, 20, 1, 1])
        connection = self.store._connection
        await connection.script_flush()
        self.assertEqual(
            await self.store.run(LEASE, ["t:flush"], [10, 20, 1, 1]), [1, 0]
        )

    async def test_failures_and_blocked(self) -> None:
        """Five failures pass, the sixth blocks for ten seconds; listed blocked."""
        keys = ["t:login:a", "t:blocked"]
        answers = [await self.store.run(FAILURE, keys, [0.1, 5, "a"]) for _ in range(5)]
        self.assertEqual(answers[:4], [0, 0, 0, 0])
        self.assertTrue(9_900 <= answers[4] <= 10_000, answers)
        host, wait_ms = await self.store.run(BLOCKED, ["t:blocked"], [10])
        self.assertEqual(host, "a")
        self.assertTrue(9_000 <= wait_ms <= 10_000, wait_ms)

    async def test_nonce(self) -> None:
        """SET NX: the first one is fresh, the second a replay."""
        self.assertTrue(await self.store.set_if_absent("t:nonce", 5000))
        self.assertFalse(await self.store.set_if_absent("t:nonce", 5000))

    async def test_outage(self) -> None:
        """Redis stopped: down after one call; back up by itself once it returns."""
        await self.store.run(LEASE, ["t:o"], [10, 20, 1, 1])
        self.assertTrue(self.store.health.up)
        await self.redis.stop()
        with self.assertRaises((txredisapi.ConnectionError, TimeoutError)):
            await self.store.run(LEASE, ["t:o"], [10, 20, 1, 1])
        self.assertFalse(self.store.health.up)
        await deferLater(self.reactor, 0.5)
        self.assertFalse(self.store.health.up)
        await self.redis.start()
        await poll(
            self.reactor,
            lambda: self.store.health.up,
            10,
            lambda: "the store did not notice that Redis is back",
        )
        self.assertEqual(self.store.health.outages, 1)
        self.assertEqual(await self.store.run(LEASE, ["t:o"], [10, 20, 1, 1]), [1, 0])
