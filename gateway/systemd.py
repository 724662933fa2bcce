# -*- test-case-name: tests.test_systemd -*-
"""
Telling systemd how the daemon is doing (C{Type=notify}, C{WatchdogSec=}),
without libsystemd: sd_notify is one datagram per message to the AF_UNIX socket
named by C{$NOTIFY_SOCKET} (a path, or an abstract name written with a leading
C{@}).

L{SystemdNotifier} is the service that does it: C{READY=1} when it starts (it
is added last to the service tree, so every listener listens by then), a
C{STATUS=} line whenever the publisher's L{PublisherStatus} observers hear the
broker connection change (and once, a second after start, if it is still
down), C{WATCHDOG=1} from the
reactor every third of C{$WATCHDOG_USEC} (so a wedged reactor misses its pings
and systemd restarts the daemon), C{STOPPING=1} when it stops. Without
C{$NOTIFY_SOCKET} (not run by systemd) it does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.clock import default_clock
from gateway.status import PublisherStatus, StatusObserver

__all__ = [
    "Notifier",
    "StatusSource",
    "SystemdNotifier",
    "broker_status",
    "watchdog_interval",
]

_log = Logger()


class Notifier:
    """
    Sends sd_notify messages to one notification socket.

    Sending never blocks and never raises: a message that cannot be sent is
    logged once per kind of error and dropped.
    """

    def __init__(self, address: str) -> None:
        """
        @param address: the value of C{$NOTIFY_SOCKET}: a socket path, or
            C{@name} for a name in the abstract namespace.
        """
        self.address = address
        self._target: str | bytes = (
            b"\0" + address[1:].encode() if address.startswith("@") else address
        )
        self._socket: socket.socket | None = None
        self._errors: set[int | None] = set()

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None
    ) -> Notifier | None:
        """
        A notifier for C{$NOTIFY_SOCKET}, or C{None} when it is not set (or
        names neither a path nor an abstract socket).
        """
        address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
        if not address.startswith(("/", "@")) or len(address) < 2:
            return None
        return cls(address)

    def send(self, *assignments: str) -> bool:
        """
        Send the C{assignments} (C{"READY=1"}, C{"STATUS=..."}) in one
        datagram.

        @return: whether it was sent.
        """
        message = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto(message, self._target)
        except OSError as error:
            if error.errno not in self._errors:
                self._errors.add(error.errno)
                _log.warn(
                    "Cannot notify systemd at {address}: {error}",
                    address=self.address,
                    error=error.strerror or error,
                )
            return False
        return True

    def close(self) -> None:
        """Close the socket (a later L{send} opens a new one)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """
    How often to send C{WATCHDOG=1}, in seconds: a third of C{$WATCHDOG_USEC},
    or C{None} when the watchdog is off (unset, not a positive number, or
    C{$WATCHDOG_PID} names another process).

    @param pid: this process's id (by default C{os.getpid()}).
    """
    environ = os.environ if environ is None else environ
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return usec / 3 / 1e6


def broker_status(status: PublisherStatus, brokers: Sequence[str] = ()) -> str:
    """
    One line on the broker connection described by C{status}, for C{STATUS=}.

    @param brokers: the names of the brokers tried in turn, named while none
        is reachable.
    """
    if status.sessions is not None:
        if status.connected:
            return "Broker mode: a broker is reachable"
        return "Broker mode: no broker reachable, retrying"
    if status.connected:
        if status.broker is None:
            return "Ready"
        level = "5" if status.protocol_level == 5 else "3.1.1"
        return f"Connected to {status.broker} (MQTT {level})"
    if brokers:
        return f"Broker unreachable, retrying ({', '.join(brokers)})"
    return "Broker unreachable, retrying"


class StatusSource(Protocol):
    """What the status lines describe: an L{IPublisher}, or a parent's workers."""

    def status(self) -> PublisherStatus:
        """The broker connection's state now."""

    def observe(self, observer: StatusObserver) -> Callable[[], None]:
        """Call C{observer} at each change; return how to stop."""


