# -*- test-case-name: tests.workers.test_launcher -*-
"""
What a worker is told and given: its plan on the command line, its
environment, the listening sockets the parent bound and how it adopts them;
and how one that cannot start tells the parent why.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.config import parse
from gateway.listeners import parse_endpoints
from gateway.startup import StartupError
from gateway.tap import Options
from gateway.workers.launcher import WorkerPlan, _ParentSide, worker_environment
from gateway.workers.parent import command_line
from gateway.workers.sockets import (
    BoundSockets,
    Inherited,
    SharedPort,
    adopted_endpoints,
)
from gateway.workers.worker import refuse


class PlanTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """The plan a worker reads is the one the parent wrote."""
        plan = WorkerPlan(
            number=2,
            count=3,
            arguments=("--config", "/etc/gateway.toml"),
            listeners=(
                Inherited("http", "tcp:80", 4, socket.AF_INET),
                Inherited("tls", "haproxy:tcp:443", 5, socket.AF_INET6),
            ),
            broker_protocol="5",
        )
        self.assertEqual(WorkerPlan.from_json(plan.to_json()), plan)

    def test_environment(self) -> None:
        """systemd's variables are the parent's alone; the rest is passed on."""
        env = worker_environment(
            {
                "NOTIFY_SOCKET": "/run/notify",
                "WATCHDOG_USEC": "1",
                "WATCHDOG_PID": "1",
                "LISTEN_FDS": "1",
                "LISTEN_PID": "1",
                "LISTEN_FDNAMES": "http",
                "HOME": "/root",
                "PYTHONPATH": "/extra",
            }
        )
        self.assertEqual(env["HOME"], "/root")
        self.assertFalse({k for k in env if k.startswith(("LISTEN_", "WATCHDOG_"))})
        self.assertNotIn("NOTIFY_SOCKET", env)
        first, rest = env["PYTHONPATH"].split(os.pathsep)
        self.assertTrue(os.path.isdir(os.path.join(first, "gateway", "workers")))
        self.assertEqual(rest, "/extra")

    def test_command_line(self) -> None:
        """The worker's command line repeats the parent's options."""
        options = Options()
        options.parseOptions(
            ["--listen", "tcp:1", "--listen", "tcp:2", "--broker", "mqtt://b:1"]
        )
        self.assertEqual(
            command_line(options),
            ["--listen", "tcp:1", "--listen", "tcp:2", "--broker", "mqtt://b:1"],
        )


class BoundSocketsTests(TestCase):
    def test_bind_without_accepting(self) -> None:
        """
        The parent binds each listener, never reads from it, and hands the
        workers its descriptors from 4 on, with the family and PROXY flag.
        """
        from twisted.internet import reactor

        config = parse(
            {
                "http": {
                    "listen": [
                        "tcp:0:interface=127.0.0.1",
                        r"haproxy:tcp6:0:interface=\:\:1",
                    ]
                }
            },
            ".",
        )
        sockets = BoundSockets(parse_endpoints(config, reactor))
        sockets.privilegedStartService()
        self.addCleanup(sockets.stopService)
        self.assertEqual(
            [(i.kind, i.fd, i.family) for i in sockets.inherited],
            [("http", 4, socket.AF_INET), ("http", 5, socket.AF_INET6)],
        )
        fds = sockets.child_fds()
        self.assertEqual(sorted(fds), [4, 5])
        for port in sockets._ports:
            self.assertNotIn(port, reactor.getReaders())

    def test_bind_fails(self) -> None:
        """A port that cannot be bound stops start-up with one line."""
        from twisted.internet import reactor

        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        self.addCleanup(taken.close)
        busy = taken.getsockname()[1]
        config = parse({"http": {"listen": [f"tcp:{busy}:interface=127.0.0.1"]}}, ".")
        sockets = BoundSockets(parse_endpoints(config, reactor))
        with self.assertRaises(StartupError) as caught:
            sockets.privilegedStartService()
        self.assertIn(
            f"cannot listen on tcp:{busy}:interface=127.0.0.1", str(caught.exception)
        )


class AdoptionTests(TestCase):
    def listening(self) -> int:
        """The descriptor of a new listening TCP socket (a copy, as inherited)."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        self.addCleanup(sock.close)
        return os.dup(sock.fileno())

    def test_adopt(self) -> None:
        """
        A worker adopts each inherited socket as a port that takes one
        connection per wake-up; a C{haproxy:} one serves the factory behind
        the PROXY protocol. The inherited descriptors are closed.
        """
        from twisted.internet import reactor

        plain, proxied = self.listening(), self.listening()
        endpoints = adopted_endpoints(
            reactor,
            [
                Inherited("http", "tcp:80", plain, socket.AF_INET),
                Inherited("tls", "haproxy:tcp:443", proxied, socket.AF_INET),
            ],
            header_timeout=5,
        )
        factory = Factory.forProtocol(Protocol)
        [(description, http)] = endpoints.http
        [(_, tls)] = endpoints.tls
        self.assertEqual(description, "tcp:80")
        self.assertIsNone(endpoints.admin)
        ports: list[Any] = []
        for endpoint, inherited in ((http, plain), (tls, proxied)):
            port = self.successResultOf(endpoint.listen(factory))
            self.addCleanup(port.stopListening)
            self.assertIsInstance(port, SharedPort)
            with self.assertRaises(OSError):
                os.fstat(inherited)
            ports.append(port)
        self.assertIs(ports[0].factory, factory)
        self.assertIsInstance(ports[1].factory, WrappingFactory)
        self.assertIs(ports[1].factory.wrappedFactory, factory)

    def test_one_accept_per_wake(self) -> None:
        """With three connections waiting, one wake-up accepts one."""
        from twisted.internet import reactor

        fd = self.listening()
        factory = _Counting()
        [(_, endpoint)] = adopted_endpoints(
            reactor, [Inherited("http", "tcp:80", fd, socket.AF_INET)], 5
        ).http
        port: Any = self.successResultOf(endpoint.listen(factory))
        self.addCleanup(port.stopListening)
        port.stopReading()
        address = port.getHost()
        clients = [
            socket.create_connection((address.host, address.port)) for _ in range(3)
        ]
        for client in clients:
            self.addCleanup(client.close)
        for expected in (1, 2, 3):
            port.doRead()
            self.assertEqual(factory.built, expected)


