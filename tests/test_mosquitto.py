"""
Tests for L{gateway.mosquitto}: the embedded broker run as a supervised Mosquitto
child process. Supervision is checked with a fake child on a Clock; the real
Mosquitto is then started on a free port, killed, and must come back with the
gateway's session reconnecting to it.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.mosquitto import (
    BrokerStartError,
    MosquittoBrokerService,
    find_mosquitto,
    mosquitto_config,
)
from tests.brokers import Subscriber, free_port, poll, publish
from tests.gateway import RunningGateway, curl


class FakeChild:
    """A child process that runs until told otherwise."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: int | None = None
        self.signals: list[int] = []
        self.ignore_term = False

    def poll(self) -> int | None:
        return self.status

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if sig == signal.SIGKILL or not self.ignore_term:
            self.status = -sig


class Logged:
    def __init__(self, test: Any) -> None:
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        test.addCleanup(globalLogPublisher.removeObserver, observer)

    def lines(self) -> list[str]:
        return [
            e["log_format"].format(**e)
            for e in self.events
            if e.get("log_namespace") == "gateway.mosquitto"
        ]


class SupervisionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.children: list[FakeChild] = []
        self.commands: list[Sequence[str]] = []
        self.log = Logged(self)

        def spawn(argv: Sequence[str], log_path: str) -> FakeChild:
            self.commands.append(argv)
            child = FakeChild(100 + len(self.children))
            self.children.append(child)
            return child

        self.service = MosquittoBrokerService(
            "127.0.0.1",
            1883,
            "/usr/sbin/mosquitto",
            reactor=self.clock,
            spawn=spawn,
            accepts=lambda host, port: True,
        )
        self.addCleanup(self.service.stopService)

    def test_config(self) -> None:
        """The generated configuration: one listener on the address, anonymous,
        no persistence; Mosquitto is started on it."""
        self.service.start_and_wait()
        [argv] = self.commands
        self.assertEqual(argv[:2], ["/usr/sbin/mosquitto", "-c"])
        with open(argv[2]) as f:
            text = f.read()
        self.assertEqual(text, mosquitto_config("127.0.0.1", 1883))
        self.assertIn("listener 1883 127.0.0.1\n", text)
        self.assertIn("allow_anonymous true\n", text)
        self.assertIn("persistence false\n", text)
        self.assertIn("user ", text)
        self.assertNotIn("user ", mosquitto_config("127.0.0.1", 1883, user=""))
        self.assertEqual(
            self.log.lines(),
            [
                "Embedded MQTT broker (Mosquitto, MQTT 5 and 3.1.1, anonymous) "
                "listening on 127.0.0.1:1883 (child process 100)"
            ],
        )

    def test_restarted_with_back_off(self) -> None:
        """A child that dies is restarted within a second, logged; one that keeps
        dying waits longer each time; one that ran a while starts afresh."""
        self.service.start_and_wait()
        self.children[0].status = 1
        self.clock.advance(0.5)  # noticed
        self.assertEqual(len(self.children), 1)
        self.clock.advance(0.5)
        self.assertEqual((len(self.children), self.service.restarts), (2, 1))
        self.assertIn("exited with status 1", self.log.lines()[1])
        self.assertIn(
            "restarted on 127.0.0.1:1883 (child process 101)", self.log.lines()[2]
        )
        self.children[1].status = 1
        self.clock.advance(0.5)
        self.clock.advance(0.5)
        self.assertEqual(len(self.children), 2)  # the second restart waits longer
        self.clock.advance(0.5)
        self.assertEqual(len(self.children), 3)
        self.clock.pump([0.5] * 22)  # it stays up: the back-off starts afresh
        self.children[2].status = 1
        self.clock.pump([0.5] * 2)
        self.assertEqual(len(self.children), 4)

    def test_stop(self) -> None:
        """stopService sends SIGTERM and fires once the child exited; nothing is
        restarted afterwards."""
        self.service.start_and_wait()
        d = self.service.stopService()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.children[0].signals, [signal.SIGTERM])
        self.clock.advance(10)
        self.assertEqual(len(self.children), 1)

    def test_stop_kills_a_stuck_child(self) -> None:
        """A child that ignores SIGTERM gets SIGKILL after five seconds."""
        self.service.start_and_wait()
        self.children[0].ignore_term = True
        d = self.service.stopService()
        self.assertNoResult(d)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.pump([0.05] * 10)
        self.successResultOf(d)
        self.assertEqual(self.children[0].signals, [signal.SIGTERM, signal.SIGKILL])

    def test_exit_during_start_up(self) -> None:
        """A child that exits before it listens: BrokerStartError naming the
        address and the status."""
        service = MosquittoBrokerService(
            "127.0.0.1",
            1883,
            "/usr/sbin/mosquitto",
            reactor=self.clock,
            spawn=lambda argv, path: _exited(3),
            accepts=lambda host, port: False,
        )
        with self.assertRaises(BrokerStartError) as e:
            service.start_and_wait()
        self.assertEqual(
            str(e.exception),
            "Embedded MQTT broker (Mosquitto) could not listen on 127.0.0.1:1883: "
            "it exited with status 3",
        )


