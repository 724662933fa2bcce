"""
The command line: C{twistd mqtt-http-gateway} starts from a config file or from
nothing, documents its options, and refuses bad configuration with one clear line.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from typing import Any, cast

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.testing import MemoryReactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from gateway.tap import Listener, Options, StartupError, connection_cap, makeService
from tests.brokers import Amqtt, Mosquitto, Subscriber, free_port, poll
from tests.fakes import TWISTD
from tests.gateway import config_file, curl

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "conf", "gateway.toml")


def twistd(*args: str) -> Deferred[tuple[bytes, bytes, int]]:
    return getProcessOutputAndValue(  # type: ignore[no-any-return]
        TWISTD, ("--pidfile=", "-n", "mqtt-http-gateway", *args), env=os.environ
    )


class ConnectionCapTests(SynchronousTestCase):
    def warnings(self, per_source: int, open_files: int) -> tuple[int, list[str]]:
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        try:
            cap = connection_cap(per_source, open_files)
        finally:
            globalLogPublisher.removeObserver(observer)
        return cap, [
            formatEvent(e)
            for e in events
            if e.get("log_namespace") == "gateway.listeners"
        ]

    def test_open_file_limit_binds(self) -> None:
        """With 1,024 open files the cap is 462, and one line says why, with
        the share of one address."""
        self.assertEqual(
            self.warnings(256, 1024),
            (
                462,
                [
                    "The open-file limit (RLIMIT_NOFILE) is 1024: at most 462 HTTP "
                    "connections are served at once, 256 from one client address; "
                    "raise the limit (systemd LimitNOFILE=) to serve more"
                ],
            ),
        )

    def test_share_not_below_cap(self) -> None:
        """The line warns when one address could take every connection."""
        cap, [line] = self.warnings(256, 400)
        self.assertEqual(cap, 150)
        self.assertIn("150 from one client address (http.max_connections_per_", line)
        self.assertIn("one address can take every connection", line)

    def test_no_line_when_not_binding(self) -> None:
        """With enough open files (or none set) the cap is 10,000, said by no
        line."""
        self.assertEqual(self.warnings(256, 1 << 20), (10_000, []))
        self.assertEqual(self.warnings(256, -1), (10_000, []))


class OptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def refused(self, *args: str) -> str:
        """The line the daemon refuses to start with, from its options or
        from assembling the service tree."""
        with self.assertRaises(StartupError) as e:
            makeService(self.parse(*args), MemoryReactor())
        message = str(e.exception.code)
        self.assertTrue(message.startswith("mqtt-http-gateway: "), message)
        self.assertNotIn("\n", message)
        return message

    def test_defaults(self) -> None:
        """With nothing given: HTTP on 127.0.0.1:8080 and the embedded broker."""
        options = self.parse()
        self.assertEqual(options.config.http.listen, ("tcp:8080:interface=127.0.0.1",))
        self.assertTrue(options.config.embedded_broker)
        self.assertEqual([b.name for b in options.brokers], ["mqtt://127.0.0.1:1883"])

    def test_overrides(self) -> None:
        """--listen and --broker are repeatable and replace the file's values."""
        options = self.parse(
            "--config",
            EXAMPLE,
            "--listen",
            "tcp:1",
            "--listen",
            "tcp:2",
            "--broker",
            "mqtt://a",
            "--broker",
            "mqtts://b:8884",
        )
        self.assertEqual(options.config.http.listen, ("tcp:1", "tcp:2"))
        self.assertEqual(
            [b.name for b in options.brokers], ["mqtt://a", "mqtts://b:8884"]
        )
        self.assertFalse(options.config.embedded_broker)

    def test_bad_values(self) -> None:
        """Unknown keys, bad types, bad endpoints, bad URIs: one line naming them."""
        self.assertIn(
            "http.listn", self.refused("--config", config_file("[http]\nlistn = []\n"))
        )
        self.assertIn(
            "mqtt.keepalive",
            self.refused("--config", config_file('[mqtt]\nkeepalive = "x"\n')),
        )
        self.assertIn(
            "http.listen: bad endpoint 'tcpp:80'",
            self.refused("--config", config_file('[http]\nlisten = ["tcpp:80"]\n')),
        )
        self.assertIn("--broker", self.refused("--broker", "http://x"))
        bad = config_file("user0:$5$nope\n")
        message = self.refused(
            "--config", config_file(f'[auth]\npassword_file = "{bad}"\n')
        )
        self.assertIn(f"auth.password_file: {bad}:1:", message)
        self.assertNotIn("nope", message)
        message = self.refused(
            "--config", config_file('[auth]\nacl_file = "missing-acl"\n')
        )
        self.assertIn("auth.acl_file:", message)
        self.assertIn("missing-acl", message)
        self.assertIn("nope.toml", self.refused("--config", "/nonexistent/nope.toml"))


