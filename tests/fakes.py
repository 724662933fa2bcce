"""
Fakes shared by the tests: the one stand-in L{IPublisher}, password and ACL
stand-ins, connection handles by name, an in-memory MQTT broker with the broker
session's test base, and the daemon run as a child process.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from gateway.errors import Code, GatewayError
from gateway.interfaces import IPublisher
from gateway.model import (
    Connection,
    Identity,
    Message,
    Proof,
    PublishResult,
    no_connection,
)
from gateway.mqtt import codec
from gateway.mqtt.protocol import MQTTClientProtocol
from gateway.mqtt.publisher import SharedPublisher
from gateway.mqtt.session import Broker, BrokerSession, SessionSettings
from gateway.status import PublisherStatus, StatusObserver, StatusObservers
from tests.brokers import poll

#: How a L{FakePublisher} answers one publish: given the publisher (its calls
#: already include this one) and the message.
Answer = Callable[["FakePublisher", Message], Deferred[PublishResult]]


@implementer(IPublisher)
class FakePublisher:
    """
    Stands in for the broker side: every publish is recorded in L{calls} and
    answered by L{answer}, by default at once with the message IDs 1, 2, 3, ...
    as 32 hexadecimal digits (L{numbered}). Connected unless told otherwise;
    observers hear L{set_connected}; L{status} is L{current} when a test sets it.

    @ivar calls: (identity, message) of every publish, in order.
    @ivar waiting: the answers L{later} handed out, for the test to fire.
    """

    def __init__(
        self,
        answer: Answer | None = None,
        *,
        connected: bool = True,
        status: PublisherStatus | None = None,
    ) -> None:
        self.answer: Answer = answer or FakePublisher.numbered
        self.connected = connected
        self.current = status
        self.calls: list[tuple[Identity, Message]] = []
        self.waiting: list[Deferred[PublishResult]] = []
        self.observers = StatusObservers()

    @property
    def messages(self) -> list[Message]:
        """The messages of L{calls}, in order."""
        return [message for _, message in self.calls]

    def status(self) -> PublisherStatus:
        """L{current} if set, else connected or not as L{connected} says."""
        if self.current is not None:
            return self.current
        return PublisherStatus(connected=bool(self.connected))

    def observe(self, observer: StatusObserver) -> Callable[[], None]:
        """Observers hear what L{set_connected} changes."""
        return self.observers.observe(observer)

    def set_connected(self, connected: bool) -> None:
        """Go up or down, telling the observers."""
        self.connected = connected
        self.observers.notify(self.status())

    def publish(self, message: Message, identity: Identity) -> Deferred[PublishResult]:
        """Record the call, then answer as L{answer} says."""
        self.calls.append((identity, message))
        return self.answer(self, message)

    def numbered(self, message: Message) -> Deferred[PublishResult]:
        """An answer: taken at once, the message ID the number of the call."""
        return succeed(PublishResult(f"{len(self.calls):032X}"))

    def later(self, message: Message) -> Deferred[PublishResult]:
        """An answer: one the test fires, kept in L{waiting}."""
        d: Deferred[PublishResult] = Deferred()
        self.waiting.append(d)
        return d


def succeeds(message_id: str) -> Answer:
    """An answer: every message taken at once with C{message_id}."""
    return lambda publisher, message: succeed(PublishResult(message_id))


def fails(error: Exception) -> Answer:
    """An answer: every message refused with C{error}."""
    return lambda publisher, message: fail(error)


class Passwords:
    """
    A password file's stand-in: C{user=password} pairs, and the users whose
    password was checked, in order.
    """

    def __init__(self, **users: str) -> None:
        self.users = {user: password.encode() for user, password in users.items()}
        self.checked: list[str] = []

    def verify(self, user: str, password: bytes) -> bool:
        """Whether C{password} is C{user}'s."""
        self.checked.append(user)
        return self.users.get(user) == password


class TopicACL:
    """An ACL that decides by the topic alone, as C{allows(topic)} says."""

    def __init__(self, allows: Callable[[str], bool]) -> None:
        self.allows = allows

    def may_publish(self, topic: str, username: str | None, client_id: str) -> bool:
        """Whether anyone may publish to C{topic}."""
        return self.allows(topic)


