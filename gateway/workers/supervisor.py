# -*- test-case-name: tests.workers.test_supervisor -*-
"""
The parent's supervision of its workers: L{Supervisor} starts N of them through
a L{Launcher}, starts again one that dies (after a L{RestartBackoff}, logged),
pings them, kills one that stops answering, forwards reloads and, when
stopped, has each drain and waits until every one has exited.

A worker that refuses to start stops the gateway instead (the rule is
L{gateway.workers.policy.after_exit}): until every worker has said once that
it serves, a worker that exits before it serves has the supervisor log that
worker's own error line and call its C{on_refused} with it, once (the parent
then stops, which stops the other workers, and exits 1); it is not started
again, nor is any other worker, and L{Supervisor.whenServing} never fires.

It is also what the parent's C{/readyz}, C{/metrics} and systemd notifier ask:
its L{PublisherStatus} is connected while every worker has its broker session,
L{Supervisor.whenServing} fires once every worker serves, and
L{Supervisor.answering} tells whether every worker answers its pings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from gateway.status import PublisherStatus, StatusObserver, StatusObservers
from gateway.workers.control import Ping, Reload, Stop
from gateway.workers.policy import (
    GiveUp,
    RestartBackoff,
    WorkerState,
    after_exit,
    all_answering,
    all_connected,
    all_serving,
)

__all__ = ["Launcher", "Supervisor", "WorkerEvents", "WorkerHandle"]

_log = Logger()


class WorkerHandle(Protocol):
    """One running worker process, as the supervisor drives it."""

    @property
    def pid(self) -> int | None:
        """Its process id."""

    def call(self, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        """Send C{command} over the control channel; fire with the answer."""

    def kill(self, signal: str = "KILL") -> None:
        """Send the process C{signal}, if it still runs."""


class WorkerEvents(Protocol):
    """What a launched worker reports (L{Supervisor} implements it)."""

    def worker_serving(self, number: int, connected: bool) -> None:
        """Worker C{number} serves every listener."""

    def worker_status(self, number: int, connected: bool) -> None:
        """Worker C{number}'s broker session came up or went down."""

    def worker_refused(self, number: int, error: str) -> None:
        """Worker C{number} cannot start; C{error} is its one-line reason."""

    def worker_ended(self, number: int, why: str) -> None:
        """Worker C{number}'s process has exited (C{why}: how, for the log)."""


class Launcher(Protocol):
    """Starts worker processes."""

    def launch(self, number: int, events: WorkerEvents) -> WorkerHandle:
        """Start worker C{number}, which reports to C{events}."""


