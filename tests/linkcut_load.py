"""
Numbered publishes through the gateway while a L{LinkCutter} cuts its broker link:
the load and the bookkeeping shared by the link-cut tests and the benchmark.

Not a test module. L{run_under_cuts} posts C{count} numbered messages (QoS 1 and 2
alternately) from C{clients} concurrent keep-alive HTTP clients; L{Outcome.check}
says what broke the promise: a 200 whose message never arrived, a QoS 2 200
delivered twice, a status other than 200/502/503, or a request slower than
C{publish_timeout + 1} seconds.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from tests.brokers import Received


@dataclass
class Outcome:
    """What the clients saw and what the subscriber received."""

    statuses: dict[int, int] = field(default_factory=dict)  # number -> status
    qos: dict[int, int] = field(default_factory=dict)  # number -> QoS asked
    slowest: float = 0.0
    elapsed: float = 0.0
    received: Counter[int] = field(default_factory=Counter)
    received_qos: dict[int, set[int]] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)  # refusals' messages

    def record(self, messages: list[Received], prefix: str) -> None:
        """Count the numbered messages that arrived under C{prefix}."""
        self.received = Counter()
        self.received_qos = {}
        for message in messages:
            if message.topic.startswith(prefix):
                number = int(message.payload)
                self.received[number] += 1
                self.received_qos.setdefault(number, set()).add(message.qos)

    @property
    def ok(self) -> list[int]:
        """The numbers answered 200."""
        return sorted(n for n, status in self.statuses.items() if status == 200)

    def lost(self) -> list[int]:
        """Answered 200, never arrived."""
        return [n for n in self.ok if not self.received[n]]

    def duplicated(self) -> list[int]:
        """QoS 2, answered 200, arrived more than once."""
        return [n for n in self.ok if self.qos[n] == 2 and self.received[n] > 1]

    def unexpected(self) -> dict[int, int]:
        """Statuses other than 200, 502 and 503."""
        return {n: s for n, s in self.statuses.items() if s not in (200, 502, 503)}

    def check(self, publish_timeout: float) -> list[str]:
        """Every way the outcome breaks the delivery promise (empty: none)."""
        problems = []
        if lost := self.lost():
            problems.append(f"{len(lost)} answered 200 but lost: {lost[:20]}")
        if doubled := self.duplicated():
            problems.append(f"{len(doubled)} QoS 2 delivered twice: {doubled[:20]}")
        if odd := self.unexpected():
            problems.append(f"unexpected statuses: {dict(list(odd.items())[:20])}")
        if self.slowest > publish_timeout + 1:
            problems.append(f"a request took {self.slowest:.2f} s")
        return problems

    def summary(self) -> str:
        """One line for a failure message or a benchmark report."""
        return (
            f"{len(self.statuses)} requests: {dict(Counter(self.statuses.values()))}, "
            f"{sum(self.received.values())} messages received, "
            f"slowest {self.slowest:.2f} s, {self.elapsed:.1f} s in all; "
            f"refusals: {dict(self.reasons.most_common(5))}"
        )


def _reason(body: bytes) -> str:
    """An error body's message without its numbers, to count alike ones."""
    try:
        message = str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body[:60].decode("latin-1")
    return re.sub(r"[0-9.]+", "N", message)


def run_under_cuts(
    url: str,
    count: int,
    *,
    clients: int = 8,
    prefix: str = "cut",
    duration: float | None = None,
    reactor: Any = None,
    qos_of: Callable[[int], int] = lambda n: 1 + n % 2,
    until: Callable[[], bool] | None = None,
    most: int | None = None,
) -> Deferred[Outcome]:
    """
    POST C{count} numbered messages to C{url}C{/topics/{prefix}/{n}?qos=..} from
    C{clients} concurrent persistent HTTP connections (or fewer, when
    C{duration} seconds pass first); fires with the L{Outcome} (statuses and
    timings; call L{Outcome.record} with what arrived).

    With C{until}, C{count} is a minimum: sending goes on until C{until()} is
    true (or C{most} messages, default ten times C{count}, were sent), so a
    load that must span some event does not end before the event on a fast
    machine.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    outcome = Outcome()
    limit = count if until is None else (most if most is not None else 10 * count)
    numbers = iter(range(limit))
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = clients
    agent = Agent(reactor, pool=pool)
    deadline = None if duration is None else reactor.seconds() + duration

    async def client() -> None:
        for n in numbers:
            if deadline is not None and reactor.seconds() > deadline:
                return
            if until is not None and n >= count and until():
                return
            qos = qos_of(n)
            outcome.qos[n] = qos
            started = reactor.seconds()
            try:
                response = await agent.request(
                    b"POST",
                    f"{url}/topics/{prefix}/{n}?qos={qos}".encode(),
                    Headers({}),
                    FileBodyProducer(io.BytesIO(str(n).encode())),
                )
                body = await readBody(response)
                status = response.code
                if status != 200:
                    outcome.reasons[_reason(body)] += 1
            except Exception:
                status = -1
            outcome.statuses[n] = status
            outcome.slowest = max(outcome.slowest, reactor.seconds() - started)

    async def run() -> Outcome:
        started = reactor.seconds()
        await DeferredList(
            [ensureDeferred(client()) for _ in range(clients)], consumeErrors=True
        )
        outcome.elapsed = reactor.seconds() - started
        await pool.closeCachedConnections()
        return outcome

    return ensureDeferred(run())
