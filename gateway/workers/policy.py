# -*- test-case-name: tests.workers.test_policy -*-
"""
The supervisor's decisions, as pure functions and values (time passed in):
what follows a worker's exit (L{after_exit}: started again after a back-off,
or the gateway stops because a worker refused to start), when every worker
serves, whether the workers answer (the condition for systemd's watchdog
ping), and each worker's share of the rate limits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from gateway.config import Config, LimitsConfig

__all__ = [
    "GiveUp",
    "Restart",
    "RestartBackoff",
    "WorkerState",
    "after_exit",
    "all_answering",
    "all_connected",
    "all_serving",
    "divided_limits",
    "limits_are_shared",
    "share_of_limits",
]


@attrs.frozen
class RestartBackoff:
    """
    How long a dead worker waits before it is started again: C{initial}
    seconds after the first death, doubling with each death in a row, at most
    C{maximum}. A worker that ran for C{stable} seconds or more before it died
    starts the count again.
    """

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    stable: float = 10.0

    def delay(self, deaths_in_a_row: int) -> float:
        """The wait before the next start after C{deaths_in_a_row} (>= 1)."""
        exponent = max(0, deaths_in_a_row - 1)
        # min() before the power would be clearer, but 2.0 ** 2000 overflows.
        if exponent > 64:
            return self.maximum
        return float(min(self.maximum, self.initial * self.factor**exponent))

    def deaths_in_a_row(self, previous: int, ran_for: float) -> int:
        """The count after a worker that ran for C{ran_for} seconds died."""
        return 1 if ran_for >= self.stable else previous + 1


@attrs.define
class WorkerState:
    """
    What the supervisor knows of one worker slot.

    @ivar number: the worker's number, 1 to N.
    @ivar running: whether its process is alive.
    @ivar serving: whether the running process said it serves its listeners.
    @ivar connected: whether the running process has its broker session.
    @ivar answered: when it last answered a ping (or said it serves), or
        C{None} since it started.
    @ivar started: when the current (or last) process started.
    @ivar deaths: deaths in a row (see L{RestartBackoff.deaths_in_a_row}).
    @ivar served_once: whether any of its processes ever said it serves.
    @ivar error: the one-line reason the current (or last) process gave for
        not starting, or C{None}.
    """

    number: int
    running: bool = False
    serving: bool = False
    connected: bool = False
    answered: float | None = None
    started: float = 0.0
    deaths: int = 0
    served_once: bool = False
    error: str | None = None

    def answering(self, now: float, deadline: float) -> bool:
        """Whether it runs and answered within the last C{deadline} seconds."""
        return (
            self.running
            and self.answered is not None
            and now - self.answered <= deadline
        )


@attrs.frozen
class Restart:
    """Start the worker again in C{delay} seconds; C{deaths} in a row now."""

    delay: float
    deaths: int


@attrs.frozen
class GiveUp:
    """
    Stop the gateway: a worker could not start. C{reason} is its own error
    line when it said one, else how its process ended.
    """

    reason: str


def after_exit(
    ended: WorkerState,
    workers: Iterable[WorkerState],
    ran_for: float,
    how: str,
    backoff: RestartBackoff,
) -> Restart | GiveUp:
    """
    What follows the exit of C{ended}'s process (C{ran_for} seconds after it
    started; C{how}: how it ended, for the reason), given every worker's state
    as it was just before (C{ended} among them).

    Until every worker has said once that it serves, the gateway is starting:
    a worker that exits then before it said it serves refused the
    configuration (a file it cannot open, a listener it cannot build, ...), or
    cannot start at all, so starting it again would only repeat that. That
    stops the gateway: L{GiveUp}, with the worker's own error line. Any other
    exit, including one during start-up by a worker that had served, and
    every exit once the gateway has started, is a L{Restart} after the
    back-off.
    """
    started_up = all(w.served_once for w in workers)
    if not started_up and not ended.serving:
        if ended.error is not None:
            return GiveUp(ended.error)
        return GiveUp(f"worker {ended.number} {how} before it served")
    deaths = backoff.deaths_in_a_row(ended.deaths, ran_for)
    return Restart(backoff.delay(deaths), deaths)


def all_serving(workers: Iterable[WorkerState]) -> bool:
    """Whether every worker runs and serves (and there is one at least)."""
    states = list(workers)
    return bool(states) and all(w.running and w.serving for w in states)


def all_connected(workers: Iterable[WorkerState]) -> bool:
    """Whether every worker serves and has its broker session."""
    states = list(workers)
    return all_serving(states) and all(w.connected for w in states)


def all_answering(workers: Iterable[WorkerState], now: float, deadline: float) -> bool:
    """
    Whether every worker answered a ping within C{deadline} seconds of C{now}:
    the parent pings systemd's watchdog only then, so a wedged or crash-looping
    worker ends in a restart of the whole service.
    """
    states = list(workers)
    return bool(states) and all(w.answering(now, deadline) for w in states)


def limits_are_shared(config: Config) -> bool:
    """
    Whether the rate limits are counted for every worker together (in the
    cluster's Redis), so that each worker enforces the whole limit against the
    shared count. Without that each worker counts alone and gets a share.
    """
    return config.cluster.redis is not None


def share_of_limits(config: Config, limits: LimitsConfig, workers: int) -> LimitsConfig:
    """
    The limits one of C{workers} workers enforces: C{limits} unchanged when
    L{limits_are_shared} (each worker counts against the shared whole), else
    its L{divided_limits}.
    """
    if limits_are_shared(config):
        return limits
    return divided_limits(limits, workers)


def divided_limits(limits: LimitsConfig, workers: int) -> LimitsConfig:
    """
    The limits one of C{workers} workers enforces counting alone (without the
    cluster, or while the cluster's Redis is unreachable): C{limits} with the
    rates (and bursts, rounded up, at least 1 while a rate is on) divided by
    C{workers}, so that all of them together allow what C{limits} allows;
    C{limits} unchanged with one worker.
    """
    if workers <= 1:
        return limits

    def burst(rate: float, value: int) -> int:
        return max(1, math.ceil(value / workers)) if rate > 0 else value

    return LimitsConfig(
        rate=limits.rate / workers,
        burst=burst(limits.rate, limits.burst),
        client_rate=limits.client_rate / workers,
        client_burst=burst(limits.client_rate, limits.client_burst),
    )
