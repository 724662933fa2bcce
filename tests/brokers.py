# -*- test-case-name: tests.integration.test_brokers -*-
"""
Real MQTT brokers and an independent subscriber for integration tests.

Not a test module: trial tests use these on the real reactor, e.g.::

    self.broker = Mosquitto(allow_anonymous=False, password_file=path)
    await self.broker.start()
    self.addCleanup(self.broker.stop)
    subscriber = Subscriber(self.broker.host, self.broker.port)
    await subscriber.start()
    self.addCleanup(subscriber.stop)
    ...
    [message] = await subscriber.wait_for(1)

Every broker process is killed at interpreter exit (an C{atexit} guard) even when a
test forgot its cleanup; the amqtt child also exits by itself when its parent dies.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

_LIVE_PIDS: set[int] = set()
_TEMP_DIRS: set[str] = set()


def _cleanUpAtExit() -> None:
    for pid in list(_LIVE_PIDS):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        # Reap it: an orphaned zombie is not reaped in containers without an init.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    for path in list(_TEMP_DIRS):
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_cleanUpAtExit)


def _defaultReactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return global_reactor
    return reactor


# Exec a command that gets SIGKILL when its parent dies (Linux), so that a broker
# does not outlive a test run that was itself killed and had no chance to clean up.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("parent already gone")
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _dieWithParent(command: list[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on C{host} that was free a moment ago (bind port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on C{host:port} (loopback: instant)."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class WaitTimeout(AssertionError):
    """Something a test waited for did not happen in time; the message says what."""


class BrokerStartError(Exception):
    """A broker process did not start listening; the message holds its log."""


class _BindRace(BrokerStartError):
    """Another process took the port between L{free_port} and the broker's bind."""


async def poll(
    reactor: Any,
    ready: Callable[[], bool],
    timeout: float,
    describe: Callable[[], str],
    interval: float = 0.01,
) -> None:
    """Return once C{ready()} is true; raise L{WaitTimeout} after C{timeout} s."""
    deadline = reactor.seconds() + timeout
    while not ready():
        if reactor.seconds() >= deadline:
            raise WaitTimeout(describe())
        await deferLater(reactor, interval)


def _deferred(coroutine: Coroutine[Deferred[Any], Any, Any]) -> Deferred[Any]:
    return Deferred.fromCoroutine(coroutine)


class _LogToFile(ProcessProtocol):
    """Appends the child's stdout and stderr to one log file; notes its exit."""

    def __init__(self, logPath: str, closeStdin: bool) -> None:
        self._logPath = logPath
        self._closeStdin = closeStdin
        self.ended: Deferred[None] = Deferred()
        self.exitReason: Failure | None = None
        self.stdout = b""
        self.pid = 0

    def connectionMade(self) -> None:
        if self._closeStdin:
            self.transport.closeStdin()  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.stdout += data
        with open(self._logPath, "ab") as f:
            f.write(data)

    def processEnded(self, reason: Failure) -> None:
        self.exitReason = reason
        _LIVE_PIDS.discard(self.pid)
        self.ended.callback(None)


