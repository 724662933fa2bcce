# -*- test-case-name: tests.test_embedded -*-
"""
The embedded MQTT broker of the zero-config default.

With no broker configured the daemon runs an embedded broker on 127.0.0.1:1883 with
anonymous access: Mosquitto as a supervised child process when the C{mosquitto}
program is on C{PATH} (L{gateway.mosquitto}; MQTT 5, so every MQTT 5 feature of the
APIs works), otherwise amqtt (MQTT 3.1.1 only), as L{embedded_broker} chooses and
logs.

amqtt runs in the daemon's process. twistd has installed its own reactor before
any of our code runs, so amqtt gets a private asyncio event loop in a dedicated
thread, owned by L{EmbeddedBrokerService}. Nothing crosses between the two worlds
except through C{reactor.callFromThread} and C{loop.call_soon_threadsafe}.

What amqtt 0.12 does differently from Mosquitto (pinned by tests where it matters):
  - MQTT 3.1.1 only. An MQTT 5 CONNECT without properties gets CONNACK return code
    1 (unacceptable protocol version); one with properties gets no answer at all.
  - Messages reach a subscriber at the QoS it subscribed with, not at
    min(publish QoS, subscription QoS): a QoS 0 publish arrives as QoS 2 at a QoS 2
    subscriber.
  - With anonymous access on, every session counts as anonymous and is dropped on
    disconnect: no persistent sessions, no queued messages for offline clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.amqtt_logging import QUIET_AMQTT_LOGGING
from gateway.local_broker import LocalBrokerService
from gateway.mosquitto import MosquittoBrokerService, find_mosquitto

log = Logger()

_SHUTDOWN_TIMEOUT = 10.0


class EmbeddedBrokerError(Exception):
    """
    The embedded broker could not start (or stopped before it was listening).

    The message is one line naming the address, e.g. C{Embedded MQTT broker could not
    listen on 127.0.0.1:1883: Address already in use}.
    """


def brokerConfig(host: str, port: int) -> dict[str, Any]:
    """
    The amqtt 0.12 configuration of the embedded broker.

    One plain TCP listener on C{host:port}, anonymous clients allowed, and no other
    plugin: no C{$SYS} topics, no event or packet logging, no topic ACL.
    """
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {
                "allow_anonymous": True,
            },
        },
    }


class EmbeddedBrokerService(LocalBrokerService):
    """
    Runs an amqtt broker (MQTT 3.1.1, anonymous allowed, retained messages, QoS 0, 1
    and 2) on C{host:port} while this service is running.

    L{startService} returns at once; L{whenListening} tells when the broker accepts
    connections or why it could not start. L{stopService} closes every client
    connection and the listening socket, and its L{Deferred} fires once the broker's
    thread has ended, without blocking the reactor. Retained messages and sessions
    live in memory only: they do not survive a restart.
    @ivar protocol: the MQTT version the gateway's session should speak to it.
    """

    protocol = "3.1.1"
    kind = "amqtt"

    def __init__(
        self, host: str = "127.0.0.1", port: int = 1883, reactor: Any = None
    ) -> None:
        super().__init__(host, port, reactor)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopRequested: asyncio.Event | None = None
        self._listening: bool | Failure | None = None
        self._listeningWaiters: list[Deferred[None]] = []
        self._finished = True
        self._finishedWaiters: list[Deferred[None]] = []
        # Set from the broker's thread, for start_and_wait (the reactor is not running
        # yet then, so callFromThread would not be heard).
        self._started = threading.Event()
        self._startError: EmbeddedBrokerError | None = None

    def startService(self) -> None:
        """
        Start the broker's thread and event loop; the broker binds its port there.

        Success is logged as one line once the port is listening; failure is reported
        by L{whenListening}.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self._listening = None
        self._finished = False
        self._started.clear()
        self._startError = None
        self._loop = asyncio.new_event_loop()
        self._stopRequested = asyncio.Event()
        QUIET_AMQTT_LOGGING.acquire(self._reactor.callFromThread)
        self._thread = threading.Thread(
            target=self._run,
            args=(self._loop, self._stopRequested),
            name=f"embedded MQTT broker {self.address}",
            # A wedged amqtt must not keep the process alive after the reactor stops.
            daemon=True,
        )
        self._thread.start()

    def start_and_wait(self, timeout: float = 30.0) -> None:
        """
        Start the broker and block until it listens: for start-up, before the
        reactor runs, so that nothing connects to a broker that is not there yet.

        @raise EmbeddedBrokerError: the broker could not start within C{timeout}
            seconds (the message names C{host:port} and why).
        """
        self.startService()
        if not self._started.wait(timeout):
            raise EmbeddedBrokerError(
                f"Embedded MQTT broker on {self.address} did not start within "
                f"{timeout:g} s"
            )
        if self._startError is not None:
            raise self._startError

    def whenListening(self) -> Deferred[None]:
        """
        A L{Deferred} that fires with C{None} once the broker accepts connections, or
        fails with L{EmbeddedBrokerError} (message naming C{host:port} and the reason,
        e.g. the port is in use) if it could not start.
        """
        if self._listening is True:
            return succeed(None)
        if isinstance(self._listening, Failure):
            return fail(self._listening)
        d: Deferred[None] = Deferred()
        self._listeningWaiters.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        """
        Shut amqtt down (clients disconnected, port closed), stop its event loop and
        join its thread. The L{Deferred} fires with C{None} when all of that is done;
        a failing amqtt shutdown is logged, not raised, so the daemon still stops.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        if self._finished:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._finishedWaiters.append(d)
        if self._loop is not None and self._stopRequested is not None:
            # RuntimeError: the loop has just closed; the thread is on its way out.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopRequested.set)
        return d

    # --- in the broker's thread -------------------------------------------------

    def _run(
        self, loop: asyncio.AbstractEventLoop, stopRequested: asyncio.Event
    ) -> None:
        problem: Failure | None = None
        try:
            with asyncio.Runner(loop_factory=lambda: loop) as runner:
                runner.run(self._serve(stopRequested))
        except BaseException:
            problem = Failure()  # type: ignore[no-untyped-call]
        finally:
            self._reactor.callFromThread(self._threadFinished, problem)

    async def _serve(self, stopRequested: asyncio.Event) -> None:
        try:
            from amqtt.broker import Broker

            broker = Broker(
                brokerConfig(self.host, self.port), loop=asyncio.get_running_loop()
            )
            await broker.start()
        except Exception as e:
            error = EmbeddedBrokerError(
                f"Embedded MQTT broker could not listen on {self.address}: {_reason(e)}"
            )
            error.__cause__ = e
            self._startError = error
            self._started.set()
            self._reactor.callFromThread(self._startResult, _failure(error))
            return
        self._started.set()
        self._reactor.callFromThread(self._startResult, True)
        await stopRequested.wait()
        try:
            await asyncio.wait_for(broker.shutdown(), _SHUTDOWN_TIMEOUT)
        except TimeoutError:
            self._reactor.callFromThread(
                log.warn,
                "Embedded MQTT broker on {address} did not shut down within "
                "{timeout} s; closing its event loop anyway",
                address=self.address,
                timeout=_SHUTDOWN_TIMEOUT,
            )

    # --- back in the reactor thread ----------------------------------------------

    def _startResult(self, result: bool | Failure) -> None:
        self._listening = result
        if result is True:
            log.info(
                "Embedded MQTT broker (amqtt, MQTT 3.1.1, anonymous) listening on "
                "{address}",
                address=self.address,
            )
        waiters, self._listeningWaiters = self._listeningWaiters, []
        for d in waiters:
            if result is True:
                d.callback(None)
            else:
                assert isinstance(result, Failure)
                d.errback(result)

    def _threadFinished(self, problem: Failure | None) -> None:
        if self._thread is not None:
            # The thread's last act was to schedule this call: the join is immediate.
            self._thread.join()
            self._thread = None
        self._loop = None
        self._stopRequested = None
        self._finished = True
        QUIET_AMQTT_LOGGING.release()
        if problem is not None:
            log.failure(
                "Embedded MQTT broker on {address} failed",
                problem,
                address=self.address,
            )
        if self._listening is None:
            self._startResult(
                _failure(
                    EmbeddedBrokerError(
                        f"Embedded MQTT broker on {self.address} stopped before it "
                        "was listening"
                    )
                )
            )
        waiters, self._finishedWaiters = self._finishedWaiters, []
        for d in waiters:
            d.callback(None)


def _reason(error: BaseException) -> str:
    """The shortest true explanation of a start-up error, e.g. C{Address in use}."""
    cause = error.__cause__ if error.__cause__ is not None else error
    if (
        isinstance(cause, OSError)
        and not isinstance(cause, socket.gaierror)
        and cause.errno
        and cause.errno > 0
    ):
        return os.strerror(cause.errno)
    return str(cause)


def _failure(error: BaseException) -> Failure:
    return Failure(error)  # type: ignore[no-untyped-call]


class EmbeddedBroker(Protocol):
    """What start-up needs of an embedded broker."""

    #: C{"Mosquitto"} or C{"amqtt"}.
    kind: str
    #: The MQTT version the gateway's session should speak to it.
    protocol: str

    def start_and_wait(self, timeout: float = ...) -> None:
        """Start the broker; return once it listens, raise when it cannot."""

    def stopService(self) -> Deferred[None]:
        """Stop the broker; fire once it has."""


def embedded_broker(
    host: str, port: int, reactor: Any = None, path: str | None = None
) -> EmbeddedBroker:
    """
    The embedded broker for C{host:port}: Mosquitto when the C{mosquitto} program
    is on C{path} (C{PATH} when C{None}), else amqtt, with a warning that says
    MQTT 5 is not available then.
    """
    executable = find_mosquitto(path)
    if executable is not None:
        return MosquittoBrokerService(host, port, executable, reactor=reactor)
    log.warn(
        "No mosquitto program on PATH: the embedded MQTT broker is amqtt, which "
        "speaks MQTT 3.1.1 only (MQTT 5 properties are refused with 400 "
        "UnsupportedProperty). Install Mosquitto for MQTT 5."
    )
    return EmbeddedBrokerService(host, port, reactor=reactor)
