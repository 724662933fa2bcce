# -*- test-case-name: tests.workers.test_policy -*-
"""
The supervisor's pure decisions: restart back-off or stop after a worker's
exit, readiness, answering, and each worker's share of the limits.
"""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import LimitsConfig, default, parse
from gateway.listeners import Endpoints
from gateway.workers.policy import (
    GiveUp,
    Restart,
    RestartBackoff,
    WorkerState,
    after_exit,
    all_answering,
    all_connected,
    all_serving,
    divided_limits,
    limits_are_shared,
    share_of_limits,
)
from gateway.workers.role import WorkerRole


class BackoffTests(SynchronousTestCase):
    def test_doubles_up_to_maximum(self) -> None:
        """Each death in a row doubles the wait, which stops at the maximum."""
        backoff = RestartBackoff(initial=0.5, factor=2, maximum=4)
        self.assertEqual([backoff.delay(n) for n in range(1, 7)], [0.5, 1, 2, 4, 4, 4])
        self.assertEqual(backoff.delay(10_000), 4)

    def test_stable_run_resets(self) -> None:
        """A worker that ran for the stable time starts the count again."""
        backoff = RestartBackoff(stable=10)
        self.assertEqual(backoff.deaths_in_a_row(5, ran_for=9.9), 6)
        self.assertEqual(backoff.deaths_in_a_row(5, ran_for=10), 1)


def serving(number: int, connected: bool = True, answered: float = 0) -> WorkerState:
    return WorkerState(
        number, running=True, serving=True, connected=connected, answered=answered
    )


class AfterExitTests(SynchronousTestCase):
    backoff = RestartBackoff(initial=0.5, factor=2, maximum=4, stable=10)

    def test_refused_during_start_up(self) -> None:
        """
        While some worker has never served, one that exits before it served
        stops the gateway, with its own error line.
        """
        error = "mqtt-http-gateway: log.access: cannot open /x/a.log: No such file"
        starting = WorkerState(1, running=True, error=error)
        other = attrs.evolve(serving(2), served_once=True)
        self.assertEqual(
            after_exit(
                starting, [starting, other], 0.2, "exited with status 1", self.backoff
            ),
            GiveUp(error),
        )

    def test_crashed_during_start_up(self) -> None:
        """Without an error line the reason says how the process ended."""
        starting = WorkerState(2, running=True)
        self.assertEqual(
            after_exit(
                starting,
                [WorkerState(1), starting],
                3,
                "was killed by signal 9",
                self.backoff,
            ),
            GiveUp("worker 2 was killed by signal 9 before it served"),
        )

    def test_served_then_died_during_start_up(self) -> None:
        """A worker that served is started again, though another still starts."""
        died = attrs.evolve(serving(1), served_once=True)
        self.assertEqual(
            after_exit(
                died,
                [died, WorkerState(2, running=True)],
                1,
                "was killed by signal 9",
                self.backoff,
            ),
            Restart(delay=0.5, deaths=1),
        )

    def test_after_start_up(self) -> None:
        """
        Once every worker served, every exit is restarted with the back-off,
        even one before its new process served, error line or not.
        """
        restarted = WorkerState(
            1, running=True, served_once=True, deaths=2, error="mqtt-http-gateway: x"
        )
        other = attrs.evolve(serving(2), served_once=True)
        self.assertEqual(
            after_exit(
                restarted, [restarted, other], 0.1, "exited with status 1", self.backoff
            ),
            Restart(delay=2, deaths=3),
        )
        self.assertEqual(
            after_exit(
                restarted, [restarted, other], 10, "exited with status 1", self.backoff
            ),
            Restart(delay=0.5, deaths=1),
        )


class ReadinessTests(SynchronousTestCase):
    def test_all_serving(self) -> None:
        """Ready to serve only when every worker runs and serves."""
        self.assertTrue(all_serving([serving(1), serving(2)]))
        self.assertFalse(all_serving([serving(1), WorkerState(2, running=True)]))
        self.assertFalse(all_serving([serving(1), WorkerState(2)]))
        self.assertFalse(all_serving([]))

    def test_all_connected(self) -> None:
        """Ready (/readyz) only when every worker has its broker session."""
        self.assertTrue(all_connected([serving(1), serving(2)]))
        self.assertFalse(all_connected([serving(1), serving(2, connected=False)]))
        dead = attrs.evolve(serving(2), running=False)
        self.assertFalse(all_connected([serving(1), dead]))

    def test_all_answering(self) -> None:
        """Every worker must have answered within the deadline."""
        workers = [serving(1, answered=10), serving(2, answered=14)]
        self.assertTrue(all_answering(workers, now=15, deadline=5))
        self.assertFalse(all_answering(workers, now=15.5, deadline=5))
        never = WorkerState(3, running=True, serving=True)
        self.assertFalse(all_answering([*workers, never], now=15, deadline=5))
        dead = attrs.evolve(serving(3, answered=15), running=False)
        self.assertFalse(all_answering([*workers, dead], now=15, deadline=5))
        self.assertFalse(all_answering([], now=15, deadline=5))


