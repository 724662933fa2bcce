"""
C{[server] workers = 2} with C{[cluster] redis}: a real redis-server that goes
away under load, while the two workers fall back to their shares of
C{[limits]} (C{on_redis_error = "open"}), so the host keeps the limits.
"""

from __future__ import annotations

import re

from tests.brokers import free_port, poll
from tests.cluster.load import Client
from tests.cluster.redisserver import RedisServer
from tests.gateway import curl
from tests.workers.test_processes import (
    WorkersCase,
    _reactor,
    sleep,
    workers_config,
)


def served(metrics: str) -> dict[str, float]:
    """The 200s each worker answered on /topics, by worker number."""
    found = re.findall(
        r'http_requests_total\{api="topics",http_version="1.1",'
        r'status="200",worker="(\d+)"\} (\S+)',
        metrics,
    )
    counts = {"1": 0.0, "2": 0.0}
    counts.update((worker, float(value)) for worker, value in found)
    return counts


class RedisOutageTests(WorkersCase):
    async def test_open_outage_keeps_host_limit(self) -> None:
        """
        Redis stopped: each worker enforces half of [limits] rate and burst
        (one log line says so at start), so the host admits the configured
        rate, not twice it, within 10%.
        """
        broker = await self.broker()
        redis = RedisServer()
        self.addCleanup(redis.stop)
        await redis.start()
        port, admin = free_port(), free_port()
        cluster = f'[cluster]\nredis = "{redis.url}"\non_redis_error = "open"\n'
        config = workers_config(
            broker.port, f"tcp:{port}:interface=127.0.0.1", admin=admin, extra=cluster
        ).replace("[limits]\nrate = 0\n", "[limits]\nrate = 100\nburst = 20\n")
        parent = await self.parent(config)
        subscriber = await self.subscriber(broker)
        self.assertIn(
            "2 workers share the rate limits through the cluster; while it is "
            "unreachable each enforces its share: rate 50/s (burst 10)",
            parent.output,
        )
        await redis.stop()
        # A connection per request, so that the kernel hands them to both.
        client = Client(_reactor(), persistent=False)
        self.addCleanup(client.close)
        urls = [f"http://127.0.0.1:{port}/topics/outage?qos=1"]
        accepted = 0

        async def metrics() -> str:
            return (await curl(f"http://127.0.0.1:{admin}/metrics")).body.decode()

        # Each worker notices the outage at its first call to Redis, which
        # times out; then its local share fills up again (10 tokens at 50/s).
        for _ in range(100):
            accepted += (await client.hammer(urls, 0.1, concurrency=1))[0][200]
            down = re.findall(
                r"mqtt_http_gateway_redis_up\{worker=.+\} 0", await metrics()
            )
            if len(down) == 2:
                break
        else:
            self.fail("the workers did not notice that Redis is away")
        await sleep(0.5)
        before = served(await metrics())
        statuses, elapsed = await client.hammer(urls, 2.0, concurrency=8)
        self.assertEqual(set(statuses), {200, 429}, statuses)
        expected = 100 * elapsed + 20
        self.assertGreaterEqual(statuses[200], 0.9 * expected, (statuses, elapsed))
        self.assertLessEqual(statuses[200], 1.1 * expected, (statuses, elapsed))
        after = await metrics()
        for worker in ("1", "2"):
            self.assertRegex(
                after, rf'mqtt_http_gateway_redis_up\{{worker="{worker}"\}} 0'
            )
            # Each worker took part and admitted its own share.
            admitted = served(after)[worker] - before[worker]
            share = 50 * elapsed + 10
            self.assertGreaterEqual(admitted, 0.9 * share, (worker, admitted, share))
            self.assertLessEqual(admitted, 1.1 * share, (worker, admitted, share))
        # What was accepted reached the broker, no more.
        accepted += statuses[200]
        await poll(
            _reactor(),
            lambda: len(subscriber.messages) >= accepted,
            10,
            lambda: f"{len(subscriber.messages)} of {accepted} messages arrived",
        )
        self.assertEqual(len(subscriber.messages), accepted)
        await self.assertStops(parent)
