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
import tempfile
from collections.abc import Mapping, Sequence

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.brokers import poll
from tests.fakes import Daemon
from tests.gateway import config_file


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


class Parent(Daemon):
    """
    C{twistd -n mqtt-http-gateway --config ...} in a child process (see
    L{Daemon}), the parent of its workers when the configuration says so.

    @ivar config_path: the configuration file written.
    @ivar pid: the parent's process id.
    """

    def __init__(
        self,
        test: TestCase,
        config: str,
        *,
        sockets: Sequence[socket.socket] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config_path = config_file(config)
        super().__init__(
            test,
            "--config",
            self.config_path,
            sockets=[("http", sock) for sock in sockets],
            env=env,
        )
        self.pid: int = self.process.pid
        # Cleanups run last-added first: the workers go before the parent.
        test.addCleanup(self.kill_workers)

    async def match(self, pattern: str, timeout: float = 20) -> re.Match[str]:
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
        await self.wait_for(f"All {count} workers serve", timeout=20)
        for number in range(1, count + 1 if sessions else 1):
            await self.wait_for(f"[worker {number}] Connected to", timeout=20)

    def worker_pids(self) -> dict[int, int]:
        """The pid of the latest process of each worker number."""
        pids = {}
        started = r"Started worker (\d+) \(pid (\d+)\)"
        for number, pid in re.findall(started, self.output):
            pids[int(number)] = int(pid)
        return pids

    def kill_workers(self) -> None:
        """SIGKILL every worker that may still run."""
        for pid in self.worker_pids().values():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


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