class _Counting(Factory):
    """Counts the connections it serves."""

    protocol = Protocol
    built = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        self.built += 1
        return Protocol()


class _Refusals:
    """The parent's events, recording refusals (the rest is not expected)."""

    def __init__(self) -> None:
        self.refused: list[tuple[int, str]] = []

    def worker_refused(self, number: int, error: str) -> None:
        self.refused.append((number, error))

    def worker_serving(self, number: int, connected: bool) -> None:
        raise AssertionError("a refusing worker does not serve")

    def worker_status(self, number: int, connected: bool) -> None:
        raise AssertionError("a refusing worker has no broker session")

    def worker_ended(self, number: int, why: str) -> None:
        raise AssertionError("not a process")


class _HangUps(_ParentSide):
    """The parent's end, which tells when the worker hung up."""

    def __init__(self, number: int, events: _Refusals) -> None:
        super().__init__(number, events)
        self.hung_up: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.hung_up.callback(None)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class RefusalTests(TestCase):
    """A worker that cannot start, over a real control channel."""

    def channel(self) -> tuple[socket.socket, int]:
        """The parent's end and a copy of the worker's end (as inherited)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        return ours, os.dup(theirs.fileno())

    async def test_parent_hears_the_error(self) -> None:
        """The parent hears the worker's error line, as worker N's; then the
        worker hangs up."""
        reactor: Any = _reactor()
        ours, fd = self.channel()
        events = _Refusals()
        parent = _HangUps(2, events)
        reactor.adoptStreamConnection(
            ours.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: parent)
        )
        error = "mqtt-http-gateway: log.access: cannot open /x/a.log: No such file"
        await refuse(reactor, error, fd=fd)
        self.assertEqual(events.refused, [(2, error)])
        await parent.hung_up

    async def test_parent_gone(self) -> None:
        """Without a parent to tell, it fires all the same."""
        ours, fd = self.channel()
        ours.close()
        await refuse(_reactor(), "mqtt-http-gateway: x", fd=fd)