class AssemblyTests(SynchronousTestCase):
    def test_pure(self) -> None:
        """Building the service tree for a reactor touches nothing: no file
        opened (the access log is created when its service starts), no
        listening, no connection, no system event trigger, nothing scheduled."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        access = os.path.join(directory, "access.log")
        config = config_file(
            "[http]\n"
            'listen = ["tcp:0:interface=127.0.0.1"]\n'
            "[mqtt]\n"
            'brokers = ["mqtt://127.0.0.1:1"]\n'
            "[admin]\n"
            'listen = "tcp:0:interface=127.0.0.1"\n'
            "[log]\n"
            f'access = "{access}"\n'
        )
        options = Options()
        options.parseOptions(["--config", config])
        reactor = MemoryReactor()
        root = makeService(options, reactor)
        self.assertFalse(os.path.exists(access))
        self.assertEqual(reactor.tcpServers, [])
        self.assertEqual(reactor.tcpClients, [])
        self.assertEqual(reactor.triggers, {})
        self.assertEqual(reactor.whenRunningHooks, [])
        names = {service.name for service in cast(Any, root)}
        self.assertLessEqual({"mqtt-session", "access-log"}, names)

    def test_endpoints_for_the_given_reactor(self) -> None:
        """The listeners are built once, for the reactor makeService is given."""
        options = Options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1"])
        reactor = MemoryReactor()
        root = makeService(options, reactor)
        [listener] = [s for s in cast(Any, root) if isinstance(s, Listener)]
        self.assertIs(listener.endpoint._reactor, reactor)


class CommandLineTests(TestCase):
    """The real twistd, as an operator runs it."""

    timeout = 60

    async def test_help(self) -> None:
        """--help documents every documented option."""
        out, err, code = await getProcessOutputAndValue(
            TWISTD, ("mqtt-http-gateway", "--help"), env=os.environ
        )
        self.assertEqual(code, 0, err)
        for option in ("--config", "--listen", "--tls-listen", "--broker", "--admin"):
            self.assertIn(option.encode(), out)

    async def test_bad_config(self) -> None:
        """A bad key stops start-up: exit status 1, one line, no traceback."""
        out, err, code = await twistd(
            "--config", config_file("[mqtt]\nkeepalive = -1\n")
        )
        self.assertEqual(code, 1)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn(b"mqtt.keepalive", err)
        self.assertNotIn(b"Traceback", out + err)

    async def test_bad_endpoint(self) -> None:
        """A listening endpoint that does not parse (found while the service
        tree is assembled) stops start-up the same way."""
        out, err, code = await twistd(
            "--config", config_file('[http]\nlisten = ["tcpp:80"]\n')
        )
        self.assertEqual(code, 1)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn(b"http.listen: bad endpoint 'tcpp:80'", err)
        self.assertNotIn(b"Traceback", out + err)

    async def test_port_in_use(self) -> None:
        """A listening port that cannot be bound: exit status 1, one line."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            out, err, code = await twistd(
                "--broker",
                "mqtt://127.0.0.1:1",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
            )
        self.assertEqual(code, 1, out + err)
        # twistd has taken over standard error by then: the line is in its log.
        self.assertIn(f"cannot listen on tcp:{port}".encode(), out + err)
        self.assertNotIn(b"Traceback", out + err)

    async def run_daemon(
        self, *args: str, env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        from twisted.internet import reactor
        from twisted.internet.protocol import ProcessProtocol

        port = free_port()
        ended: Deferred[int] = Deferred()
        output: list[bytes] = []

        class Watch(ProcessProtocol):
            def outReceived(self, data: bytes) -> None:
                output.append(data)

            errReceived = outReceived

            def processEnded(self, reason: object) -> None:
                ended.callback(reason.value.exitCode)  # type: ignore[attr-defined]

        process = reactor.spawnProcess(  # type: ignore[attr-defined]
            Watch(),
            TWISTD,
            [
                TWISTD,
                "--pidfile=",
                "-n",
                "mqtt-http-gateway",
                *args,
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
            ],
            env=os.environ if env is None else env,
        )

        def stop() -> Deferred[int]:
            if not ended.called:
                process.signalProcess(signal.SIGKILL)
            return ended

        self.addCleanup(stop)
        await poll(
            reactor,
            lambda: b"Connected to" in b"".join(output) or ended.called,
            15,
            lambda: b"".join(output).decode(errors="replace"),
        )
        self.output = output
        self.process = process
        self.ended = ended
        return port, b"".join(output).decode(errors="replace")

    async def test_example_config(self) -> None:
        """twistd with conf/gateway.toml (broker moved to a test Mosquitto) serves
        the seed example; SIGTERM stops it with exit status 0."""
        broker = Mosquitto()
        self.addCleanup(broker.stop)
        await broker.start()
        subscriber = Subscriber("127.0.0.1", broker.port, "#")
        self.addCleanup(subscriber.stop)
        await subscriber.start()
        port, log = await self.run_daemon(
            "--config", EXAMPLE, "--broker", f"mqtt://127.0.0.1:{broker.port}"
        )
        self.assertIn("Connected to", log)
        result = await curl(
            "--request",
            "POST",
            "-H",
            "Authorization: Basic dXNlcjA6c2VjcmV0MA==",
            "--data",
            '{ "message": "Hello, world" }',
            f"http://127.0.0.1:{port}/topics/home?qos=1&client_id=curl-x&retained=false",
        )
        self.assertEqual(result.status, 200)
        self.assertRegex(result.headers["x-message-id"], "^[0-9A-F]{32}$")
        [message] = await subscriber.wait_for(1)
        self.assertEqual(
            (message.topic, message.payload, message.qos, message.retain),
            ("home", b'{ "message": "Hello, world" }', 1, False),
        )
        self.process.signalProcess(signal.SIGTERM)
        self.assertEqual(await self.ended, 0)
        access = [
            line
            for line in b"".join(self.output).decode().splitlines()
            if line.startswith("{")
        ]
        import json

        [record] = [json.loads(line) for line in access]
        self.assertEqual(
            (record["method"], record["path"], record["status"], record["client_id"]),
            ("POST", "/topics/home", 200, "curl-x"),
        )
        self.assertEqual(record["message_id"], result.headers["x-message-id"])
        self.assertNotIn("Hello", b"".join(self.output).decode())

    def skip_unless_1883_free(self) -> None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 1883)) == 0:
                raise SkipTest("port 1883 is taken on this machine")

    async def test_zero_config(self) -> None:
        """With no configuration and Mosquitto installed: Mosquitto as the
        embedded broker on 127.0.0.1:1883, anonymous publishing, log lines saying
        so; an MQTT 5 subscriber sees the sender's user property; SIGTERM stops
        the daemon and the broker."""
        if shutil.which("mosquitto") is None:
            raise SkipTest("mosquitto is not installed")
        self.skip_unless_1883_free()
        port, log = await self.run_daemon()
        self.assertIn("embedded MQTT broker", log)
        self.assertIn("anonymous", log)
        self.assertIn(
            "Embedded MQTT broker (Mosquitto, MQTT 5 and 3.1.1, anonymous) "
            "listening on 127.0.0.1:1883",
            log,
        )
        self.assertIn("Connected to mqtt://127.0.0.1:1883 (MQTT 5,", log)
        subscriber = Subscriber("127.0.0.1", 1883, "#", protocol=5)
        self.addCleanup(subscriber.stop)
        await subscriber.start()
        result = await curl(
            "-X",
            "POST",
            "--data",
            "hi",
            f"http://127.0.0.1:{port}/topics/demo?qos=1&client_id=laptop",
        )
        self.assertEqual(result.status, 200)
        [message] = await subscriber.wait_for(1)
        self.assertEqual((message.topic, message.payload), ("demo", b"hi"))
        self.assertEqual(
            message.properties["UserProperty"], [("http-client-id", "laptop")]
        )
        self.process.signalProcess(signal.SIGTERM)
        self.assertEqual(await self.ended, 0)
        with socket.socket() as probe:
            self.assertNotEqual(probe.connect_ex(("127.0.0.1", 1883)), 0)

    async def test_zero_config_broker_dies_with_daemon(self) -> None:
        """A daemon killed with SIGKILL takes its Mosquitto child with it: port
        1883 is free again."""
        from twisted.internet import reactor

        if shutil.which("mosquitto") is None:
            raise SkipTest("mosquitto is not installed")
        self.skip_unless_1883_free()
        await self.run_daemon()
        self.process.signalProcess(signal.SIGKILL)
        await self.ended

        def closed() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", 1883)) != 0

        await poll(reactor, closed, 5, lambda: "Mosquitto outlived the daemon")

    async def test_zero_config_without_mosquitto(self) -> None:
        """With no mosquitto program on PATH: amqtt (MQTT 3.1.1) is the embedded
        broker, and the log says so and why; publishing still works."""
        self.skip_unless_1883_free()
        env = {**os.environ, "PATH": os.path.dirname(TWISTD)}
        port, log = await self.run_daemon(env=env)
        self.assertIn("No mosquitto program on PATH", log)
        self.assertIn(
            "Embedded MQTT broker (amqtt, MQTT 3.1.1, anonymous) listening on "
            "127.0.0.1:1883",
            log,
        )
        subscriber = Subscriber("127.0.0.1", 1883, "#", protocol=4)
        self.addCleanup(subscriber.stop)
        await subscriber.start()
        result = await curl(
            "-X", "POST", "--data", "hi", f"http://127.0.0.1:{port}/topics/demo?qos=1"
        )
        self.assertEqual(result.status, 200)
        [message] = await subscriber.wait_for(1)
        self.assertEqual((message.topic, message.payload), ("demo", b"hi"))
        self.process.signalProcess(signal.SIGTERM)
        self.assertEqual(await self.ended, 0)


del Amqtt, ensureDeferred
