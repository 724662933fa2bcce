"""
Test support for the worker processes: a stand-in for systemd's notification
socket that tells which process sent each message, the gateway run by twistd
as the parent of its workers, and curl posting many requests at once.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.brokers import poll


class NotifyListener:
    """
    A bound AF_UNIX datagram socket in a new folder, as C{$NOTIFY_SOCKET}.

    @ivar address: the value for C{$NOTIFY_SOCKET}.
    @ivar lines: every C{NAME=value} line received so far.
    @ivar senders: the process id of every message's sender.
    """

    def __init__(self) -> None:
        self.address = os.path.join(tempfile.mkdtemp(prefix="notify-"), "notify")
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._socket.bind(self.address)
        self._socket.setblocking(False)
        self.lines: list[str] = []
        self.senders: set[int] = set()

    def assignments(self) -> list[str]:
        """Every line received so far (reads what is waiting)."""
        credentials = struct.calcsize("3i")
        while True:
            try:
                datagram, ancillary, _, _ = self._socket.recvmsg(
                    4096, socket.CMSG_SPACE(credentials)
                )
            except BlockingIOError:
                return self.lines
            for level, kind, data in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                    self.senders.add(struct.unpack("3i", data[:credentials])[0])
            self.lines.extend(datagram.decode().split("\n"))

    def close(self) -> None:
        """Close the socket and remove it."""
        self._socket.close()
        os.unlink(self.address)
        os.rmdir(os.path.dirname(self.address))


_EXEC = """
import os, sys
if "LISTEN_FDS" in os.environ:
    os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[1], sys.argv[1:])
"""

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Parent:
    """
    C{twistd -n mqtt-http-gateway --config ...} in a child process, the
    parent of its workers when the configuration says so; optionally given
    listening sockets from file descriptor 3 on as systemd gives them.

    @ivar config_path: the configuration file written.
    """

    def __init__(
        self,
        test: TestCase,
        config: str,
        *,
        sockets: Sequence[socket.socket] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.directory = tempfile.mkdtemp(prefix="gateway-workers-")
        self.config_path = os.path.join(self.directory, "gateway.toml")
        with open(self.config_path, "w") as f:
            f.write(config)
        self.chunks: list[bytes] = []
        self.ended: Deferred[Any] = Deferred()
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_"))
        }
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        if sockets:
            environ["LISTEN_FDS"] = str(len(sockets))
            environ["LISTEN_FDNAMES"] = ":".join("http" for _ in sockets)
            for number, sock in enumerate(sockets, 3):
                child_fds[number] = sock.fileno()
        environ.update(env or {})
        parent = self

        class Watch(ProcessProtocol):
            def childDataReceived(self, fd: int, data: bytes) -> None:
                parent.chunks.append(data)

            def processEnded(self, reason: Failure) -> None:
                parent.ended.callback(reason.value)

        command = [TWISTD, "--pidfile=", "-n", "mqtt-http-gateway"]
        command += ["--config", self.config_path]
        self.process = reactor.spawnProcess(
            Watch(),
            sys.executable,
            [sys.executable, "-c", _EXEC, *command],
            env=environ,
            childFDs=child_fds,
        )
        self.pid: int = self.process.pid
        test.addCleanup(self.kill)

    @property
    def output(self) -> str:
        """Everything the parent and its workers wrote so far."""
        return b"".join(self.chunks).decode(errors="replace")

    async def wait_for(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """The first match of the regular expression C{pattern} in the output."""
        await poll(
            self.reactor,
            lambda: re.search(pattern, self.output) is not None or self.ended.called,
            timeout,
            lambda: f"no {pattern!r} in:\n{self.output}",
        )
        found = re.search(pattern, self.output)
        if found is None:
            raise AssertionError(f"twistd ended without {pattern!r}:\n{self.output}")
        return found

    async def serving(self, count: int = 2, sessions: bool = True) -> None:
        """
        Return once all C{count} workers serve and (with C{sessions}) have
        their broker session.
        """
        await self.wait_for(f"All {count} workers serve")
        for number in range(1, count + 1 if sessions else 1):
            await self.wait_for(rf"\[worker {number}\] Connected to")

    def worker_pids(self) -> dict[int, int]:
        """The pid of the latest process of each worker number."""
        pids = {}
        for number, pid in re.findall(
            r"Started worker (\d+) \(pid (\d+)\)", self.output
        ):
            pids[int(number)] = int(pid)
        return pids

    def signal(self, name: str) -> None:
        """Send the parent C{name} (C{"TERM"}, C{"HUP"} ...)."""
        self.process.signalProcess(name)

    async def exit_code(self) -> int | None:
        """Its exit status, once it has ended."""
        reason = await self.ended
        code: int | None = getattr(reason, "exitCode", None)
        return code

    def kill(self) -> Deferred[Any]:
        """Kill it and its workers if they still run."""
        for pid in self.worker_pids().values():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if not self.ended.called:
            self.process.signalProcess("KILL")
        return self.ended


async def post_all(
    urls: Sequence[str], *args: str, parallel: int = 8
) -> list[tuple[int, str]]:
    """
    POST to every URL with curl (a new connection each, C{parallel} at a
    time, so that the kernel hands them to any worker); the status of each (0
    when there was no answer) and its URL.
    """
    out, _, _ = await getProcessOutputAndValue(
        "curl",
        (
            "-sS",
            "--max-time",
            "20",
            "-Z",
            "--parallel-max",
            str(parallel),
            "-X",
            "POST",
            "-H",
            "Connection: close",
            *args,
            "-w",
            "%{http_code} %{url_effective}\\n",
            *(arg for url in urls for arg in (url, "-o", "/dev/null")),
        ),
        env=os.environ,
    )
    results = []
    for line in out.decode().splitlines():
        status, _, url = line.partition(" ")
        results.append((int(status), url))
    return results
