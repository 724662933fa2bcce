# -*- test-case-name: tests.workers.test_parent -*-
"""
The assembly's one decision: one process, or a parent supervising workers; and
what the parent's tree holds (built for a L{MemoryReactor}: nothing starts).
"""

from __future__ import annotations

from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from gateway.publishing import StartFirst
from gateway.reload import ReloadOnSIGHUP
from gateway.signals import ExitCleanlyOnSIGTERM
from gateway.systemd import SystemdNotifier
from gateway.tap import Listener, Options, makeService
from gateway.workers.launcher import ProcessLauncher
from gateway.workers.sockets import BoundSockets
from gateway.workers.supervisor import Supervisor
from tests.gateway import config_file


def options(config: str, *args: str) -> Options:
    parsed = Options()
    parsed.parseOptions(["--config", config_file(config), *args])
    return parsed


def children(tree: object) -> list[object]:
    assert IServiceCollection.providedBy(tree)
    return list(tree)  # type: ignore[call-overload]


class AssemblyTests(SynchronousTestCase):
    def test_one_worker_is_one_process(self) -> None:
        """workers = 1: the tree serves the listeners itself, no supervisor."""
        tree = makeService(
            options("[auth]\nallow_anonymous = true\n", "--broker", "mqtt://b:1"),
            MemoryReactor(),
        )
        kinds = [type(c) for c in children(tree)]
        self.assertIn(Listener, kinds)
        self.assertNotIn(Supervisor, kinds)
        self.assertNotIn(BoundSockets, kinds)

    def test_parent(self) -> None:
        """
        workers = 2: the parent binds, supervises two workers, serves the admin
        listener, handles SIGTERM and SIGHUP and notifies systemd, in that
        order (stopped the other way round: the workers drain before the
        sockets close).
        """
        tree = makeService(
            options(
                "[server]\nworkers = 2\n[auth]\nallow_anonymous = true\n"
                '[admin]\nlisten = "tcp:9100:interface=127.0.0.1"\n',
                "--broker",
                "mqtt://b:1",
            ),
            MemoryReactor(),
        )
        self.assertEqual(
            [type(c) for c in children(tree)],
            [
                BoundSockets,
                Supervisor,
                Listener,
                ExitCleanlyOnSIGTERM,
                ReloadOnSIGHUP,
                SystemdNotifier,
            ],
        )
        supervisor = children(tree)[1]
        assert isinstance(supervisor, Supervisor)
        self.assertEqual(supervisor.count, 2)
        launcher = supervisor.launcher
        assert isinstance(launcher, ProcessLauncher)
        plan = launcher.plan(2)
        self.assertEqual(plan.number, 2)
        self.assertEqual(plan.count, 2)
        self.assertIn("--broker", plan.arguments)
        self.assertIsNone(plan.broker_protocol)
        [admin] = [c for c in children(tree) if isinstance(c, Listener)]
        self.assertEqual(admin.kind, "admin")

    def test_embedded_broker_in_the_parent(self) -> None:
        """
        With no broker configured the parent runs the embedded one, first, and
        each worker is given its address and MQTT version.
        """
        tree = makeService(
            options("[server]\nworkers = 2\n[auth]\nallow_anonymous = true\n"),
            MemoryReactor(),
        )
        first = children(tree)[0]
        self.assertIsInstance(first, StartFirst)
        [supervisor] = [c for c in children(tree) if isinstance(c, Supervisor)]
        launcher = supervisor.launcher
        assert isinstance(launcher, ProcessLauncher)
        plan = launcher.plan(1)
        arguments = list(plan.arguments)
        self.assertEqual(
            arguments[arguments.index("--broker") + 1], "mqtt://127.0.0.1:1883"
        )
        assert isinstance(first, StartFirst)
        self.assertEqual(plan.broker_protocol, first.broker.protocol)
