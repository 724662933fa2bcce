"""
Two real gateways, one Mosquitto and one redis-server: the rate limits, the
failed-login limit and the SendMessage nonces hold for the two together, and a
Redis outage follows C{on_redis_error} ("open": local limits, "closed": 503)
until Redis returns.
"""

from __future__ import annotations

import re
from typing import Any, cast

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import readBody

from tests.brokers import Mosquitto, Subscriber, free_port
from tests.cluster.load import (
    INSTANCE,
    KEY_ID,
    SECRET,
    Client,
    code_of,
    signed_send_message,
)
from tests.cluster.redisserver import RedisServer
from tests.gateway import RunningGateway, password_file

PASSWORDS = password_file(bob="builder")
BASIC_WRONG = {b"authorization": [b"Basic Ym9iOndyb25n"]}  # bob:wrong
BASIC_RIGHT = {b"authorization": [b"Basic Ym9iOmJ1aWxkZXI="]}  # bob:builder


def fleet_config(
    name: str, broker: int, redis: str, admin: int, *, limits: str, policy: str
) -> str:
    return (
        f'[mqtt]\nbrokers = ["mqtt://127.0.0.1:{broker}"]\n'
        f'client_id = "fleet-{name}"\npublish_timeout = 2\nkeepalive = 10\n'
        '[log]\naccess = ""\n'
        f'[auth]\nallow_anonymous = true\npassword_file = "{PASSWORDS}"\n'
        f"[limits]\n{limits}\n"
        f'[aliyun]\ninstance_id = "{INSTANCE}"\n'
        f'access_keys = {{ {KEY_ID} = "{SECRET}" }}\n'
        f'[cluster]\nredis = "{redis}"\non_redis_error = "{policy}"\n'
        f'[admin]\nlisten = "tcp:{admin}:interface=127.0.0.1"\n'
    )


class FleetTestCase(TestCase):
    timeout = 90
    limits = "rate = 0\nburst = 0"
    policy = "open"

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.warnings: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_level") == LogLevel.warn and "unreachable" in str(
                event.get("log_format", "")
            ):
                self.warnings.append(str(event.get("name")))

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return ensureDeferred(self.start())

    async def start(self) -> None:
        self.broker = Mosquitto()
        self.addCleanup(self.broker.stop)
        await self.broker.start()
        self.redis = RedisServer()
        self.addCleanup(self.redis.stop)
        await self.redis.start()
        self.gateways: list[RunningGateway] = []
        self.admins: list[str] = []
        for name in "ab":
            admin = free_port()
            gateway = RunningGateway(
                fleet_config(
                    name,
                    self.broker.port,
                    self.redis.url,
                    admin,
                    limits=self.limits,
                    policy=self.policy,
                )
            )
            self.addCleanup(gateway.stop)
            await gateway.start()
            self.gateways.append(gateway)
            self.admins.append(f"http://127.0.0.1:{admin}/metrics")
        self.client = Client(self.reactor)
        self.addCleanup(self.client.close)

    def urls(self, query: str = "") -> list[str]:
        return [g.topic_url("fleet/t", query) for g in self.gateways]

    async def metric(self, index: int, name: str) -> float:
        """A metric of gateway C{index}, as its /metrics shows it."""
        response = await self.client.agent.request(b"GET", self.admins[index].encode())
        text = (await readBody(response)).decode()
        match = re.search(rf"^mqtt_http_gateway_{name} (\S+)$", text, re.M)
        assert match, f"{name} not in /metrics:\n{text}"
        return float(match.group(1))


def assert_within(test: TestCase, admitted: int, expected: float) -> None:
    test.assertGreaterEqual(admitted, 0.9 * expected, (admitted, expected))
    test.assertLessEqual(admitted, 1.1 * expected, (admitted, expected))


class FleetRateTests(FleetTestCase):
    limits = "rate = 100\nburst = 20"

    async def test_one_rate_for_both(self) -> None:
        """Load on both gateways: 200s add up to rate * seconds + burst."""
        statuses, elapsed = await self.client.hammer(self.urls(), 3.0)
        self.assertEqual(set(statuses) - {200, 429}, set(), statuses)
        # The load was well over the limit, or this would prove nothing.
        self.assertGreater(statuses[429], statuses[200], statuses)
        assert_within(self, statuses[200], 100 * elapsed + 20)


class FleetClientRateTests(FleetTestCase):
    limits = "rate = 0\nburst = 0\nclient_rate = 20\nclient_burst = 5"

    async def test_one_client_rate_for_both(self) -> None:
        """One client id on both gateways: one per-client limit."""
        statuses, elapsed = await self.client.hammer(
            self.urls("client_id=dev1"), 3.0, concurrency=3
        )
        self.assertEqual(set(statuses) - {200, 429}, set(), statuses)
        self.assertGreater(statuses[429], statuses[200], statuses)
        assert_within(self, statuses[200], 20 * elapsed + 5)
        # Another client id has its own limit.
        status, _, _ = await self.client.post(self.urls("client_id=dev2")[0])
        self.assertEqual(status, 200)


