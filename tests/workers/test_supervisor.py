# -*- test-case-name: tests.workers.test_supervisor -*-
"""
L{Supervisor} with a fake launcher and a L{Clock}: restarts with back-off,
readiness once every worker serves, pings and the watchdog condition, reload
and stop forwarded, and the parent's systemd notifier driven by it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from gateway.status import PublisherStatus
from gateway.systemd import SystemdNotifier
from gateway.workers.control import Ping, Reload, Stop
from gateway.workers.policy import RestartBackoff
from gateway.workers.supervisor import Supervisor, WorkerEvents
from tests.workers.support import NotifyListener


class FakeHandle:
    """A worker process that records what it is sent."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.calls: list[tuple[type[amp.Command], Deferred[Any]]] = []
        self.signals: list[str] = []

    def call(self, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((command, d))
        return d

    def kill(self, signal: str = "KILL") -> None:
        self.signals.append(signal)

    def answer(self, command: type[amp.Command], answer: Any = None) -> None:
        """Answer every pending C{command}."""
        for sent, d in self.calls:
            if sent is command and not d.called:
                d.callback(answer if answer is not None else {})

    def sent(self, command: type[amp.Command]) -> int:
        return sum(1 for sent, _ in self.calls if sent is command)


class FakeLauncher:
    def __init__(self) -> None:
        self.launched: list[tuple[int, FakeHandle]] = []
        self.events: WorkerEvents | None = None

    def launch(self, number: int, events: WorkerEvents) -> FakeHandle:
        self.events = events
        handle = FakeHandle(1000 + len(self.launched))
        self.launched.append((number, handle))
        return handle

    def current(self, number: int) -> FakeHandle:
        return [h for n, h in self.launched if n == number][-1]


class SupervisorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.launcher = FakeLauncher()
        self.refusals: list[str] = []
        self.supervisor = Supervisor(
            2,
            self.launcher,
            self.clock,
            backoff=RestartBackoff(initial=0.5, factor=2, maximum=4, stable=10),
            ping_interval=1,
            answer_deadline=3,
            hang_timeout=10,
            stop_timeout=5,
            on_refused=self.refusals.append,
        )
        self.supervisor.startService()

    def serve_all(self) -> None:
        for number in (1, 2):
            self.supervisor.worker_serving(number, connected=True)

    def test_starts_every_worker(self) -> None:
        """Starting launches workers 1 to N."""
        self.assertEqual([n for n, _ in self.launcher.launched], [1, 2])

    def test_restart_with_backoff(self) -> None:
        """
        A worker that dies is started again after the back-off, which grows
        while it keeps dying young and is reset by a long enough run; the
        other worker is left alone.
        """
        self.serve_all()
        for delay in (0.5, 1, 2, 4, 4):
            self.supervisor.worker_ended(1, "was killed by signal 9")
            launched = len(self.launcher.launched)
            self.clock.advance(delay - 0.01)
            self.assertEqual(len(self.launcher.launched), launched)
            self.clock.advance(0.01)
            self.assertEqual(len(self.launcher.launched), launched + 1)
            self.assertEqual(self.launcher.launched[-1][0], 1)
        self.clock.advance(10)
        self.supervisor.worker_ended(1, "exited with status 1")
        self.clock.advance(0.5)
        self.assertEqual(self.launcher.launched[-1][0], 1)
        self.assertEqual(self.supervisor.restarts, 6)
        self.assertEqual([n for n, _ in self.launcher.launched].count(2), 1)

    def test_refused_at_start_up_stops(self) -> None:
        """
        A worker that exits before it served while the gateway starts is not
        started again: its error line goes to on_refused, once, the gateway
        never becomes ready, and the other worker's exit while the parent
        stops starts nothing either.
        """
        error = "mqtt-http-gateway: log.access: cannot open /x/a.log: No such file"
        ready = self.supervisor.whenServing()
        self.supervisor.worker_serving(2, connected=True)
        self.supervisor.worker_refused(1, error)
        self.supervisor.worker_ended(1, "exited with status 1")
        self.assertEqual(self.refusals, [error])
        self.assertEqual(self.supervisor.refused, error)
        self.supervisor.worker_ended(2, "exited with status 0")
        self.clock.advance(60)
        self.assertEqual(len(self.launcher.launched), 2)
        self.assertEqual(self.refusals, [error])
        self.assertEqual(self.supervisor.restarts, 0)
        self.assertNoResult(ready)
        self.successResultOf(self.supervisor.stopService())

    def test_killed_at_start_up_stops(self) -> None:
        """Without an error line the reason says how the worker ended."""
        self.supervisor.worker_ended(2, "was killed by signal 9")
        self.assertEqual(
            self.refusals, ["worker 2 was killed by signal 9 before it served"]
        )
        stopped = self.supervisor.stopService()
        self.assertEqual(self.launcher.current(1).sent(Stop), 1)
        self.supervisor.worker_ended(1, "exited with status 0")
        self.successResultOf(stopped)
        self.assertEqual(len(self.launcher.launched), 2)

    def test_refused_after_start_up_restarts(self) -> None:
        """
        Once every worker has served, a new process that refuses to start is
        started again with the back-off, as any other exit.
        """
        self.serve_all()
        self.supervisor.worker_ended(1, "was killed by signal 9")
        self.clock.advance(0.5)
        self.supervisor.worker_refused(1, "mqtt-http-gateway: log.access: ...")
        self.supervisor.worker_ended(1, "exited with status 1")
        self.clock.advance(1)
        self.assertEqual([n for n, _ in self.launcher.launched], [1, 2, 1, 1])
        self.assertEqual(self.refusals, [])
        self.assertIsNone(self.supervisor.refused)

    def test_ready_once_all_serve(self) -> None:
        """whenServing fires once every worker serves, not before."""
        ready = self.supervisor.whenServing()
        self.supervisor.worker_serving(1, connected=False)
        self.assertNoResult(ready)
        self.supervisor.worker_serving(2, connected=False)
        self.successResultOf(ready)
        self.successResultOf(self.supervisor.whenServing())

    def test_connected_while_every_worker_is(self) -> None:
        """The status is connected only while every worker has its session."""
        seen: list[PublisherStatus] = []
        self.supervisor.observe(seen.append)
        self.supervisor.worker_serving(1, connected=True)
        self.assertFalse(self.supervisor.status().connected)
        self.supervisor.worker_serving(2, connected=True)
        self.assertTrue(self.supervisor.status().connected)
        self.supervisor.worker_status(2, connected=False)
        self.assertFalse(self.supervisor.status().connected)
        self.supervisor.worker_status(2, connected=True)
        self.supervisor.worker_ended(1, "was killed by signal 9")
        self.assertFalse(self.supervisor.status().connected)
        self.assertEqual([s.connected for s in seen], [True, False, True, False])

    def test_pings_and_answering(self) -> None:
        """
        Every worker is pinged each interval; answering holds while every
        one answered within the deadline, and stops when one falls silent.
        """
        self.serve_all()
        self.assertTrue(self.supervisor.answering())
        one, two = self.launcher.current(1), self.launcher.current(2)
        for _ in range(5):
            self.clock.advance(1)
            one.answer(Ping, {"connected": True})
            two.answer(Ping, {"connected": True})
            self.assertTrue(self.supervisor.answering())
        self.assertEqual(one.sent(Ping), 5)
        for _ in range(3):
            self.clock.advance(1)
            one.answer(Ping, {"connected": True})
        self.assertTrue(self.supervisor.answering())
        self.clock.advance(1)
        one.answer(Ping, {"connected": True})
        self.assertFalse(self.supervisor.answering())
        two.answer(Ping, {"connected": False})
        self.assertTrue(self.supervisor.answering())
        self.assertFalse(self.supervisor.status().connected)

    def test_dead_worker_is_not_answering(self) -> None:
        """A worker that died does not answer until its successor serves."""
        self.serve_all()
        self.supervisor.worker_ended(2, "was killed by signal 9")
        self.assertFalse(self.supervisor.answering())
        self.clock.advance(0.5)
        self.assertFalse(self.supervisor.answering())
        self.supervisor.worker_serving(2, connected=True)
        self.assertTrue(self.supervisor.answering())

    def test_silent_worker_killed(self) -> None:
        """A serving worker silent for the hang timeout is killed."""
        self.serve_all()
        two = self.launcher.current(2)
        for _ in range(11):
            self.clock.advance(1)
            self.launcher.current(1).answer(Ping, {"connected": True})
        self.assertEqual(two.signals, ["KILL"])
        self.assertEqual(self.launcher.current(1).signals, [])

    def test_reload_forwarded(self) -> None:
        """A reload is sent to every worker and fires once all answered."""
        self.serve_all()
        done = self.supervisor.reload()
        one, two = self.launcher.current(1), self.launcher.current(2)
        one.answer(Reload, {"refused": []})
        self.assertNoResult(done)
        two.answer(Reload, {"refused": []})
        self.successResultOf(done)

    def test_stop_waits_for_every_worker(self) -> None:
        """
        Stopping tells every worker to stop and fires once the last one has
        exited; none is started again.
        """
        self.serve_all()
        stopped = self.supervisor.stopService()
        one, two = self.launcher.current(1), self.launcher.current(2)
        self.assertEqual((one.sent(Stop), two.sent(Stop)), (1, 1))
        self.supervisor.worker_ended(1, "exited with status 0")
        self.assertNoResult(stopped)
        self.supervisor.worker_ended(2, "exited with status 0")
        self.successResultOf(stopped)
        self.clock.advance(60)
        self.assertEqual(len(self.launcher.launched), 2)
        self.assertEqual(one.signals + two.signals, [])

    def test_stop_kills_late_workers(self) -> None:
        """A worker that has not exited after the stop timeout is killed."""
        self.serve_all()
        stopped = self.supervisor.stopService()
        self.supervisor.worker_ended(1, "exited with status 0")
        self.clock.advance(5)
        self.assertEqual(self.launcher.current(2).signals, ["KILL"])
        self.supervisor.worker_ended(2, "was killed by signal 9")
        self.successResultOf(stopped)

    def test_stop_cancels_pending_restart(self) -> None:
        """A worker waiting for its restart is not started once stopping."""
        self.serve_all()
        self.supervisor.worker_ended(1, "was killed by signal 9")
        stopped = self.supervisor.stopService()
        self.supervisor.worker_ended(2, "exited with status 0")
        self.successResultOf(stopped)
        self.clock.advance(10)
        self.assertEqual(len(self.launcher.launched), 2)


class ParentNotifierTests(SynchronousTestCase):
    """The parent's systemd notifier, driven by the supervisor."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.notify = NotifyListener()
        self.addCleanup(self.notify.close)
        self.launcher = FakeLauncher()
        self.supervisor = Supervisor(
            2, self.launcher, self.clock, ping_interval=1, answer_deadline=3
        )
        self.notifier = SystemdNotifier(
            self.supervisor,
            clock=self.clock,
            environ={"NOTIFY_SOCKET": self.notify.address, "WATCHDOG_USEC": "3000000"},
            ready=self.supervisor.whenServing,
            alive=self.supervisor.answering,
        )
        self.supervisor.startService()
        self.notifier.startService()
        self.addCleanup(self.notifier.stopService)

    def test_ready_once_every_worker_serves(self) -> None:
        """READY=1 comes once, when the last worker serves."""
        self.clock.advance(2)
        self.assertNotIn("READY=1", self.notify.assignments())
        self.supervisor.worker_serving(1, connected=True)
        self.assertNotIn("READY=1", self.notify.assignments())
        self.supervisor.worker_serving(2, connected=True)
        self.supervisor.worker_ended(2, "was killed by signal 9")
        self.clock.advance(1)
        self.supervisor.worker_serving(2, connected=True)
        self.assertEqual(self.notify.assignments().count("READY=1"), 1)

    def test_watchdog_while_workers_answer(self) -> None:
        """WATCHDOG=1 is sent only while every worker answers its pings."""
        for number in (1, 2):
            self.supervisor.worker_serving(number, connected=True)
        self.assertEqual(self.notify.assignments().count("WATCHDOG=1"), 1)
        for _ in range(3):
            self.clock.advance(1)
            for number in (1, 2):
                self.launcher.current(number).answer(Ping, {"connected": True})
        self.assertEqual(self.notify.assignments().count("WATCHDOG=1"), 4)
        for _ in range(5):
            self.clock.advance(1)
            self.launcher.current(1).answer(Ping, {"connected": True})
        pings = self.notify.assignments().count("WATCHDOG=1")
        self.assertLess(pings, 4 + 5)
        for _ in range(3):
            self.clock.advance(1)
            self.launcher.current(1).answer(Ping, {"connected": True})
        self.assertEqual(self.notify.assignments().count("WATCHDOG=1"), pings)
        self.launcher.current(2).answer(Ping, {"connected": True})
        self.clock.advance(1)
        self.assertEqual(self.notify.assignments().count("WATCHDOG=1"), pings + 1)
