"""
A stand-in for the Redis connection in unit tests: every call is recorded with
a L{Deferred} the test fires (or fails) itself, so each step is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred

from gateway.cluster.health import RedisHealth
from gateway.cluster.scripts import Script


@attrs.define
class Call:
    """One call: the script's name (or C{"set"}), keys, arguments, its answer."""

    name: str
    keys: list[str]
    args: list[Any]
    answer: Deferred[Any] = attrs.field(factory=Deferred)


class FakeStore:
    """L{gateway.cluster.redis.SharedStore} that answers only when told."""

    def __init__(self, policy: str = "open") -> None:
        self.health = RedisHealth(policy)
        self.calls: list[Call] = []

    def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        call = Call(script.name, list(keys), list(args))
        self.calls.append(call)
        return call.answer

    def set_if_absent(self, key: str, ttl_ms: int) -> Deferred[bool]:
        call = Call("set", [key], [ttl_ms])
        self.calls.append(call)
        return call.answer

    def pending(self) -> list[Call]:
        """The calls not answered yet."""
        return [c for c in self.calls if not c.answer.called]

    def answer(self, reply: Any) -> Call:
        """Answer the oldest pending call with C{reply}."""
        call = self.pending()[0]
        call.answer.callback(reply)
        return call

    def fail(self, error: Exception | None = None) -> Call:
        """Fail the oldest pending call as an outage does (and mark Redis down)."""
        call = self.pending()[0]
        self.health.failed("connection lost")
        call.answer.errback(error or ConnectionError("connection lost"))
        return call


class SimulatedRedis(FakeStore):
    """
    A L{FakeStore} that answers lease scripts at once, from buckets kept the way
    the Lua script keeps them, timed by C{clock}: several limiters sharing one
    of these behave as processes sharing one Redis (with no latency).
    """

    def __init__(self, clock: Any) -> None:
        super().__init__()
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> tokens, stamp

    def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        call = Call(script.name, list(keys), list(args))
        self.calls.append(call)
        assert script.name == "lease", script.name
        rate, burst, want, need = (float(a) for a in args)
        now = self.clock.seconds()
        tokens, stamp = self.buckets.get(keys[0], (burst, now))
        tokens = min(burst, tokens + max(0.0, now - stamp) * rate)
        if tokens < need:
            self.buckets[keys[0]] = (tokens, now)
            wait_ms = -(-(need - tokens) * 1000 // rate)
            call.answer.callback([0, int(wait_ms)])
        else:
            granted = int(min(want, tokens // 1))
            self.buckets[keys[0]] = (tokens - granted, now)
            call.answer.callback([granted, 0])
        return call.answer