class Connections:
    """
    Connection handles by name, for tests that speak of "connection c1": the
    same name gives the same handle until it is closed.
    """

    def __init__(self) -> None:
        self._open: dict[str, Connection] = {}

    def named(self, name: str) -> Connection:
        """The open handle called C{name} (a new one if there is none)."""
        connection = self._open.get(name)
        if connection is None:
            connection = self._open[name] = Connection(name)
        return connection

    def close(self, name: str) -> None:
        """Close the connection called C{name} (a new one, if none is open)."""
        self.named(name).close()
        del self._open[name]

    def forget(self) -> None:
        """Drop every handle (between tests), closing none."""
        self._open.clear()

    def sender(
        self,
        client_id: str,
        username: str | None,
        password: bytes | None,
        connection: str = "",
    ) -> Identity:
        """
        A sender who gave a password; with C{connection}, one on the HTTP/1.1
        keep-alive connection of that name (else on none).
        """
        return Identity(
            client_id=client_id,
            username=username,
            proof=Proof.PASSWORD,
            password=password,
            connection=self.named(connection) if connection else no_connection(),
        )


# -- an MQTT broker in memory


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """An endpoint whose connection attempts the test answers by hand."""

    def __init__(self) -> None:
        self.attempts: list[tuple[IProtocolFactory, Deferred[Any]]] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        """Record the attempt; it connects when a L{FakeBroker} takes it."""
        d: Deferred[Any] = Deferred()
        self.attempts.append((factory, d))
        return d


