# -*- test-case-name: tests.workers.test_processes -*-
"""
A worker process: C{python -m gateway.workers.worker PLAN}, started by the
parent (L{gateway.workers.launcher}). It builds the same service tree as a
single process (L{gateway.tap.build}) on the listening sockets it inherited,
runs it under its own reactor, and answers the parent over the control channel
(L{WorkerControl}). It stops (draining as on SIGTERM) when told to, on SIGTERM,
and when the parent is gone. One that cannot start tells the parent why
(L{refuse}) and exits 1 with that one line, as a single process would.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import (
    FileLogObserver,
    Logger,
    formatEventAsClassicLogText,
    globalLogBeginner,
)
from twisted.protocols import amp
from twisted.python.failure import Failure

from gateway.interfaces import IPublisher
from gateway.status import PublisherStatus
from gateway.workers.control import (
    CONTROL_FD,
    Metrics,
    Ping,
    Ready,
    Refused,
    Reload,
    Status,
    Stop,
    pack,
)

__all__ = ["WorkerControl", "main", "refuse"]

_log = Logger()


class _WorkerSide(amp.AMP):
    """The worker's end of the control channel."""

    def __init__(self, control: WorkerControl) -> None:
        super().__init__()
        self.control = control

    def connectionMade(self) -> None:
        super().connectionMade()
        self.control.connected(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.control.lost()

    @Ping.responder
    def ping(self) -> dict[str, Any]:
        return {"connected": self.control.publisher.status().connected}

    @Reload.responder
    def reload(self) -> dict[str, Any]:
        return {"refused": list(self.control.reload().refused)}

    @Stop.responder
    def stop(self) -> dict[str, Any]:
        self.control.stop("told to by the parent")
        return {}

    @Metrics.responder
    def metrics(self) -> dict[str, Any]:
        render = self.control.render_metrics
        return {"text": pack(render()[0]) if render is not None else b""}


class WorkerControl(Service):
    """
    The worker's side of the control channel, on file descriptor C{fd}: says
    L{Ready} once started (add it to the tree last, after the listeners) and
    L{Status} whenever the broker session comes or goes; answers the parent's
    commands. When the channel closes without a L{Stop} (the parent is gone)
    the worker stops.
    """

    def __init__(
        self,
        number: int,
        publisher: IPublisher,
        reload: Callable[[], Any],
        render_metrics: Callable[[], tuple[bytes, str]] | None,
        *,
        reactor: Any,
        fd: int = CONTROL_FD,
    ) -> None:
        self.number = number
        self.publisher = publisher
        self.reload = reload
        self.render_metrics = render_metrics
        self.reactor = reactor
        self.fd = fd
        self._channel: _WorkerSide | None = None
        self._stopping = False
        self._stop_observing: Callable[[], None] | None = None

    def startService(self) -> None:
        """Open the channel and say L{Ready}."""
        super().startService()
        self.reactor.adoptStreamConnection(
            self.fd, socket.AF_UNIX, Factory.forProtocol(lambda: _WorkerSide(self))
        )
        socket.close(self.fd)

    def stopService(self) -> None:
        """Stop telling the parent about the broker session."""
        super().stopService()
        self._stopping = True
        if self._stop_observing is not None:
            self._stop_observing()
            self._stop_observing = None

    def connected(self, channel: _WorkerSide) -> None:
        """The channel is open: say L{Ready}, then tell each status change."""
        self._channel = channel
        channel.callRemote(
            Ready, worker=self.number, connected=self.publisher.status().connected
        ).addErrback(lambda _: None)
        self._stop_observing = self.publisher.observe(self._status_changed)

    def _status_changed(self, status: PublisherStatus) -> None:
        if self._channel is not None:
            self._channel.callRemote(Status, connected=status.connected)

    def lost(self) -> None:
        """The channel closed: without a L{Stop} first, the parent is gone."""
        self._channel = None
        self.stop("the parent process is gone")

    def stop(self, why: str) -> None:
        """Stop the worker (its tree drains as on SIGTERM)."""
        if self._stopping:
            return
        self._stopping = True
        _log.info("Worker {number} stopping: {why}", number=self.number, why=why)
        self.reactor.callLater(0, self.reactor.stop)


def refuse(
    reactor: Any, error: str, *, fd: int = CONTROL_FD, timeout: float = 5.0
) -> Deferred[None]:
    """
    Tell the parent, over the control channel on C{fd} (not opened yet: a
    worker that cannot start never starts its L{WorkerControl}), that this
    worker cannot start because of C{error}.

    @return: fires once the parent heard it (then the channel is closed), or
        could not be told, within C{timeout} seconds.
    """
    channel = amp.AMP()
    reactor.adoptStreamConnection(
        fd, socket.AF_UNIX, Factory.forProtocol(lambda: channel)
    )
    socket.close(fd)
    told: Deferred[Any] = channel.callRemote(Refused, error=error)
    told.addTimeout(timeout, reactor)

    def hang_up(_: object) -> None:
        if channel.transport is not None:
            channel.transport.loseConnection()

    return told.addBoth(hang_up)


def _start_logging(number: int) -> None:
    def format(event: dict[str, Any]) -> str | None:
        text = formatEventAsClassicLogText(event)
        if text is None:
            return None
        # "time [system] text": name the worker in place of the system.
        time, _, rest = text.partition(" [")
        return f"{time} [worker {number}] {rest.partition('] ')[2]}"

    globalLogBeginner.beginLoggingTo(
        [FileLogObserver(sys.stderr, format)], redirectStandardIO=False
    )


def _tree(plan: Any, reactor: Any) -> IService:
    """The worker's service tree for C{plan} (a L{WorkerPlan}), not started."""
    from gateway.tap import Options, build
    from gateway.workers.role import WorkerRole
    from gateway.workers.sockets import adopted_endpoints

    options = Options()
    options.parseOptions(list(plan.arguments))
    role = WorkerRole(
        number=plan.number,
        count=plan.count,
        endpoints=adopted_endpoints(
            reactor,
            list(plan.listeners),
            # As the listeners of one process: a header may take as long as an
            # idle connection lives.
            options.config.http.idle_timeout,
        ),
        broker_protocol=plan.broker_protocol,
    )
    assembly = build(options, reactor, role)
    metrics = assembly.metrics
    WorkerControl(
        plan.number,
        assembly.publisher,
        assembly.reload,
        metrics.render if metrics is not None else None,
        reactor=reactor,
    ).setServiceParent(assembly.root)
    return assembly.root


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run the worker the plan in C{argv[1]} describes, until it stops; exit 1
    with the one line of a L{StartupError} when it cannot start.
    """
    from twisted.internet import reactor

    from gateway.startup import StartupError
    from gateway.workers.launcher import WorkerPlan

    argv = sys.argv if argv is None else argv
    plan = WorkerPlan.from_json(argv[1])
    _start_logging(plan.number)
    failed: list[str] = []
    root: IService | None = None
    try:
        root = _tree(plan, reactor)
        root.privilegedStartService()
    except StartupError as e:
        failed.append(str(e.code))

    def start() -> None:
        if root is not None and not failed:
            try:
                root.startService()
                return
            except StartupError as e:
                failed.append(str(e.code))
        # As twistd would stop (one line, exit status 1), once the parent
        # has heard why.
        refuse(reactor, failed[0]).addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    if root is not None:
        reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    reactor.run()
    if failed:
        raise SystemExit(failed[0])


if __name__ == "__main__":
    main()
