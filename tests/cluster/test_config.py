"""
C{[cluster]} in the configuration file: a checked C{redis://} URL (errors name
the key and never show a password) and C{on_redis_error}; and the service tree
it gives.
"""

from __future__ import annotations

import os
import tempfile

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.cluster.redis import RedisStore
from gateway.config import ConfigError, RedisAddress
from gateway.tap import Options, makeService


def cluster(**keys: object) -> config.ClusterConfig:
    return config.parse({"cluster": keys}, "/").cluster


class ClusterConfigTests(SynchronousTestCase):
    def test_default_off(self) -> None:
        """No Redis, failing open, unless configured."""
        self.assertEqual(config.default().cluster, config.ClusterConfig(None, "open"))
        self.assertIsNone(cluster(redis="").redis)

    def test_urls(self) -> None:
        """Host, port, database and credentials; port 6379 and db 0 by default."""
        self.assertEqual(
            cluster(redis="redis://127.0.0.1:6379/0").redis,
            RedisAddress("127.0.0.1", 6379, 0),
        )
        self.assertEqual(
            cluster(redis="redis://r.example").redis, RedisAddress("r.example")
        )
        address = cluster(redis="redis://:p%40ss@[::1]:7000/3").redis
        self.assertEqual(address, RedisAddress("::1", 7000, 3, None, "p@ss"))
        assert address is not None
        self.assertEqual(address.display, "redis://[::1]:7000/3")
        self.assertNotIn("p@ss", repr(address))
        user = cluster(redis="redis://gw:secret@h/1").redis
        self.assertEqual(user, RedisAddress("h", 6379, 1, "gw", "secret"))

    def test_errors(self) -> None:
        """Each mistake names the key, never the password."""
        for value, message in [
            (
                "http://h",
                "cluster.redis: expected a URL such as 'redis://127.0.0.1:6379/0'",
            ),
            ("redis://h/x", "cluster.redis: the database must be a number, got 'x'"),
            (
                "redis://h:0",
                "cluster.redis: the port must be between 1 and 65535, got 0",
            ),
            ("redis://h?db=1", "cluster.redis: a Redis URL has no query or fragment"),
            ("redis://:secret@", "cluster.redis: missing host"),
            (6379, "cluster.redis: expected a string, got an integer"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                cluster(redis=value)
            self.assertEqual(str(caught.exception), message)
        with self.assertRaises(ConfigError) as caught:
            cluster(on_redis_error="ignore")
        self.assertEqual(
            str(caught.exception),
            "cluster.on_redis_error: expected 'open' or 'closed', got 'ignore'",
        )


class ServiceTreeTests(SynchronousTestCase):
    def tree(self, text: str) -> object:
        path = os.path.join(tempfile.mkdtemp(), "gateway.toml")
        with open(path, "w") as f:
            f.write('[mqtt]\nbrokers = ["mqtt://127.0.0.1:1883"]\n' + text)
        options = Options()
        options.parseOptions(["--config", path])
        return makeService(options, MemoryReactor())

    def test_with_redis(self) -> None:
        """A configured Redis is a service of the tree, with its policy."""
        root = self.tree(
            '[cluster]\nredis = "redis://127.0.0.1:6390/2"\non_redis_error = "closed"\n'
        )
        store = root.getServiceNamed("redis")  # type: ignore[attr-defined]
        self.assertIsInstance(store, RedisStore)
        self.assertEqual(store.address, RedisAddress("127.0.0.1", 6390, 2))
        self.assertEqual(store.health.policy, "closed")

    def test_without(self) -> None:
        """No Redis, no such service: everything stays in the process."""
        root = self.tree("")
        with self.assertRaises(KeyError):
            root.getServiceNamed("redis")  # type: ignore[attr-defined]