class Supervisor(Service):
    """
    Keeps C{count} workers running while it runs (see the module docstring).
    """

    def __init__(
        self,
        count: int,
        launcher: Launcher,
        clock: IReactorTime,
        *,
        backoff: RestartBackoff | None = None,
        ping_interval: float = 1.0,
        answer_deadline: float = 5.0,
        hang_timeout: float = 20.0,
        stop_timeout: float = 30.0,
        on_refused: Callable[[str], object] | None = None,
    ) -> None:
        """
        @param ping_interval: seconds between pings.
        @param answer_deadline: how recent the last answer of every worker
            must be for L{answering}.
        @param hang_timeout: seconds without an answer after which a serving
            worker is killed (and started again).
        @param stop_timeout: seconds the workers have to drain and exit when
            stopped; those still running then are killed.
        @param on_refused: called once, with the worker's error line, when a
            worker refused to start (see the module docstring).
        """
        self.count = count
        self.launcher = launcher
        self.clock = clock
        self.backoff = backoff if backoff is not None else RestartBackoff()
        self.ping_interval = ping_interval
        self.answer_deadline = answer_deadline
        self.hang_timeout = hang_timeout
        self.stop_timeout = stop_timeout
        self.states = {n: WorkerState(n) for n in range(1, count + 1)}
        self.handles: dict[int, WorkerHandle] = {}
        self.restarts = 0
        self.on_refused = on_refused
        #: The error line of the worker that refused to start, once one did.
        self.refused: str | None = None
        self._restart_calls: dict[int, IDelayedCall] = {}
        self._observers = StatusObservers()
        self._status = PublisherStatus()
        self._serving: list[Deferred[None]] = []
        self._served = False
        self._stopped: Deferred[None] | None = None
        self._pings: LoopingCall | None = None

    # -- service

    def startService(self) -> None:
        """Start every worker and the pings."""
        super().startService()
        for number in self.states:
            self._start(number)
        self._pings = LoopingCall(self.ping)
        self._pings.clock = self.clock
        self._pings.start(self.ping_interval, now=False)

    def stopService(self) -> Deferred[None]:
        """
        Have every worker drain and exit; kill those still running after
        C{stop_timeout} seconds.

        @return: fires once every worker has exited.
        """
        super().stopService()
        if self._pings is not None and self._pings.running:
            self._pings.stop()
        for call in self._restart_calls.values():
            call.cancel()
        self._restart_calls.clear()
        stopped: Deferred[None] = Deferred()
        self._stopped = stopped
        if not self.handles:
            stopped.callback(None)
            return stopped
        _log.info("Stopping {count} worker(s)", count=len(self.handles))
        for handle in list(self.handles.values()):
            handle.call(Stop).addErrback(_terminate, handle)
        deadline = self.clock.callLater(self.stop_timeout, self._kill_remaining)
        stopped.addBoth(lambda result: _cancel(deadline, result))
        return stopped

    def _kill_remaining(self) -> None:
        for number, handle in list(self.handles.items()):
            _log.warn(
                "Worker {number} (pid {pid}) did not exit in {timeout:g} s; killing it",
                number=number,
                pid=handle.pid,
                timeout=self.stop_timeout,
            )
            handle.kill()

    # -- the workers' reports

    def _start(self, number: int) -> None:
        self._restart_calls.pop(number, None)
        state = self.states[number]
        state.running = True
        state.serving = state.connected = False
        state.answered = state.error = None
        state.started = self.clock.seconds()
        handle = self.launcher.launch(number, self)
        self.handles[number] = handle
        _log.info("Started worker {number} (pid {pid})", number=number, pid=handle.pid)

    def worker_serving(self, number: int, connected: bool) -> None:
        """Worker C{number} serves; once all do, L{whenServing} fires."""
        state = self.states[number]
        state.serving = state.served_once = True
        state.connected = connected
        state.answered = self.clock.seconds()
        if not self._served and all_serving(self.states.values()):
            self._served = True
            _log.info("All {count} workers serve", count=self.count)
            waiting, self._serving = self._serving, []
            for d in waiting:
                d.callback(None)
        self._changed()

    def worker_refused(self, number: int, error: str) -> None:
        """Worker C{number} cannot start: C{error}, the line it exits with."""
        self.states[number].error = error

    def worker_status(self, number: int, connected: bool) -> None:
        """Worker C{number}'s broker session is up or down now."""
        self.states[number].connected = connected
        self._changed()

    def worker_ended(self, number: int, why: str) -> None:
        """
        Worker C{number} exited: started again after the back-off, unless
        the supervisor is stopping (then the last one to exit ends the stop)
        or a worker refused to start (see the module docstring).
        """
        state = self.states[number]
        handle = self.handles.pop(number, None)
        pid = handle.pid if handle is not None else None
        ran_for = self.clock.seconds() - state.started
        decision = after_exit(state, self.states.values(), ran_for, why, self.backoff)
        state.running = state.serving = state.connected = False
        self._changed()
        if self._stopped is not None or self.refused is not None:
            _log.info(
                "Worker {number} (pid {pid}) {why}", number=number, pid=pid, why=why
            )
            stopped = self._stopped
            if stopped is not None and not self.handles and not stopped.called:
                stopped.callback(None)
            return
        if isinstance(decision, GiveUp):
            self._give_up(number, pid, decision.reason)
            return
        state.deaths, delay = decision.deaths, decision.delay
        _log.warn(
            "Worker {number} (pid {pid}) {why} after {ran_for:.1f} s; starting it "
            "again in {delay:g} s",
            number=number,
            pid=pid,
            why=why,
            ran_for=ran_for,
            delay=delay,
        )
        self.restarts += 1
        self._restart_calls[number] = self.clock.callLater(delay, self._start, number)

    def _give_up(self, number: int, pid: int | None, reason: str) -> None:
        self.refused = reason
        _log.critical(
            "Worker {number} (pid {pid}) could not start; stopping the gateway: "
            "{reason}",
            number=number,
            pid=pid,
            reason=reason,
        )
        for call in self._restart_calls.values():
            call.cancel()
        self._restart_calls.clear()
        if self.on_refused is not None:
            self.on_refused(reason)

    # -- pings, reload

    def ping(self) -> None:
        """Ping every running worker; kill one silent for C{hang_timeout}."""
        now = self.clock.seconds()
        for number, handle in list(self.handles.items()):
            state = self.states[number]
            since = state.answered if state.answered is not None else state.started
            if state.serving and now - since > self.hang_timeout:
                _log.warn(
                    "Worker {number} (pid {pid}) has not answered for {seconds:.0f} s; "
                    "killing it",
                    number=number,
                    pid=handle.pid,
                    seconds=now - since,
                )
                handle.kill()
                continue
            handle.call(Ping).addCallbacks(
                self._answered, lambda _: None, callbackArgs=(number, handle)
            )

    def _answered(
        self, answer: dict[str, Any], number: int, handle: WorkerHandle
    ) -> None:
        if self.handles.get(number) is not handle:
            return  # the answer of a process that has exited since
        state = self.states[number]
        state.answered = self.clock.seconds()
        if state.connected != answer["connected"]:
            state.connected = answer["connected"]
            self._changed()

    def answering(self) -> bool:
        """Whether every worker answered a ping within C{answer_deadline} s."""
        return all_answering(
            self.states.values(), self.clock.seconds(), self.answer_deadline
        )

    def reload(self) -> Deferred[None]:
        """Have every worker reload (as SIGHUP does); fire once all did."""
        _log.info("Reloading {count} worker(s)", count=len(self.handles))
        calls = [
            handle.call(Reload).addErrback(_not_reloaded, number)
            for number, handle in list(self.handles.items())
        ]
        return DeferredList(calls).addCallback(lambda _: None)

    def call_all(
        self, command: type[amp.Command], **arguments: Any
    ) -> Deferred[list[tuple[int, Any]]]:
        """
        Send C{command} to every running worker.

        @return: fires with (number, answer) for each worker that answered.
        """
        numbers = sorted(self.handles)
        calls = [self.handles[n].call(command, **arguments) for n in numbers]

        def answered(results: list[tuple[bool, Any]]) -> list[tuple[int, Any]]:
            return [
                (number, value)
                for number, (ok, value) in zip(numbers, results, strict=True)
                if ok
            ]

        return DeferredList(calls, consumeErrors=True).addCallback(answered)

    # -- status

    def whenServing(self) -> Deferred[None]:
        """Fires once every worker serves (at once if that happened already)."""
        d: Deferred[None] = Deferred()
        if self._served:
            d.callback(None)
        else:
            self._serving.append(d)
        return d

    def status(self) -> PublisherStatus:
        """Connected while every worker has its broker session."""
        return self._status

    def observe(self, observer: StatusObserver) -> Callable[[], None]:
        """Hear every change of L{status}."""
        return self._observers.observe(observer)

    def _changed(self) -> None:
        status = PublisherStatus(connected=all_connected(self.states.values()))
        if status != self._status:
            self._status = status
            self._observers.notify(status)


def _terminate(failure: Failure, handle: WorkerHandle) -> None:
    # The channel is gone but the process may not be: SIGTERM drains it too.
    handle.kill("TERM")


def _not_reloaded(failure: Failure, number: int) -> None:
    _log.warn("Worker {number} did not reload: {why}", number=number, why=failure.value)


def _cancel(call: IDelayedCall, result: Any) -> Any:
    if call.active():
        call.cancel()
    return result