class FleetLoginTests(FleetTestCase):
    async def test_failed_logins_for_both(self) -> None:
        """Five wrong passwords over the two gateways; the sixth on either is 429."""
        a, b = self.urls()
        for url in (a, b, a, b, b):
            status, _, body = await self.client.post(url, headers=BASIC_WRONG)
            self.assertEqual(status, 401, body)
        # One refresh of the blocked addresses later.
        await deferLater(self.reactor, 0.8)
        for url in (a, b):
            status, headers, body = await self.client.post(url, headers=BASIC_RIGHT)
            self.assertEqual(status, 429, body)
            self.assertEqual(code_of(body), "RateLimited")
            [wait] = headers.getRawHeaders(b"retry-after") or [b""]
            self.assertTrue(1 <= int(wait) <= 10, wait)


class FleetNonceTests(FleetTestCase):
    async def test_nonce_used_on_the_other(self) -> None:
        """A SendMessage accepted by one gateway is a replay to the other."""
        subscriber = Subscriber("127.0.0.1", self.broker.port, "nonce/#")
        self.addCleanup(subscriber.stop)
        await subscriber.start()
        query = signed_send_message("nonce/once", "only once")
        first, second = (f"{g.url}/?{query}" for g in self.gateways)
        status, _, body = await self.client.post(first, b"")
        self.assertEqual(status, 200, body)
        status, _, body = await self.client.post(second, b"")
        self.assertEqual(status, 400, body)
        self.assertEqual(code_of(body), "SignatureNonceUsed")
        # A fresh one passes on the second.
        fresh = signed_send_message("nonce/twice", "fresh")
        status, _, body = await self.client.post(
            f"{self.gateways[1].url}/?{fresh}", b""
        )
        self.assertEqual(status, 200, body)
        await subscriber.wait_for(2)
        await deferLater(self.reactor, 0.3)
        self.assertEqual(
            sorted(m.payload for m in subscriber.messages), [b"fresh", b"only once"]
        )


class FleetOpenOutageTests(FleetTestCase):
    limits = "rate = 100\nburst = 20"

    async def test_open(self) -> None:
        """Redis away: local limits, metric down, one warning per gateway; back
        with Redis, metric up."""
        statuses, _ = await self.client.hammer(self.urls(), 1.0)
        self.assertGreater(statuses[200], 0)
        self.assertEqual(await self.metric(0, "redis_up"), 1.0)
        await self.redis.stop()
        statuses, elapsed = await self.client.hammer(self.urls(), 2.0)
        self.assertEqual(set(statuses) - {200, 429}, set(), statuses)
        # Each gateway admits up to its own local limit meanwhile.
        self.assertGreater(statuses[200], 100 * elapsed, statuses)
        for index in (0, 1):
            self.assertEqual(await self.metric(index, "redis_up"), 0.0)
            self.assertGreater(await self.metric(index, "redis_fallbacks_total"), 0)
        self.assertEqual(len(self.warnings), 2, self.warnings)
        await self.redis.start()

        async def both_up() -> bool:
            return all([await self.metric(i, "redis_up") == 1.0 for i in (0, 1)])

        for _ in range(100):
            await self.client.hammer(self.urls(), 0.1, concurrency=1)
            if await both_up():
                break
        else:
            self.fail("the gateways did not notice that Redis is back")
        statuses, elapsed = await self.client.hammer(self.urls(), 2.0)
        self.assertEqual(set(statuses) - {200, 429}, set(), statuses)
        # Shared again: one limit for both (burst spent, leases in flight).
        self.assertLess(statuses[200], 1.1 * (100 * elapsed + 20), statuses)
        self.assertEqual(len(self.warnings), 2, self.warnings)


class FleetClosedOutageTests(FleetTestCase):
    limits = "rate = 100\nburst = 20"
    policy = "closed"

    async def test_closed(self) -> None:
        """Redis away: 503 with Retry-After for what needs it; 200 once back."""
        a, b = self.urls()
        status, _, _ = await self.client.post(a)
        self.assertEqual(status, 200)
        await self.redis.stop()

        async def answered(url: str, wanted: int) -> None:
            async def check() -> bool:
                status, _, _ = await self.client.post(url)
                return status == wanted

            for _ in range(200):
                if await check():
                    return
                await deferLater(self.reactor, 0.05)
            self.fail(f"{url} never answered {wanted}")

        await answered(a, 503)
        await answered(b, 503)
        for url in (a, b):
            status, headers, body = await self.client.post(url)
            self.assertEqual(status, 503, body)
            self.assertEqual(code_of(body), "ServiceUnavailable")
            self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"1"])
        query = signed_send_message("closed/t", "x")
        status, _, body = await self.client.post(
            f"{self.gateways[1].url}/?{query}", b""
        )
        self.assertEqual(status, 503, body)
        self.assertEqual(code_of(body), "ServiceUnavailable")
        await self.redis.start()
        await answered(a, 200)
        await answered(b, 200)
