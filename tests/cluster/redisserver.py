"""
A real C{redis-server} for integration tests, started on a free port of
127.0.0.1 with no persistence, like the brokers of L{tests.brokers}::

    self.redis = RedisServer()
    await self.redis.start()
    self.addCleanup(self.redis.stop)
    ... f'[cluster]\\nredis = "{self.redis.url}"\\n' ...

L{RedisServer.stop} and L{RedisServer.start} again keep the port, so a test can
take Redis away under load and bring it back (empty: nothing is saved).
"""

from __future__ import annotations

import shutil

from tests.brokers import _BrokerProcess, _dieWithParent, _LogToFile


class RedisServer(_BrokerProcess):
    """C{redis-server --port N --save '' --appendonly no} on 127.0.0.1."""

    _name = "redis"
    # Writes its log itself, so the process survives trial's per-class reaping.
    _logDirect = True

    @property
    def url(self) -> str:
        """The C{[cluster] redis} URL of this server (database 0)."""
        return f"redis://{self.host}:{self.port}/0"

    def _command(self) -> list[str]:
        executable = shutil.which("redis-server") or "redis-server"
        return _dieWithParent(
            [
                executable,
                "--port",
                str(self.port),
                "--bind",
                self.host,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.directory,
            ]
        )

    def _ready(self, protocol: _LogToFile, log: str) -> bool:
        return True  # readiness is the TCP probe

    def _lostBindRace(self, log: str) -> bool:
        return "Address already in use" in log