class _BrokerProcess:
    """
    A broker child process on 127.0.0.1 and a port chosen once, kept across
    restarts; its output goes to a log file in its own directory.
    """

    #: Seconds L{start} waits for the port to accept connections.
    startTimeout = 5.0
    #: Seconds L{stop} waits after SIGTERM before it sends SIGKILL.
    stopTimeout = 5.0
    _name = "broker"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        directory: str | None = None,
        reactor: Any = None,
    ) -> None:
        self.host = host
        self._fixedPort = port is not None
        self.port: int = port if port is not None else 0
        if directory is None:
            directory = tempfile.mkdtemp(prefix=f"{self._name}-")
            _TEMP_DIRS.add(directory)
        else:
            os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.logPath = os.path.join(directory, f"{self._name}.log")
        self._reactor = _defaultReactor(reactor)
        self._process: Any = None
        self._protocol: _LogToFile | None = None

    # subclasses define these three
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self, protocol: _LogToFile, log: str) -> bool:
        raise NotImplementedError

    def _lostBindRace(self, log: str) -> bool:
        raise NotImplementedError

    _closeStdin = True
    # Whether to confirm readiness with a TCP connection (amqtt logs it as an error).
    _probe = True
    # Whether the child writes to the log file itself instead of through pipes:
    # then nothing of it is in the reactor, so it may outlive a test class (trial
    # kills processes with pipes at the end of each), but _ready sees no stdout.
    _logDirect = False

    def _environment(self) -> dict[str, str]:
        """The child's environment: this process's, unless a subclass adds to it."""
        return dict(os.environ)

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._protocol is not None and not self._protocol.ended.called

    @property
    def pid(self) -> int | None:
        """The process id of the broker's last run (C{None} before the first)."""
        return self._protocol.pid if self._protocol is not None else None

    def log(self) -> str:
        """Everything the broker has logged so far, across restarts."""
        try:
            with open(self.logPath, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def start(self) -> Deferred[None]:
        """
        Start the broker; fires once it accepts TCP connections on C{host:port}.

        The first start picks a free port (another one, up to three times, if some
        other process takes it first); later starts reuse it. Fails with
        L{BrokerStartError} carrying the log if the broker exits or does not listen
        within L{startTimeout} seconds.
        """
        return _deferred(self._start())

    async def _start(self) -> None:
        if self.running:
            raise BrokerStartError(f"{self._name} is already running on {self.port}")
        attempts = 1 if (self._fixedPort or self.port) else 3
        for attempt in range(attempts):
            if not self.port:
                self.port = free_port(self.host)
            try:
                await self._startOnce()
                return
            except _BindRace:
                if attempt == attempts - 1:
                    raise
                self.port = 0

    async def _startOnce(self) -> None:
        protocol = _LogToFile(self.logPath, self._closeStdin)
        self._protocol = protocol
        command = self._command()
        log_before = len(self.log())
        child_fds: dict[int, Any] | None = None
        if self._logDirect:
            devnull = os.open(os.devnull, os.O_RDONLY)
            log_fd = os.open(self.logPath, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            child_fds = {0: devnull, 1: log_fd, 2: log_fd}
        try:
            self._process = self._reactor.spawnProcess(
                protocol,
                command[0],
                command,
                env=self._environment(),
                path=self.directory,
                childFDs=child_fds,
            )
        finally:
            for fd in set((child_fds or {}).values()):
                os.close(fd)
        protocol.pid = self._process.pid
        _LIVE_PIDS.add(protocol.pid)
        try:
            await poll(
                self._reactor,
                lambda: (
                    protocol.ended.called
                    or (
                        self._ready(protocol, self.log()[log_before:])
                        and (not self._probe or _accepts(self.host, self.port))
                    )
                ),
                self.startTimeout,
                lambda: f"{self._name} did not listen on {self.host}:{self.port}",
            )
        except WaitTimeout as e:
            await self._signal("KILL")
            raise BrokerStartError(f"{e}; its log:\n{self.log()}") from None
        if protocol.ended.called:
            log = self.log()[log_before:]
            if self._lostBindRace(log):
                raise _BindRace(f"port {self.port} was taken:\n{log}")
            raise BrokerStartError(
                f"{self._name} exited during start-up ({protocol.exitReason}); "
                f"its log:\n{self.log()}"
            )

    def stop(self) -> Deferred[None]:
        """
        SIGTERM the broker and fire once it has exited (SIGKILL after
        L{stopTimeout} seconds). Does nothing if it is not running.
        """
        return _deferred(self._signal("TERM"))

    def kill(self) -> Deferred[None]:
        """SIGKILL the broker (no clean shutdown) and fire once it has exited."""
        return _deferred(self._signal("KILL"))

    def restart(self) -> Deferred[None]:
        """Stop the broker cleanly and start it again on the same port."""

        async def restart() -> None:
            await self._signal("TERM")
            await self._start()

        return _deferred(restart())

    async def _signal(self, name: str) -> None:
        protocol, process = self._protocol, self._process
        if protocol is None or process is None or protocol.ended.called:
            return  # never started, or already gone
        _sendSignal(process, name)
        killer = None
        if name != "KILL":
            killer = self._reactor.callLater(
                self.stopTimeout, _sendSignal, process, "KILL"
            )
        await protocol.ended
        if killer is not None and killer.active():
            killer.cancel()

    def exitedCleanly(self) -> bool:
        """Whether the last run of the broker exited with status 0."""
        reason = self._protocol.exitReason if self._protocol else None
        return reason is not None and isinstance(reason.value, ProcessDone)


class Mosquitto(_BrokerProcess):
    """
    A Mosquitto 2.0 broker with a generated configuration, one listener on
    C{host:port}.

    @ivar configPath: the generated C{mosquitto.conf}.
    """

    _name = "mosquitto"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        allow_anonymous: bool = True,
        password_file: str | None = None,
        acl_file: str | None = None,
        persistence: bool = False,
        persistence_location: str | None = None,
        connection_messages: bool = True,
        cafile: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        require_certificate: bool = False,
        extra: Sequence[str] = (),
        directory: str | None = None,
        executable: str = "mosquitto",
        reactor: Any = None,
    ) -> None:
        super().__init__(host=host, port=port, directory=directory, reactor=reactor)
        # Mosquitto runs in its own directory: make the caller's paths absolute.
        self.allow_anonymous = allow_anonymous
        self.password_file = _absolute(password_file)
        self.acl_file = _absolute(acl_file)
        self.persistence = persistence
        self.persistence_location = _absolute(persistence_location)
        self.connection_messages = connection_messages
        self.cafile = _absolute(cafile)
        self.certfile = _absolute(certfile)
        self.keyfile = _absolute(keyfile)
        self.require_certificate = require_certificate
        self.extra = list(extra)
        self.executable = shutil.which(executable) or executable
        self.configPath = os.path.join(self.directory, "mosquitto.conf")

    def config(self) -> str:
        """The configuration file for the current port."""
        lines = [f"listener {self.port} {self.host}"]
        if self.certfile is not None:
            lines += [f"certfile {self.certfile}", f"keyfile {self.keyfile}"]
            if self.cafile is not None:
                lines.append(f"cafile {self.cafile}")
            lines.append(f"require_certificate {_onOff(self.require_certificate)}")
        lines.append(f"allow_anonymous {_onOff(self.allow_anonymous)}")
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        if self.persistence:
            location = self.persistence_location or self.directory
            lines += [
                "persistence true",
                f"persistence_location {os.path.join(location, '')}",
            ]
        if os.geteuid() == 0:
            # Otherwise root-started Mosquitto becomes user "mosquitto" and cannot
            # read the files of this (0700) directory.
            lines.append("user root")
        lines += [
            f"connection_messages {_onOff(self.connection_messages)}",
            "log_dest stderr",
            "log_type all",
            *self.extra,
        ]
        return "\n".join(lines) + "\n"

    def _command(self) -> list[str]:
        with open(self.configPath, "w", encoding="utf-8") as f:
            f.write(self.config())
        return _dieWithParent([self.executable, "-c", self.configPath])

    def _ready(self, protocol: _LogToFile, log: str) -> bool:
        return " running" in log

    def _lostBindRace(self, log: str) -> bool:
        return "Address already in use" in log


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(path)


def _sendSignal(process: Any, name: str) -> None:
    with contextlib.suppress(ProcessExitedAlready):
        process.signalProcess(name)


def _onOff(value: bool) -> str:
    return "true" if value else "false"


_AMQTT_RUNNER = """
import asyncio, logging, os, signal, sys

logging.basicConfig(
    level=logging.INFO, stream=sys.stderr,
    format="%(asctime)s %(name)s %(levelname)s %(message)s",
)
logging.getLogger("transitions").setLevel(logging.WARNING)
from amqtt.broker import Broker

host, port = sys.argv[1], int(sys.argv[2])
config = {
    "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
    "plugins": {
        "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
    },
}

async def main():
    loop = asyncio.get_running_loop()
    broker = Broker(config, loop=loop)
    try:
        await broker.start()
    except Exception as e:
        print(f"amqtt runner: start failed: {e}", file=sys.stderr, flush=True)
        return 1
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    def stdin():
        # EOF on stdin: the test process is gone, so go too.
        if not os.read(0, 4096):
            loop.remove_reader(0)
            stop.set()
    loop.add_reader(0, stdin)
    print("READY", flush=True)
    await stop.wait()
    await broker.shutdown()
    return 0

sys.exit(asyncio.run(main()))
"""


class Amqtt(_BrokerProcess):
    """
    An amqtt broker (MQTT 3.1.1 only, anonymous allowed) in a child Python process,
    one TCP listener on C{host:port}; same interface as L{Mosquitto}.
    """

    _name = "amqtt"
    startTimeout = 10.0
    _closeStdin = False
    # The runner prints READY only after amqtt's listening socket is open.
    _probe = False

    def _command(self) -> list[str]:
        return [sys.executable, "-c", _AMQTT_RUNNER, self.host, str(self.port)]

    def _ready(self, protocol: _LogToFile, log: str) -> bool:
        return b"READY" in protocol.stdout

    def _lostBindRace(self, log: str) -> bool:
        return "address already in use" in log.lower()


@dataclass(frozen=True)
class Received:
    """
    One message as the subscriber received it.

    C{properties} holds the MQTT 5 properties present, under paho's names:
    C{'UserProperty'} (a list of C{(key, value)}), C{'ContentType'},
    C{'ResponseTopic'}, C{'CorrelationData'} (bytes), C{'PayloadFormatIndicator'},
    C{'MessageExpiryInterval'}, C{'SubscriptionIdentifier'} ... Empty for 3.1.1.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[str, Any] = field(default_factory=dict)


def _properties(props: Any) -> dict[str, Any]:
    if props is None:
        return {}
    result = {}
    for name in props.names:
        key = name.replace(" ", "")
        if hasattr(props, key):
            result[key] = getattr(props, key)
    return result


class Subscriber:
    """
    An independent paho-mqtt 2 client, in its own network thread, that subscribes
    to C{topic} at C{qos} and records every message it receives.

    It reconnects by itself (within a second) when the broker goes away and
    subscribes again after every connection; L{wait_subscribed} counts SUBACKs.

    @param protocol: C{5} (MQTT 5, the default) or C{4} (MQTT 3.1.1); paho's
        C{MQTTv5} / C{MQTTv311}.
    @param clean_start: C{False} asks the broker to keep the session (MQTT 5:
        Clean Start 0; 3.1.1: Clean Session 0).
    @param session_expiry: MQTT 5 Session Expiry Interval in seconds.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic: str = "#",
        qos: int = 2,
        *,
        protocol: int = 5,
        clean_start: bool = True,
        session_expiry: int | None = None,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        reactor: Any = None,
    ) -> None:
        from paho.mqtt import client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.host = host
        self.port = port
        self.topic = topic
        self.qos = qos
        self.protocol = protocol
        self.client_id = client_id or f"test-subscriber-{uuid.uuid4().hex[:12]}"
        self._reactor = _defaultReactor(reactor)
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._subacks = 0
        self._connectErrors: list[str] = []
        self._started = False
        self._stopped = False

        v5 = protocol == mqtt.MQTTv5
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else clean_start,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]
        self._client.on_connect = self._onConnect
        self._client.on_subscribe = self._onSubscribe
        self._client.on_message = self._onMessage
        self._connectArgs: dict[str, Any] = {}
        if v5:
            self._connectArgs["clean_start"] = clean_start
            if session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = session_expiry
                self._connectArgs["properties"] = props

    # --- paho's network thread ---------------------------------------------------

    def _onConnect(
        self, client: Any, userdata: Any, flags: Any, reasonCode: Any, props: Any
    ) -> None:
        if reasonCode.is_failure:
            with self._lock:
                self._connectErrors.append(str(reasonCode))
            return
        client.subscribe(self.topic, self.qos)

    def _onSubscribe(
        self, client: Any, userdata: Any, mid: int, reasonCodes: Any, props: Any
    ) -> None:
        with self._lock:
            if any(code.is_failure for code in reasonCodes):
                self._connectErrors.append(
                    f"SUBSCRIBE {self.topic!r} refused: "
                    + ", ".join(str(code) for code in reasonCodes)
                )
            else:
                self._subacks += 1

    def _onMessage(self, client: Any, userdata: Any, message: Any) -> None:
        received = Received(
            topic=message.topic,
            payload=bytes(message.payload),
            qos=message.qos,
            retain=bool(message.retain),
            properties=_properties(getattr(message, "properties", None)),
        )
        with self._lock:
            self._messages.append(received)

    # --- the reactor thread --------------------------------------------------------

    @property
    def messages(self) -> list[Received]:
        """A snapshot of every message received so far, in arrival order."""
        with self._lock:
            return list(self._messages)

    def start(self, timeout: float = 5) -> Deferred[None]:
        """Connect and subscribe; fires after the first SUBACK."""
        if not self._started:
            self._started = True
            self._client.connect_async(
                self.host, self.port, keepalive=30, **self._connectArgs
            )
            self._client.loop_start()
        return self.wait_subscribed(1, timeout)

    def wait_subscribed(self, count: int = 1, timeout: float = 5) -> Deferred[None]:
        """
        Fires once the broker has acknowledged C{count} subscriptions since
        L{start} (one per connection: after a broker restart, wait for 2). Fails
        at once if the broker refused the connection or the subscription.
        """

        def ready() -> bool:
            with self._lock:
                if self._connectErrors:
                    raise WaitTimeout(
                        f"subscriber {self.client_id} on {self.host}:{self.port}: "
                        + "; ".join(self._connectErrors)
                    )
                return self._subacks >= count

        def describe() -> str:
            return (
                f"subscriber {self.client_id} on {self.host}:{self.port} got "
                f"{self._subacks} SUBACK(s) for {self.topic!r} within {timeout} s, "
                f"expected {count}"
            )

        return _deferred(poll(self._reactor, ready, timeout, describe))

    def wait_for(self, count: int, timeout: float = 5) -> Deferred[list[Received]]:
        """
        Fires with the first C{count} messages as soon as they have arrived (see
        L{messages} for any later ones); fails with L{WaitTimeout} listing what did
        arrive if fewer than C{count} came within C{timeout} seconds.
        """

        def ready() -> bool:
            with self._lock:
                return len(self._messages) >= count

        def describe() -> str:
            got = self.messages
            lines = "".join(f"\n  {m!r}" for m in got)
            return (
                f"expected {count} message(s) on {self.topic!r} within {timeout} s, "
                f"got {len(got)}:{lines or ' none'}"
            )

        async def wait() -> list[Received]:
            await poll(self._reactor, ready, timeout, describe)
            return self.messages[:count]

        return _deferred(wait())

    def stop(self) -> Deferred[None]:
        """Disconnect and end the network thread (joined off the reactor thread)."""
        if not self._started or self._stopped:
            self._stopped = True
            return succeed(None)
        self._stopped = True
        self._client.disconnect()
        d: Deferred[Any] = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self._client.loop_stop
        )
        return d.addCallback(lambda _: None)