class LimitsShareTests(SynchronousTestCase):
    def test_divided(self) -> None:
        """Rates are divided by the workers, bursts too (rounded up)."""
        limits = LimitsConfig(rate=1000, burst=1001, client_rate=10, client_burst=3)
        self.assertEqual(
            share_of_limits(default(), limits, 2),
            LimitsConfig(rate=500, burst=501, client_rate=5, client_burst=2),
        )

    def test_burst_at_least_one(self) -> None:
        """A rate that is on keeps a burst of at least 1; an off rate stays off."""
        limits = LimitsConfig(rate=3, burst=1, client_rate=0, client_burst=0)
        self.assertEqual(
            share_of_limits(default(), limits, 4),
            LimitsConfig(rate=0.75, burst=1, client_rate=0, client_burst=0),
        )

    def test_one_worker(self) -> None:
        """One worker enforces the limits as they are."""
        limits = LimitsConfig(rate=1000, burst=1000)
        self.assertIs(share_of_limits(default(), limits, 1), limits)

    def test_not_shared_without_cluster(self) -> None:
        """Without a cluster store the workers count alone."""
        self.assertFalse(limits_are_shared(parse({"server": {"workers": 4}}, ".")))

    def test_shared_through_redis(self) -> None:
        """With [cluster] redis every worker enforces the whole, shared limit."""
        config = parse(
            {
                "server": {"workers": 4},
                "cluster": {"redis": "redis://127.0.0.1:6379/0"},
            },
            ".",
        )
        self.assertTrue(limits_are_shared(config))
        self.assertIs(share_of_limits(config, config.limits, 4), config.limits)

    def test_alone_while_redis_is_down(self) -> None:
        """
        With [cluster] redis a worker enforces the whole shared limit, and its
        share of it when it counts alone (while Redis is unreachable).
        """
        config = parse(
            {
                "server": {"workers": 2},
                "cluster": {"redis": "redis://127.0.0.1:6379/0"},
                "limits": {
                    "rate": 100,
                    "burst": 31,
                    "client_rate": 4,
                    "client_burst": 3,
                },
            },
            ".",
        )
        role = WorkerRole(1, 2, Endpoints((), (), None))
        self.assertIs(role.limits(config, config.limits), config.limits)
        self.assertEqual(
            role.limits_alone(config.limits),
            LimitsConfig(rate=50, burst=16, client_rate=2, client_burst=2),
        )
        self.assertEqual(
            role.limits_alone(config.limits), divided_limits(config.limits, 2)
        )


class ServerConfigTests(SynchronousTestCase):
    def test_workers(self) -> None:
        """[server] workers is a number of at least 1, or "auto"."""
        self.assertEqual(default().server.workers, 1)
        self.assertEqual(parse({"server": {"workers": 3}}, ".").server.workers, 3)
        self.assertGreaterEqual(
            parse({"server": {"workers": "auto"}}, ".").server.workers, 1
        )
        for bad, message in [
            (0, "server.workers: must be between 1 and 1024, got 0"),
            ("many", "server.workers: expected an integer or 'auto', got 'many'"),
            (True, "server.workers: expected an integer, got true"),
        ]:
            with self.assertRaises(Exception) as caught:
                parse({"server": {"workers": bad}}, ".")
            self.assertEqual(str(caught.exception), message)

    def test_client_id_per_worker(self) -> None:
        """With several workers in gateway mode each needs its own client id."""
        with self.assertRaises(Exception) as caught:
            parse({"server": {"workers": 2}, "mqtt": {"client_id": "gw"}}, ".")
        self.assertIn("must contain {worker} or {pid}", str(caught.exception))
        parse({"server": {"workers": 2}, "mqtt": {"client_id": "gw-{pid}"}}, ".")
        mqtt = parse({"server": {"workers": 2}}, ".").mqtt
        self.assertEqual(mqtt.gateway_client_id("h", 2), "mqtt-http-gateway-h-2")
        self.assertEqual(
            attrs.evolve(mqtt, client_id="g-{worker}-{pid}").gateway_client_id(
                "h", 3, pid=42
            ),
            "g-3-42",
        )
