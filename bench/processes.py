"""
The child processes of a benchmark: Mosquitto (anonymous, or with a password
file), the gateway, the baseline server and a subscriber, each on 127.0.0.1 and a
free port, with its output in a log file.

Every child is a L{Child}: a context manager whose exit stops it (SIGTERM, then
SIGKILL after a bound), so an C{ExitStack} stops them all, in reverse order, on
any exception or Ctrl-C. Each child also runs in its own session (a Ctrl-C in the
terminal reaches only the benchmark, which then stops the children in order) and
gets SIGKILL from the kernel if the benchmark itself dies (Linux
C{PR_SET_PDEATHSIG}), so none outlives it. Readiness is always polled (a port
that accepts, a request that succeeds, a message that arrives), never assumed
after a sleep, and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

HOST = "127.0.0.1"

#: The topic the load is published to, and the one the subscriber counts.
LOAD_TOPIC = "bench/load"
#: The topic of the readiness and warm-up requests (nobody subscribes to it).
WARMUP_TOPIC = "bench/warmup"
#: The topic of the subscriber's readiness probe.
READY_TOPIC = "bench/ready"

_PR_SET_PDEATHSIG = 1
_POLL_INTERVAL = 0.01


class StartError(RuntimeError):
    """A child did not become ready in time; the message says why, with its log."""


def free_port(host: str = HOST) -> int:
    """A TCP port on C{host} that was free a moment ago (bind port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def accepts(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on C{host:port} right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _die_with_parent(parent: int) -> Callable[[], None]:
    """
    A C{preexec_fn} that asks the kernel to SIGKILL the child when the benchmark
    dies, and exits at once when it is already gone.
    """

    def preexec() -> None:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def spawn(
    argv: Sequence[str],
    stdout: int | IO[Any] = subprocess.DEVNULL,
    cwd: str | Path | None = None,
) -> subprocess.Popen[bytes]:
    """
    Start C{argv} in its own session, with no standard input, killed by the kernel
    when this process dies (on Linux).
    """
    preexec = _die_with_parent(os.getpid()) if sys.platform == "linux" else None
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=preexec,  # noqa: PLW1509 - no threads in the benchmark
    )


@dataclass(frozen=True)
class ProcessSample:
    """
    What C{/proc} says about a process at one moment.

    @ivar cpu_seconds: user plus system CPU time of all its threads so far.
    @ivar rss_kib: resident set size (C{VmRSS}).
    @ivar peak_rss_kib: peak resident set size so far (C{VmHWM}).
    """

    cpu_seconds: float
    rss_kib: int
    peak_rss_kib: int


def sample(pid: int) -> ProcessSample:
    """
    Read CPU time and memory of process C{pid} from C{/proc}.

    @raise OSError: when the process is gone.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    memory: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = int(value.split()[0])
    return ProcessSample(
        cpu_seconds=ticks / os.sysconf("SC_CLK_TCK"),
        rss_kib=memory.get("VmRSS", 0),
        peak_rss_kib=memory.get("VmHWM", 0),
    )


def machine_cpu_seconds() -> float:
    """
    CPU seconds all CPUs of the machine have been busy since boot (C{/proc/stat}:
    user, nice, system, irq, softirq and steal time), whoever used them.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy / os.sysconf("SC_CLK_TCK")


def machine_load(seconds: float = 1.0) -> float:
    """How busy the machine is now: percent of one CPU used over C{seconds}."""
    before, started = machine_cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (machine_cpu_seconds() - before) / (time.monotonic() - started)


class Child:
    """
    One child process whose standard output and error go to C{log_path}.

    Use it as a context manager: leaving the block stops the process.

    @ivar name: a short name for messages and reports.
    @ivar exit_code: the exit status once stopped (negative: killed by that
        signal), else C{None}.
    @ivar stop_seconds: how long the process took to exit after SIGTERM.
    """

    #: Seconds L{stop} waits after SIGTERM before it sends SIGKILL.
    stop_timeout = 15.0

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self._process = spawn(self.argv, stdout=log, cwd=cwd)
        self.exit_code: int | None = None
        self.stop_seconds: float | None = None
        self.killed = False

    @property
    def pid(self) -> int:
        """The process id."""
        return self._process.pid

    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self._process.poll() is None

    def log(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        """The last C{lines} lines of the log, for error messages."""
        return "\n".join(self.log().splitlines()[-lines:])

    def sample(self) -> ProcessSample:
        """CPU time and memory of the process now (see L{sample})."""
        return sample(self.pid)

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """
        Poll C{ready()} until it is true.

        @raise StartError: when the process exits first or C{timeout} seconds pass,
            naming C{what} and showing the end of the log.
        """
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.running():
                raise StartError(
                    f"{self.name} exited (status {self._process.returncode}) "
                    f"before {what}; its log ends:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise StartError(
                    f"{self.name}: no {what} within {timeout:g} s; its log ends:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)

    def wait(self, timeout: float) -> int | None:
        """
        Wait up to C{timeout} seconds for the process to exit by itself.

        @return: its exit status, or C{None} when it is still running.
        """
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int:
        """
        Stop the process: SIGTERM, and SIGKILL after L{stop_timeout} seconds.

        @return: the exit status (negative: the signal that ended it).
        """
        if self.exit_code is not None:
            return self.exit_code
        started = time.monotonic()
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self._process.kill()
                self._process.wait()
        self.stop_seconds = time.monotonic() - started
        self.exit_code = self._process.returncode
        return self.exit_code

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Server(Child):
    """A child that listens on C{host:port}."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        port: int,
        cwd: Path | None = None,
    ) -> None:
        super().__init__(name, argv, log_path, cwd)
        self.host = HOST
        self.port = port

    def wait_for_port(self, timeout: float) -> None:
        """
        Wait until the port accepts connections.

        @raise StartError: after C{timeout} seconds or when the process exits.
        """
        self.wait_until(
            lambda: accepts(self.host, self.port),
            timeout,
            f"listening port {self.host}:{self.port}",
        )


def post(
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    timeout: float = 2.0,
    headers: dict[str, str] | None = None,
) -> int:
    """
    Send one C{POST} (with C{headers} besides the content type) and return the
    response status, or 0 when the request failed at the connection level.
    """
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(
            "POST",
            path,
            body,
            {"Content-Type": "application/octet-stream", **(headers or {})},
        )
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        connection.close()


class HTTPServer(Server):
    """A server child that is ready once a C{POST} to C{probe_path} gets 200."""

    probe_path = "/"
    #: Headers of the probe (credentials).
    probe_headers: dict[str, str] | None = None

    def wait_ready(self, timeout: float) -> None:
        """
        Wait until the port accepts and a probe C{POST} is answered with 200.

        @raise StartError: after C{timeout} seconds or when the process exits.
        """
        deadline = time.monotonic() + timeout
        self.wait_for_port(timeout)
        self.wait_until(
            lambda: (
                post(
                    self.host,
                    self.port,
                    self.probe_path,
                    b"ready",
                    headers=self.probe_headers,
                )
                == 200
            ),
            max(deadline - time.monotonic(), 0.1),
            f"200 to POST {self.probe_path}",
        )


MOSQUITTO_CONFIG = """\
# Generated by python -m bench.
listener {port} {host}
# Run as whoever started the benchmark: Mosquitto started as root switches to the
# user "mosquitto" by default, and a change of user makes the kernel forget that
# the process is to be killed when the benchmark dies.
user {user}
{auth}
persistence false
# Never drop QoS 1 messages queued for a slow subscriber: the benchmark counts
# them. (Mosquitto's default, 1000, would drop them silently under load.)
max_queued_messages 0
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
"""

#: Mosquitto's authentication in L{MOSQUITTO_CONFIG}: anyone may connect.
MOSQUITTO_ANONYMOUS = "allow_anonymous true"

#: Mosquitto's authentication with a password file (C{{path}}). Connection
#: messages are off: in broker mode every HTTP/1.0 request is an MQTT connection,
#: and the benchmark measures the gateway, not Mosquitto writing its log.
MOSQUITTO_PASSWORDS = """\
allow_anonymous false
password_file {path}
connection_messages false"""


def start_mosquitto(
    directory: Path,
    attempts: int = 3,
    name: str = "mosquitto",
    password_file: Path | None = None,
) -> Server:
    """
    Start Mosquitto on a free port of 127.0.0.1 with a generated configuration in
    C{directory} (no persistence, unbounded subscriber queues; anonymous, or
    only the users of C{password_file}), its files named after C{name}.

    Mosquitto cannot bind port 0, so a free port is picked first; when another
    process takes it meanwhile, a new one is tried, C{attempts} times.

    @raise StartError: when it does not listen within 5 s.
    """
    executable = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    for attempt in range(1, attempts + 1):
        port = free_port()
        config = directory / f"{name}.conf"
        user = pwd.getpwuid(os.geteuid()).pw_name
        auth = (
            MOSQUITTO_ANONYMOUS
            if password_file is None
            else MOSQUITTO_PASSWORDS.format(path=password_file)
        )
        config.write_text(
            MOSQUITTO_CONFIG.format(host=HOST, port=port, user=user, auth=auth)
        )
        broker = Server(
            name,
            [executable, "-c", str(config)],
            directory / f"{name}.log",
            port,
        )
        try:
            broker.wait_for_port(5.0)
        except StartError:
            broker.stop()
            if attempt == attempts or "Address already in use" not in broker.log():
                raise
            continue
        return broker
    raise AssertionError("unreachable")


def twistd_command() -> list[str]:
    """
    How to run twistd with this interpreter: the C{twistd} script beside
    C{sys.executable} (a virtualenv's), else C{twisted.scripts.twistd.run}.
    """
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def gateway_command(config: Path, broker_port: int, port: int) -> list[str]:
    """The command line of a gateway using C{config} and the given ports."""
    return [
        *twistd_command(),
        "--nodaemon",
        "--pidfile=",
        "mqtt-http-gateway",
        "--config",
        str(config),
        "--broker",
        f"mqtt://{HOST}:{broker_port}",
        "--listen",
        f"tcp:{port}:interface={HOST}",
    ]


class Gateway(HTTPServer):
    """
    The gateway: twistd in the foreground.

    @ivar config_path: its configuration file.
    @ivar tls_port: the port of its HTTPS listener, if it has one.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        port: int,
        *,
        config_path: Path,
        tls_port: int | None,
        cwd: Path | None = None,
    ) -> None:
        super().__init__(name, argv, log_path, port, cwd)
        self.config_path = config_path
        self.tls_port = tls_port


def start_gateway(
    directory: Path,
    broker_port: int,
    config: str,
    *,
    name: str = "gateway",
    tls_port: int | None = None,
    probe_headers: dict[str, str] | None = None,
    timeout: float = 20.0,
) -> Gateway:
    """
    Start the gateway (twistd in the foreground) with the configuration C{config},
    written to C{directory/NAME.toml}, publishing to the broker on C{broker_port}
    and serving plain HTTP on a free port; return once it answered a QoS 1 publish
    (with C{probe_headers}) with 200, so its broker session is up, and once its
    HTTPS listener on C{tls_port} (which C{config} must name) accepts.

    @raise StartError: when it is not ready within C{timeout} seconds; the
        message ends with the end of its log (for instance the one line naming a
        configuration key it refuses).
    """
    config_path = directory / f"{name}.toml"
    config_path.write_text(config)
    port = free_port()
    gateway = Gateway(
        name,
        gateway_command(config_path, broker_port, port),
        directory / f"{name}.log",
        port,
        config_path=config_path,
        tls_port=tls_port,
        cwd=directory,
    )
    gateway.probe_path = f"/topics/{WARMUP_TOPIC}?qos=1"
    gateway.probe_headers = probe_headers
    deadline = time.monotonic() + timeout
    try:
        gateway.wait_ready(timeout)
        if tls_port is not None:
            gateway.wait_until(
                lambda: accepts(HOST, tls_port),
                max(deadline - time.monotonic(), 0.1),
                f"HTTPS listener {HOST}:{tls_port}",
            )
    except BaseException:
        gateway.stop()
        raise
    return gateway


def start_baseline(
    directory: Path,
    name: str,
    form_parsing: bool,
    timeout: float = 10.0,
    llhttp: bool = False,
) -> Server:
    """
    Start the baseline server (L{bench.baseline}) as its own process on a free port.

    @param form_parsing: C{True} for twisted.web's default C{Site(root)}, C{False}
        for C{Site(root, parsePOSTFormSubmission=False)}.
    @param llhttp: the bare llhttp protocol instead of twisted.web.
    @raise StartError: when it does not answer 200 within C{timeout} seconds.
    """
    port = free_port()
    argv = [sys.executable, "-m", "bench.baseline", "--port", str(port)]
    if llhttp:
        argv.append("--llhttp")
    elif not form_parsing:
        argv.append("--no-form-parsing")
    server = HTTPServer(
        name,
        argv,
        directory / f"{name}.log",
        port,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        server.wait_ready(timeout)
    except BaseException:
        server.stop()
        raise
    return server


@dataclass(frozen=True)
class Delivery:
    """
    What a subscriber received on the load topic.

    @ivar messages: messages received, duplicates included.
    @ivar distinct: distinct payloads among them (every request has its own).
    """

    messages: int
    distinct: int

    @property
    def duplicates(self) -> int:
        """Messages received more than once (QoS 1 allows it after a resend)."""
        return self.messages - self.distinct


class Subscriber(Child):
    """
    C{mosquitto_sub} at QoS 1 on the load topic, writing one line per message
    (C{topic payload}) to its log; it flushes after every message, so the log is
    the count.
    """

    def __init__(
        self,
        directory: Path,
        broker_port: int,
        credentials: tuple[str, str] | None = None,
        log_name: str = "subscriber.out",
    ) -> None:
        self.broker_port = broker_port
        # mosquitto_sub and mosquitto_pub: -u USER -P PASSWORD, or nothing.
        self.auth_args = (
            [] if credentials is None else ["-u", credentials[0], "-P", credentials[1]]
        )
        super().__init__(
            "subscriber",
            [
                shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub",
                "-h",
                HOST,
                "-p",
                str(broker_port),
                *self.auth_args,
                "-i",
                "bench-subscriber",
                "-q",
                "1",
                "-v",
                "-t",
                LOAD_TOPIC,
                "-t",
                READY_TOPIC,
            ],
            directory / log_name,
        )
        self._prefix = f"{LOAD_TOPIC} ".encode()

    def _lines(self) -> list[bytes]:
        try:
            return self.log_path.read_bytes().splitlines()
        except OSError:
            return []

    def wait_ready(self, timeout: float = 5.0) -> None:
        """
        Publish a probe with C{mosquitto_pub} every half second until the
        subscriber prints it: only then is its subscription surely in place.

        @raise StartError: after C{timeout} seconds or when it exits.
        """
        publisher = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
        probe = f"{READY_TOPIC} ready".encode()
        next_probe = 0.0

        def received() -> bool:
            nonlocal next_probe
            if probe in self._lines():
                return True
            if time.monotonic() >= next_probe:
                next_probe = time.monotonic() + 0.5
                argv = [publisher, "-h", HOST, "-p", str(self.broker_port)]
                argv += self.auth_args
                argv += ["-q", "1", "-t", READY_TOPIC, "-m", "ready"]
                subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=5,
                    check=False,
                )
            return False

        self.wait_until(received, timeout, "subscription")

    def count(self) -> int:
        """Messages received on the load topic so far."""
        return sum(1 for line in self._lines() if line.startswith(self._prefix))

    def delivery(self) -> Delivery:
        """Messages and distinct payloads received on the load topic so far."""
        payloads = [
            line[len(self._prefix) :]
            for line in self._lines()
            if line.startswith(self._prefix)
        ]
        return Delivery(messages=len(payloads), distinct=len(set(payloads)))

    def drain(self, expected_at_most: int, quiet: float, timeout: float) -> int:
        """
        Wait for messages still on their way: until C{expected_at_most} arrived,
        or none arrived for C{quiet} seconds, or C{timeout} seconds passed.

        @return: the count then.
        """
        deadline = time.monotonic() + timeout
        last = self.count()
        last_change = time.monotonic()
        while last < expected_at_most and time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.count()
            if now != last:
                last, last_change = now, time.monotonic()
            elif time.monotonic() - last_change >= quiet:
                break
        return last