def publish(
    host: str,
    port: int,
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    retain: bool = False,
    protocol: int = 4,
    properties: dict[str, Any] | None = None,
    timeout: float = 5,
    reactor: Any = None,
) -> Deferred[None]:
    """
    Publish one message with a throw-away paho client (3.1.1 by default) and fire
    once it is fully acknowledged (QoS 1: PUBACK, QoS 2: PUBCOMP; QoS 0: sent), then
    disconnected.

    @param properties: MQTT 5 properties under paho's names, as in L{Received}.
    """
    from paho.mqtt import client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    reactor = _defaultReactor(reactor)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"test-publisher-{uuid.uuid4().hex[:12]}",
        protocol=MQTTProtocolVersion(protocol),
    )
    client.connect(host, port, keepalive=30)
    client.loop_start()

    props = None
    if properties:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        for name, value in properties.items():
            setattr(props, name, value)

    async def run() -> None:
        try:
            info = client.publish(
                topic, payload, qos=qos, retain=retain, properties=props
            )
            await poll(
                reactor,
                info.is_published,
                timeout,
                lambda: f"{topic!r} (QoS {qos}) not acknowledged within {timeout} s",
            )
        finally:
            client.disconnect()
            await deferToThreadPool(reactor, reactor.getThreadPool(), client.loop_stop)

    return _deferred(run())