def _exited(status: int) -> FakeChild:
    child = FakeChild(7)
    child.status = status
    return child


class RealMosquittoTests(TestCase):
    """The real Mosquitto, on a free port."""

    timeout = 60

    def setUp(self) -> None:
        executable = find_mosquitto()
        if executable is None:
            self.skipTest("mosquitto is not installed")
        assert executable is not None
        self.log = Logged(self)
        self.service = MosquittoBrokerService("127.0.0.1", free_port(), executable)
        self.addCleanup(self.service.stopService)

    async def test_mqtt5_and_stop(self) -> None:
        """It speaks MQTT 5 (a user property arrives); stopping ends the child and
        frees the port."""
        self.service.start_and_wait()
        port = self.service.port
        subscriber = Subscriber("127.0.0.1", port, "#")
        self.addCleanup(subscriber.stop)
        await subscriber.start()
        await publish(
            "127.0.0.1",
            port,
            "t",
            b"x",
            qos=1,
            protocol=5,
            properties={"UserProperty": [("k", "v")]},
        )
        [message] = await subscriber.wait_for(1)
        self.assertEqual(message.properties["UserProperty"], [("k", "v")])
        pid = self.service.pid
        assert pid is not None
        await self.service.stopService()
        with self.assertRaises(ProcessLookupError):
            os.kill(pid, 0)
        with socket.socket() as s:
            self.assertNotEqual(s.connect_ex(("127.0.0.1", port)), 0)

    async def test_port_in_use(self) -> None:
        """A taken port: BrokerStartError with Mosquitto's own reason."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            # The test's own socket accepts on the port: Mosquitto's exit, not a
            # connection, must decide.
            service = MosquittoBrokerService(
                "127.0.0.1",
                taken.getsockname()[1],
                self.service.executable,
                accepts=lambda host, port: False,
            )
            with self.assertRaises(BrokerStartError) as e:
                service.start_and_wait(timeout=5)
        self.assertIn("could not listen on 127.0.0.1:", str(e.exception))
        self.assertIn("Address already in use", str(e.exception))

    async def test_killed_restarted_gateway_reconnects(self) -> None:
        """The child killed with SIGKILL is restarted on the same port; the
        gateway's session reconnects and publishes again, with its MQTT 5 user
        properties."""
        from twisted.internet import reactor

        self.service.start_and_wait()
        port = self.service.port
        gateway = RunningGateway(
            f'[mqtt]\nbrokers = ["mqtt://127.0.0.1:{port}"]\npublish_timeout = 2\n'
            '[log]\naccess = ""\n[auth]\nallow_anonymous = true\n'
        )
        self.addCleanup(gateway.stop)
        await gateway.start()
        subscriber = Subscriber("127.0.0.1", port, "#")
        self.addCleanup(subscriber.stop)
        await subscriber.start()
        first = self.service.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await poll(
            reactor,
            lambda: self.service.restarts == 1 and self.service.pid != first,
            10,
            lambda: "Mosquitto was not restarted",
        )
        await gateway.wait_connected(timeout=20)
        await subscriber.wait_subscribed(2, timeout=10)
        result = await curl(
            "-X", "POST", "--data", "back", gateway.topic_url("again", "client_id=c1")
        )
        self.assertEqual(result.status, 200, result.body)
        [message] = await subscriber.wait_for(1)
        self.assertEqual((message.topic, message.payload), ("again", b"back"))
        self.assertEqual(message.properties["UserProperty"], [("http-client-id", "c1")])
        self.assertTrue(any("exited with status" in line for line in self.log.lines()))
