"""
L{RedisHealth}: an outage is logged once when it starts and once when it ends,
and each decision taken without Redis follows C{on_redis_error}.
"""

from __future__ import annotations

from typing import cast

from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster.health import RedisHealth
from gateway.errors import Code, GatewayError


class HealthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, object]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def logged(self, level: LogLevel) -> list[dict[str, object]]:
        return [
            e
            for e in self.events
            if e.get("log_level") == level
            and str(e.get("log_namespace", "")).startswith("gateway.cluster")
        ]

    def test_outage_logged_once(self) -> None:
        """Many failures make one warning; the return makes one info line."""
        health = RedisHealth()
        self.assertTrue(health.up)
        for _ in range(5):
            health.failed("timeout")
        self.assertFalse(health.up)
        self.assertEqual(len(self.logged(LogLevel.warn)), 1)
        self.assertEqual(health.outages, 1)
        for _ in range(3):
            health.succeeded()
        self.assertTrue(health.up)
        self.assertEqual(len(self.logged(LogLevel.info)), 1)
        health.failed("timeout")
        self.assertEqual(len(self.logged(LogLevel.warn)), 2)
        self.assertEqual(health.outages, 2)

    def test_open_falls_back(self) -> None:
        """While down, "open" decides locally and counts each such decision."""
        health = RedisHealth("open")
        self.assertTrue(health.usable())
        self.assertEqual(health.fallbacks, 0)
        health.failed("refused")
        self.assertFalse(health.usable())
        self.assertFalse(health.usable(may_refuse=False))
        self.assertEqual(health.fallbacks, 2)

    def test_closed_refuses(self) -> None:
        """While down, "closed" refuses with 503 and Retry-After, except what
        may not be refused."""
        health = RedisHealth("closed")
        health.failed("refused")
        with self.assertRaises(GatewayError) as caught:
            health.usable()
        self.assertEqual(caught.exception.status, 503)
        self.assertEqual(caught.exception.code, Code.Unavailable)
        self.assertEqual(caught.exception.retry_after, 1)
        self.assertFalse(health.usable(may_refuse=False))
        self.assertEqual(health.fallbacks, 2)
        health.succeeded()
        self.assertTrue(health.usable())
