"""
One host that floods the gateway with idle connections cannot take them all:
beyond C{[http] max_connections_per_source} its new connections get a 503 at
once, while clients from other addresses are still served, also when the
open-file limit is what caps the connections (and the gateway says so at
start-up). Real sockets from 127.0.0.1 and 127.0.0.2 against twistd.
"""

from __future__ import annotations

import resource
import selectors
import socket
import time
from typing import cast

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.brokers import Mosquitto, free_port
from tests.fakes import Daemon
from tests.gateway import config_file

OPEN_FILES = 256
CAP = (OPEN_FILES - 100) // 2  # what the open-file limit allows
PER_SOURCE = 20
FLOOD = 300  # more sockets than the daemon may open files

REQUEST = (
    b"POST /topics/flood?qos=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\nhi"
)


def connect(source: str, port: int) -> socket.socket:
    """A TCP connection to the daemon from the loopback address C{source}."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a reset after an answer is fine)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def flood(port: int) -> tuple[list[socket.socket], list[bytes]]:
    """
    Open FLOOD idle connections from 127.0.0.1; the ones the daemon serves stay
    open and silent, the others are answered at once. Returns the open (served)
    sockets and the first bytes of the answers to the others, once no more
    than PER_SOURCE are left unanswered and half a second brings no news (or
    after 30 seconds).
    """
    waiting = [connect("127.0.0.1", port) for _ in range(FLOOD)]
    answers: list[bytes] = []
    selector = selectors.DefaultSelector()
    for sock in waiting:
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + 30
    while (left := deadline - time.monotonic()) > 0:
        events = selector.select(0.5 if len(waiting) <= PER_SOURCE else left)
        if not events and len(waiting) <= PER_SOURCE:
            break
        for key, _ in events:
            sock = cast(socket.socket, key.fileobj)
            selector.unregister(sock)
            try:
                answers.append(sock.recv(65536))
            except OSError as e:
                answers.append(repr(e).encode())
            sock.close()
            waiting.remove(sock)
    selector.close()
    return waiting, answers


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def publish(source: str, port: int) -> bytes:
    """One POST from C{source}, its whole answer."""
    with connect(source, port) as sock:
        sock.sendall(REQUEST)
        return read_all(sock)


class FloodTests(TestCase):
    timeout = 120

    async def test_one_address_floods(self) -> None:
        """With an open-file limit of 256 (a cap of 78 connections) and 20
        connections per address: of 300 idle connections from 127.0.0.1, 20
        are served and every other one gets a 503 with Retry-After at once;
        meanwhile 127.0.0.2 publishes with 200s. The start-up log names the
        limit and the cap, the refusals are logged (once a minute), and the
        log shows no traceback or file descriptor exhaustion."""
        broker = Mosquitto()
        self.addCleanup(broker.stop)
        await broker.start()
        port = free_port()
        config = config_file(
            f"[http]\nmax_connections_per_source = {PER_SOURCE}\n"
            f'[mqtt]\nbrokers = ["mqtt://127.0.0.1:{broker.port}"]\n'
            '[auth]\nallow_anonymous = true\n[log]\naccess = ""\n'
        )
        daemon = Daemon(
            self, "--config", config, "--listen", f"tcp:{port}:interface=127.0.0.1"
        )
        # At once, long before twistd has imported enough to build the service.
        resource.prlimit(
            daemon.process.pid, resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES)
        )
        await daemon.wait_for("Connected to")
        self.assertIn(
            f"The open-file limit (RLIMIT_NOFILE) is {OPEN_FILES}: at most {CAP} "
            f"HTTP connections are served at once, {PER_SOURCE} from one client "
            "address;",
            daemon.output,
        )

        served, answers = await deferToThread(flood, port)
        self.addCleanup(close_all, served)
        self.assertEqual(len(served), PER_SOURCE)
        self.assertEqual(len(answers), FLOOD - PER_SOURCE)
        for answer in answers:
            self.assertEqual(status_of(answer), 503, answer[:200])
            self.assertIn(b"\r\nRetry-After: 1\r\n", answer)
            self.assertIn(b"too many open connections from this address", answer)

        # The flood holds its share; the other address is served, one after
        # another and several at once.
        for _ in range(5):
            answer = await deferToThread(publish, "127.0.0.2", port)
            self.assertEqual(status_of(answer), 200, answer[:200])
        others = [await deferToThread(connect, "127.0.0.2", port) for _ in range(10)]
        self.addCleanup(close_all, others)
        answer = await deferToThread(publish, "127.0.0.2", port)
        self.assertEqual(status_of(answer), 200, answer[:200])
        answer = await deferToThread(publish, "127.0.0.1", port)
        self.assertEqual(status_of(answer), 503, answer[:200])

        # A place the flood gives up is its own again.
        served.pop().close()
        answer = b""
        for _ in range(50):
            answer = await deferToThread(publish, "127.0.0.1", port)
            if status_of(answer) == 200:
                break
        self.assertEqual(status_of(answer), 200, answer[:200])
        self.assertIn(
            f"connection(s) over max_connections_per_source ({PER_SOURCE}) since "
            "the last such line, the latest from 127.0.0.1",
            daemon.output,
        )
        self.assertEqual(await daemon.stop(), 0)
        for bad in ("Traceback", "EMFILE", "Too many open files"):
            self.assertNotIn(bad, daemon.output)