class FakeBroker:
    """
    The broker's end of the newest connection attempt on an endpoint: connects
    it over a StringTransport, reads the CONNECT, then reads what the client
    writes and sends what the test says.
    """

    def __init__(self, endpoint: FakeEndpoint) -> None:
        factory, d = endpoint.attempts[-1]
        self.protocol: MQTTClientProtocol = factory.buildProtocol(None)  # type: ignore[arg-type,assignment]
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.decoder = codec.Decoder(codec.MQTT_5)
        d.callback(self.protocol)
        [connect] = self.received()
        assert isinstance(connect, codec.Connect)
        self.connect: codec.Connect = connect
        self.decoder.protocol_level = self.connect.protocol_level

    def received(self) -> list[codec.Packet]:
        """The packets the client wrote since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return self.decoder.feed(data)

    def send(self, *packets: codec.Packet) -> None:
        """Deliver C{packets} to the client."""
        for packet in packets:
            self.protocol.dataReceived(
                codec.encode(packet, self.connect.protocol_level)
            )

    def accept(self, session_present: bool = False, **properties: Any) -> None:
        """Answer the CONNECT with a successful CONNACK."""
        self.send(
            codec.Connack(
                session_present=session_present,
                properties=codec.Properties(**properties),
            )
        )

    def drop(self) -> None:
        """Lose the connection."""
        self.transport.loseConnection()
        self.protocol.connectionLost(Failure(ConnectionLost()))


#: The sender of L{SessionTestCase}'s messages.
ME = Identity(client_id="dev-1", username="alice")


class SessionTestCase(SynchronousTestCase):
    """
    The shared broker session on a Clock, with two brokers (C{mqtt://a} and
    C{mqtt://b}) behind L{FakeEndpoint}s that the test answers with
    L{FakeBroker}s.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoints = [FakeEndpoint(), FakeEndpoint()]
        self.requests: list[Deferred[PublishResult]] = []
        # Runs after the session stopped (cleanups run last-in, first-out): what a
        # test left waiting was failed by the stop, which is not what it checks.
        self.addCleanup(
            lambda: [
                d.addErrback(lambda f: f.trap(GatewayError)) for d in self.requests
            ]
        )

    def start(self, protocol: str = "auto", **kw: Any) -> BrokerSession:
        """Start the session (and its publisher, L{publisher})."""
        kw.setdefault("retry_policy", lambda attempt: 2.0**attempt)
        session = BrokerSession(
            [
                Broker("mqtt://a", self.endpoints[0]),
                Broker("mqtt://b", self.endpoints[1]),
            ],
            SessionSettings(client_id="gw", protocol=protocol, keepalive=10),
            clock=self.clock,
            **kw,
        )
        session.startService()
        self.addCleanup(session.stopService)
        self.publisher = SharedPublisher(session)
        return session

    def message(self, **kw: Any) -> Message:
        """A message to topic C{t} with payload C{p}, unless C{kw} says otherwise."""
        kw.setdefault("topic", "t")
        kw.setdefault("payload", b"p")
        return Message(**kw)

    def identity(self) -> Identity:
        """L{ME}."""
        return ME

    def publish(self, qos: int = 1, **kw: Any) -> Deferred[PublishResult]:
        """Publish L{message} as L{ME}; the answer is kept for the cleanup."""
        d = self.publisher.publish(self.message(qos=qos, **kw), ME)
        self.requests.append(d)
        return d

    def connected_311(self) -> FakeBroker:
        """Answer the first MQTT 3.1.1 session's two CONNECTs (clean, to wipe
        what an earlier process left; then the one the broker keeps)."""
        wipe = FakeBroker(self.endpoints[0])
        wipe.accept()
        wipe.drop()
        broker = FakeBroker(self.endpoints[0])
        broker.accept()
        return broker

    def connected(self, index: int = 0, **properties: Any) -> FakeBroker:
        """Accept the newest connection attempt to broker C{index}."""
        broker = FakeBroker(self.endpoints[index])
        broker.accept(**properties)
        return broker

    def assertFailsWith(
        self, d: Deferred[Any], status: int, code: Code
    ) -> GatewayError:
        """C{d} failed with a L{GatewayError} of C{status} and C{code}."""
        error: GatewayError = self.failureResultOf(d, GatewayError).value
        self.assertEqual((error.status, error.code), (status, code), error.message)
        return error


# -- the daemon in a child process

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

# What systemd does between fork and exec: LISTEN_PID (and WATCHDOG_PID) name the
# process that runs the daemon, so they are set in the child, which then execs.
_AS_SYSTEMD = """
import os, sys
pid = str(os.getpid())
if "LISTEN_FDS" in os.environ:
    os.environ["LISTEN_PID"] = pid
if "WATCHDOG_USEC" in os.environ:
    os.environ["WATCHDOG_PID"] = pid
os.execv(sys.argv[1], sys.argv[1:])
"""


class Daemon:
    """
    C{twistd -n} in a child process, started as systemd starts it: with
    listening sockets from file descriptor 3 on (C{LISTEN_FDS},
    C{LISTEN_FDNAMES}, C{LISTEN_PID}) and any other environment given. It runs
    C{mqtt-http-gateway} with C{args}, or the application of the C{tac} file;
    the test's cleanup kills it if it still runs.
    """

    def __init__(
        self,
        test: TestCase,
        *args: str,
        sockets: Sequence[tuple[str, socket.socket]] = (),
        env: Mapping[str, str] | None = None,
        tac: str | None = None,
    ) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.chunks: list[bytes] = []
        self.ended: Deferred[int] = Deferred()
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_"))
        }
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        if sockets:
            environ["LISTEN_FDS"] = str(len(sockets))
            environ["LISTEN_FDNAMES"] = ":".join(name for name, _ in sockets)
            for number, (_, sock) in enumerate(sockets, 3):
                child_fds[number] = sock.fileno()
        environ.update(env or {})
        daemon = self

        class Watch(ProcessProtocol):
            def outReceived(self, data: bytes) -> None:
                daemon.chunks.append(data)

            errReceived = outReceived

            def processEnded(self, reason: Any) -> None:
                daemon.ended.callback(reason.value.exitCode)

        application = ["-y", tac] if tac is not None else ["mqtt-http-gateway"]
        command = [TWISTD, "--pidfile=", "-n", *application, *args]
        self.process = reactor.spawnProcess(
            Watch(),
            sys.executable,
            [sys.executable, "-c", _AS_SYSTEMD, *command],
            env=environ,
            childFDs=child_fds,
        )
        test.addCleanup(self.kill)

    @property
    def output(self) -> str:
        """Everything it wrote to standard output and error so far."""
        return b"".join(self.chunks).decode(errors="replace")

    async def wait_for(self, text: str, timeout: float = 15) -> None:
        """Return once C{text} is in its output; fail if it ends first."""
        await poll(
            self.reactor,
            lambda: text in self.output or self.ended.called,
            timeout,
            lambda: f"no {text!r} in:\n{self.output}",
        )
        if text not in self.output:
            raise AssertionError(f"twistd ended without {text!r}:\n{self.output}")

    def signal(self, name: str) -> None:
        """Send the process a signal, e.g. C{"HUP"}."""
        self.process.signalProcess(name)

    async def stop(self) -> int:
        """SIGTERM; the exit status."""
        self.signal("TERM")
        code: int = await self.ended
        return code

    def kill(self) -> Deferred[int]:
        """SIGKILL unless it ended; fires with the exit status."""
        if not self.ended.called:
            self.process.signalProcess(signal.SIGKILL)
        return self.ended