class SystemdNotifier(Service):
    """
    Keeps systemd informed (see the module docstring). Add it to the service
    tree last, so that C{READY=1} follows the listeners.
    """

    def __init__(
        self,
        publisher: StatusSource | None = None,
        *,
        brokers: Sequence[str] = (),
        clock: IReactorTime | None = None,
        environ: Mapping[str, str] | None = None,
        connect_grace: float = 1.0,
        ready: Callable[[], Deferred[None]] | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        """
        @param publisher: the L{IPublisher} whose broker connection the status
            describes; C{None} for no status updates.
        @param brokers: the names of the brokers tried, for the status while
            none is reachable.
        @param clock: schedules pings; the global reactor if C{None}.
        @param environ: where C{NOTIFY_SOCKET}, C{WATCHDOG_USEC} and
            C{WATCHDOG_PID} are read (by default C{os.environ}).
        @param connect_grace: seconds after start after which a broker still
            not connected is reported unreachable.
        @param ready: when C{READY=1} is due: the Deferred it returns fires
            (at start when C{None}).
        @param alive: whether C{WATCHDOG=1} is due at a ping (always when
            C{None}): a parent pings only while its workers answer.
        """
        clock = default_clock(clock)
        self._clock = clock
        self.publisher = publisher
        self.brokers = tuple(brokers)
        self.notifier = Notifier.from_environment(environ)
        self.watchdog = watchdog_interval(environ) if self.notifier else None
        self.connect_grace = connect_grace
        self._ready = ready
        self._alive = alive
        self._waiting: Deferred[None] | None = None
        self.status: str | None = None
        self._pings: LoopingCall | None = None
        self._grace: IDelayedCall | None = None
        self._stop_observing: Callable[[], None] | None = None

    def startService(self) -> None:
        """
        Say READY=1 with a first status (once C{ready} fires, when given);
        start pinging and observing.
        """
        super().startService()
        if self.notifier is None:
            return
        if self._ready is None:
            self._announce()
            return
        self._waiting = self._ready()
        self._waiting.addCallback(lambda _: self._announce())

    def _announce(self) -> None:
        self._waiting = None
        if self.notifier is None or not self.running:
            return
        publisher = self.publisher
        self.status = "Listening; connecting to the MQTT broker"
        if publisher is not None and publisher.status().connected:
            self.status = broker_status(publisher.status(), self.brokers)
        self.notifier.send("READY=1", f"STATUS={self.status}")
        if self.watchdog is not None:
            self._pings = LoopingCall(self.ping)
            self._pings.clock = self._clock
            self._pings.start(self.watchdog, now=True)
        if publisher is not None:
            self._stop_observing = publisher.observe(self.status_changed)
            self._grace = self._clock.callLater(self.connect_grace, self._end_grace)

    def stopService(self) -> None:
        """Say STOPPING=1; stop pinging and observing."""
        super().stopService()
        if self._waiting is not None:
            self._waiting.cancel()
            self._waiting = None
        if self._pings is not None and self._pings.running:
            self._pings.stop()
        self._pings = None
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        if self._stop_observing is not None:
            self._stop_observing()
        self._stop_observing = None
        if self.notifier is not None:
            self.notifier.send("STOPPING=1", "STATUS=Shutting down")
            self.notifier.close()

    def ping(self) -> None:
        """Send C{WATCHDOG=1}: the reactor is alive (and C{alive} says so)."""
        if self.notifier is not None and (self._alive is None or self._alive()):
            self.notifier.send("WATCHDOG=1")

    def status_changed(self, status: PublisherStatus) -> None:
        """Send the line for C{status} if it differs from the last one sent."""
        if self.notifier is None:
            return
        line = broker_status(status, self.brokers)
        if line != self.status:
            self.status = line
            self.notifier.send(f"STATUS={line}")

    def _end_grace(self) -> None:
        self._grace = None
        if self.publisher is not None:
            self.status_changed(self.publisher.status())
