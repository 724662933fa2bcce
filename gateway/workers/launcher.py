# -*- test-case-name: tests.workers.test_processes -*-
"""
Starting a worker process: the same Python running C{-m gateway.workers.worker}
with the parent's command line, the listening sockets as file descriptors 4
and up, and its end of an AMP control channel (a Unix socket pair) as 3.

The worker's environment is the parent's without systemd's variables: only
the parent (the service's main process) talks to systemd, and the listening
sockets systemd passed are the parent's to hand over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

import gateway
from gateway.workers.control import CONTROL_FD, Ready, Refused, Status
from gateway.workers.sockets import BoundSockets, Inherited
from gateway.workers.supervisor import WorkerEvents, WorkerHandle

__all__ = ["ProcessLauncher", "WorkerPlan", "worker_environment"]

_log = Logger()

#: What systemd tells its main process; a worker must not act on it.
_SYSTEMD_VARIABLES = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)


@attrs.frozen
class WorkerPlan:
    """
    What a worker is told on its command line (as one JSON argument).

    @ivar number: its number, 1 to C{count}.
    @ivar arguments: the parent's C{mqtt-http-gateway} command line (plus
        C{--broker} for the parent's embedded broker).
    @ivar listeners: the listening sockets it inherits.
    @ivar broker_protocol: the embedded broker's MQTT version, if one runs.
    """

    number: int
    count: int
    arguments: tuple[str, ...]
    listeners: tuple[Inherited, ...]
    broker_protocol: str | None = None

    def to_json(self) -> str:
        """The plan as one command-line argument."""
        return json.dumps(
            {
                "number": self.number,
                "count": self.count,
                "arguments": list(self.arguments),
                "listeners": [i.as_json() for i in self.listeners],
                "broker_protocol": self.broker_protocol,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> WorkerPlan:
        """The plan L{to_json} wrote."""
        value = json.loads(text)
        return cls(
            number=value["number"],
            count=value["count"],
            arguments=tuple(value["arguments"]),
            listeners=tuple(Inherited.from_json(i) for i in value["listeners"]),
            broker_protocol=value["broker_protocol"],
        )


def worker_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """
    A worker's environment: C{environ} (by default C{os.environ}) without
    systemd's variables, with this C{gateway} package first on the path.
    """
    env = {
        name: value
        for name, value in (os.environ if environ is None else environ).items()
        if name not in _SYSTEMD_VARIABLES
    }
    source = os.path.dirname(os.path.dirname(os.path.abspath(gateway.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [source] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    return env


class _ParentSide(amp.AMP):
    """The parent's end of one worker's control channel."""

    def __init__(self, number: int, events: WorkerEvents) -> None:
        super().__init__()
        self.number = number
        self.events = events

    @Ready.responder
    def ready(self, worker: int, connected: bool) -> dict[str, Any]:
        self.events.worker_serving(self.number, connected)
        return {}

    @Refused.responder
    def refused(self, error: str) -> dict[str, Any]:
        self.events.worker_refused(self.number, error)
        return {}

    @Status.responder
    def status(self, connected: bool) -> dict[str, Any]:
        self.events.worker_status(self.number, connected)
        return {}


class _Watch(ProcessProtocol):
    def __init__(self, number: int, events: WorkerEvents) -> None:
        self.number = number
        self.events = events

    def processEnded(self, reason: Failure) -> None:
        self.events.worker_ended(self.number, _how(reason))


def _how(reason: Failure) -> str:
    if reason.check(ProcessDone):
        return "exited with status 0"
    value = reason.value
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return f"was killed by signal {value.signal}"
        return f"exited with status {value.exitCode}"
    return f"ended: {reason.value}"


class _Handle:
    """A running worker: its process and the parent's end of its channel."""

    def __init__(self, process: Any, control: _ParentSide) -> None:
        self.process = process
        self.control = control
        # Kept: the transport forgets its pid once the process has ended.
        self._pid: int | None = process.pid

    @property
    def pid(self) -> int | None:
        return self._pid

    def call(self, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        answer: Deferred[Any] = self.control.callRemote(command, **arguments)
        return answer

    def kill(self, signal: str = "KILL") -> None:
        with contextlib.suppress(ProcessExitedAlready):
            self.process.signalProcess(signal)


class ProcessLauncher:
    """
    Starts worker processes of the parent's command line C{arguments} serving
    the sockets of C{sockets} (a L{Launcher}).
    """

    def __init__(
        self,
        reactor: Any,
        sockets: BoundSockets,
        count: int,
        arguments: Sequence[str],
        broker_protocol: Callable[[], str] | None = None,
    ) -> None:
        """
        @param broker_protocol: a callable giving the embedded broker's MQTT
            version once it runs, or C{None} when a broker is configured.
        """
        self.reactor = reactor
        self.sockets = sockets
        self.count = count
        self.arguments = tuple(arguments)
        self.broker_protocol = broker_protocol

    def plan(self, number: int) -> WorkerPlan:
        """What worker C{number} is told."""
        return WorkerPlan(
            number=number,
            count=self.count,
            arguments=self.arguments,
            listeners=tuple(self.sockets.inherited),
            broker_protocol=self.broker_protocol() if self.broker_protocol else None,
        )

    def launch(self, number: int, events: WorkerEvents) -> WorkerHandle:
        """Start worker C{number}, reporting to C{events}."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        control = _ParentSide(number, events)
        try:
            self.reactor.adoptStreamConnection(
                ours.fileno(), socket.AF_UNIX, _One(control)
            )
            fds: dict[int, Any] = {1: 1, 2: 2, CONTROL_FD: theirs.fileno()}
            fds.update(self.sockets.child_fds())
            process = self.reactor.spawnProcess(
                _Watch(number, events),
                sys.executable,
                [
                    sys.executable,
                    "-m",
                    "gateway.workers.worker",
                    self.plan(number).to_json(),
                ],
                env=worker_environment(),
                childFDs=fds,
            )
        finally:
            ours.close()
            theirs.close()
        return _Handle(process, control)


class _One(Factory):
    """A factory for the one protocol of an adopted connection."""

    def __init__(self, protocol: amp.AMP) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: Any) -> amp.AMP:
        return self.protocol_instance
