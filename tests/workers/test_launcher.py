# -*- test-case-name: tests.workers.test_launcher -*-
"""
What a worker is told and given: its plan on the command line, its
environment, the listening sockets the parent bound and how it adopts them.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.config import parse
from gateway.listeners import parse_endpoints
from gateway.startup import StartupError
from gateway.tap import Options
from gateway.workers.launcher import WorkerPlan, worker_environment
from gateway.workers.parent import command_line
from gateway.workers.sockets import (
    BoundSockets,
    Inherited,
    SharedPort,
    adopted_endpoints,
)


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
