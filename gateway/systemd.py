# -*- test-case-name: tests.test_systemd -*-
"""
Telling systemd how the daemon is doing (C{Type=notify}, C{WatchdogSec=}),
without libsystemd: sd_notify is one datagram per message to the AF_UNIX socket
named by C{$NOTIFY_SOCKET} (a path, or an abstract name written with a leading
C{@}).

L{SystemdNotifier} is the service that does it: C{READY=1} when it starts (it
is added last to the service tree, so every listener listens by then), a
C{STATUS=} line whenever the broker connection changes, C{WATCHDOG=1} from the
reactor every third of C{$WATCHDOG_USEC} (so a wedged reactor misses its pings
and systemd restarts the daemon), C{STOPPING=1} when it stops. Without
C{$NOTIFY_SOCKET} (not run by systemd) it does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.clock import default_clock
from gateway.mqtt.passthrough import PassthroughPublisher
from gateway.mqtt.publisher import SharedPublisher

__all__ = ["Notifier", "SystemdNotifier", "broker_status", "watchdog_interval"]

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


def broker_status(publisher: object) -> str:
    """
    One line on the broker connection of C{publisher}, for C{STATUS=}.
    """
    publisher = getattr(publisher, "wrapped", publisher)
    connected = bool(getattr(publisher, "connected", False))
    if isinstance(publisher, SharedPublisher):
        session = publisher.session
        if connected:
            level = "5" if session.protocol_level == 5 else "3.1.1"
            return f"Connected to {session.current_broker} (MQTT {level})"
        brokers = ", ".join(broker.name for broker in session.brokers)
        return f"Broker unreachable, retrying ({brokers})"
    if isinstance(publisher, PassthroughPublisher):
        if connected:
            return "Broker mode: a broker is reachable"
        return "Broker mode: no broker reachable, retrying"
    return "Ready" if connected else "Broker unreachable, retrying"


class SystemdNotifier(Service):
    """
    Keeps systemd informed (see the module docstring). Add it to the service
    tree last, so that C{READY=1} follows the listeners.
    """

    def __init__(
        self,
        publisher: object | None = None,
        *,
        clock: IReactorTime | None = None,
        environ: Mapping[str, str] | None = None,
        status_interval: float = 1.0,
    ) -> None:
        """
        @param publisher: the L{IPublisher} whose broker connection the status
            describes; C{None} for no status updates.
        @param clock: schedules pings and status checks; the global reactor if
            C{None}.
        @param environ: where C{NOTIFY_SOCKET}, C{WATCHDOG_USEC} and
            C{WATCHDOG_PID} are read (by default C{os.environ}).
        @param status_interval: seconds between checks of the broker connection.
        """
        clock = default_clock(clock)
        self._clock = clock
        self.publisher = publisher
        self.notifier = Notifier.from_environment(environ)
        self.watchdog = watchdog_interval(environ) if self.notifier else None
        self.status_interval = status_interval
        self.status: str | None = None
        self._loops: list[LoopingCall] = []

    def startService(self) -> None:
        """Say READY=1 with a first status; start pinging and watching."""
        super().startService()
        if self.notifier is None:
            return
        self.status = "Listening; connecting to the MQTT broker"
        if self.publisher is not None and getattr(self.publisher, "connected", False):
            self.status = broker_status(self.publisher)
        self.notifier.send("READY=1", f"STATUS={self.status}")
        if self.watchdog is not None:
            self._loop(self.ping, self.watchdog)
        if self.publisher is not None:
            self._loop(self.update_status, self.status_interval, now=False)

    def stopService(self) -> None:
        """Say STOPPING=1; stop pinging."""
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self.notifier is not None:
            self.notifier.send("STOPPING=1", "STATUS=Shutting down")
            self.notifier.close()

    def ping(self) -> None:
        """Send C{WATCHDOG=1}: the reactor is alive."""
        if self.notifier is not None:
            self.notifier.send("WATCHDOG=1")

    def update_status(self) -> None:
        """Send the broker status if it changed since the last one sent."""
        if self.notifier is None or self.publisher is None:
            return
        status = broker_status(self.publisher)
        if status != self.status:
            self.status = status
            self.notifier.send(f"STATUS={status}")

    def _loop(self, call: Any, interval: float, now: bool = True) -> None:
        loop = LoopingCall(call)
        loop.clock = self._clock
        loop.start(interval, now=now)
        self._loops.append(loop)
