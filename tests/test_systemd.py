"""
Running under systemd, tested without systemd: sd_notify
datagrams to a socket of the test's own, socket activation with a listening
socket handed to twistd as systemd hands it over, the unit files checked by
C{systemd-analyze verify}, and the README's openssl recipe for device
certificates run as written.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from typing import Any, cast

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from gateway.mqtt.passthrough import PassthroughPublisher
from gateway.mqtt.publisher import SharedPublisher
from gateway.mqtt.session import Broker, BrokerSession, SessionSettings
from gateway.status import PublisherStatus
from gateway.systemd import Notifier, SystemdNotifier, broker_status, watchdog_interval
from tests.brokers import Mosquitto, Subscriber, free_port, poll
from tests.fakes import TWISTD, Daemon, FakePublisher
from tests.gateway import RunningGateway, curl

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class NotifySocket:
    """
    A stand-in for systemd's notification socket: a bound AF_UNIX datagram
    socket, at a path in a new folder or in the abstract namespace.

    @ivar address: the value for C{$NOTIFY_SOCKET}.
    @ivar messages: every datagram received so far, decoded.
    """

    def __init__(self, abstract: bool = False) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"mqtt-http-gateway-test-{os.getpid()}-{os.urandom(4).hex()}"
            self.socket.bind("\0" + name)
            self.address = "@" + name
            self.directory = None
        else:
            self.directory = tempfile.mkdtemp(prefix="notify-")
            self.address = os.path.join(self.directory, "notify")
            self.socket.bind(self.address)
        self.socket.setblocking(False)
        self.messages: list[str] = []

    def receive(self) -> list[str]:
        """Everything received so far (reads what is waiting)."""
        while True:
            try:
                self.messages.append(self.socket.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def assignments(self) -> list[str]:
        """The received messages split into their C{NAME=value} lines."""
        return [line for m in self.receive() for line in m.split("\n")]

    def close(self) -> None:
        self.socket.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


class NotifierTests(SynchronousTestCase):
    def socket(self, abstract: bool = False) -> NotifySocket:
        notify = NotifySocket(abstract)
        self.addCleanup(notify.close)
        return notify

    def test_path(self) -> None:
        """A message is one datagram to the socket path in $NOTIFY_SOCKET."""
        notify = self.socket()
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": notify.address})
        assert notifier is not None
        self.addCleanup(notifier.close)
        self.assertTrue(notifier.send("READY=1", "STATUS=Listening"))
        self.assertTrue(notifier.send("WATCHDOG=1"))
        self.assertEqual(notify.receive(), ["READY=1\nSTATUS=Listening", "WATCHDOG=1"])

    def test_abstract(self) -> None:
        """A $NOTIFY_SOCKET starting with @ names an abstract socket."""
        notify = self.socket(abstract=True)
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": notify.address})
        assert notifier is not None
        self.addCleanup(notifier.close)
        self.assertTrue(notifier.send("READY=1"))
        self.assertEqual(notify.receive(), ["READY=1"])

    def test_not_under_systemd(self) -> None:
        """Without a usable $NOTIFY_SOCKET there is nothing to notify."""
        for environ in (
            {},
            {"NOTIFY_SOCKET": ""},
            {"NOTIFY_SOCKET": "relative"},
            {"NOTIFY_SOCKET": "@"},
        ):
            self.assertIsNone(Notifier.from_environment(environ), environ)

    def test_gone(self) -> None:
        """A socket that is not there: the message is dropped, nothing raises,
        one warning is logged."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        notifier = Notifier(os.path.join(directory, "none"))
        self.addCleanup(notifier.close)
        self.assertFalse(notifier.send("READY=1"))
        self.assertFalse(notifier.send("WATCHDOG=1"))

    def test_watchdog_interval(self) -> None:
        """Pings every third of WATCHDOG_USEC, only for the process it names."""
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "30000000"}), 10.0)
        self.assertEqual(
            watchdog_interval(
                {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "42"}, pid=42
            ),
            1.0,
        )
        self.assertIsNone(
            watchdog_interval(
                {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "41"}, pid=42
            )
        )
        for usec in ("", "0", "-5", "ten"):
            self.assertIsNone(watchdog_interval({"WATCHDOG_USEC": usec}))
        self.assertIsNone(watchdog_interval({}))


class SystemdNotifierTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.notify = NotifySocket()
        self.addCleanup(self.notify.close)
        self.clock = Clock()
        self.publisher = FakePublisher(connected=False)

    def service(self, **environ: str) -> SystemdNotifier:
        service = SystemdNotifier(
            self.publisher,
            clock=self.clock,
            environ={"NOTIFY_SOCKET": self.notify.address, **environ},
        )

        def stop() -> None:
            if service.running:
                service.stopService()

        self.addCleanup(stop)
        return service

    def test_lifecycle(self) -> None:
        """READY=1 with a status when started, the broker's state as it changes,
        STOPPING=1 when stopped."""
        service = self.service()
        service.startService()
        self.assertEqual(
            self.notify.receive(),
            ["READY=1\nSTATUS=Listening; connecting to the MQTT broker"],
        )
        self.clock.advance(1)
        self.assertEqual(
            self.notify.receive()[1:], ["STATUS=Broker unreachable, retrying"]
        )
        self.clock.advance(5)
        self.publisher.set_connected(False)
        self.assertEqual(len(self.notify.receive()), 2, "only changes are sent")
        self.publisher.set_connected(True)
        self.assertEqual(self.notify.receive()[2:], ["STATUS=Ready"])
        service.stopService()
        self.assertEqual(
            self.notify.receive()[3:], ["STOPPING=1\nSTATUS=Shutting down"]
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_polling(self) -> None:
        """Status lines come from the publisher's observers: once the first
        second is over nothing is scheduled, and a change is sent at once;
        once stopped, changes are no longer heard."""
        service = self.service()
        service.startService()
        self.clock.advance(1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.publisher.set_connected(True)
        self.assertEqual(self.notify.receive()[-1:], ["STATUS=Ready"])
        service.stopService()
        self.publisher.set_connected(False)
        self.assertEqual(
            self.notify.receive()[-1:], ["STOPPING=1\nSTATUS=Shutting down"]
        )

    def test_watchdog(self) -> None:
        """With WATCHDOG_USEC set, WATCHDOG=1 every third of it from the reactor."""
        service = self.service(WATCHDOG_USEC="3000000", WATCHDOG_PID=str(os.getpid()))
        self.publisher.connected = True
        service.startService()
        self.assertEqual(
            self.notify.assignments(), ["READY=1", "STATUS=Ready", "WATCHDOG=1"]
        )
        self.clock.pump([0.5] * 6)
        pings = [m for m in self.notify.assignments() if m == "WATCHDOG=1"]
        self.assertEqual(len(pings), 4)
        service.stopService()
        self.clock.advance(10)
        self.assertEqual(
            self.notify.assignments()[-2:], ["STOPPING=1", "STATUS=Shutting down"]
        )

    def test_watchdog_for_another_process(self) -> None:
        """WATCHDOG_PID of another process: no pings from this one."""
        service = self.service(WATCHDOG_USEC="3000000", WATCHDOG_PID="1")
        service.startService()
        self.clock.advance(3)
        self.assertNotIn("WATCHDOG=1", self.notify.assignments())

    def test_without_systemd(self) -> None:
        """Without NOTIFY_SOCKET the service does nothing at all."""
        service = SystemdNotifier(
            self.publisher, clock=self.clock, environ={"WATCHDOG_USEC": "3000000"}
        )
        service.startService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        service.stopService()
        self.assertEqual(self.notify.receive(), [])

    def test_broker_status(self) -> None:
        """STATUS names the broker of the gateway's session, or the brokers it
        keeps trying."""
        self.assertEqual(
            broker_status(
                PublisherStatus(
                    connected=True,
                    broker="mqtt://broker.example:1883",
                    protocol_level=4,
                )
            ),
            "Connected to mqtt://broker.example:1883 (MQTT 3.1.1)",
        )
        self.assertEqual(
            broker_status(PublisherStatus(connected=False), ("mqtt://a:1883",)),
            "Broker unreachable, retrying (mqtt://a:1883)",
        )

    def test_broker_mode_status(self) -> None:
        """Broker mode's STATUS says whether a broker is reachable."""
        self.assertEqual(
            broker_status(PublisherStatus(connected=True, sessions=2)),
            "Broker mode: a broker is reachable",
        )
        self.assertEqual(
            broker_status(PublisherStatus(connected=False, sessions=0)),
            "Broker mode: no broker reachable, retrying",
        )

    def test_real_publishers(self) -> None:
        """The gateway's publishers say what the status lines need."""
        session = BrokerSession(
            [Broker("mqtt://127.0.0.1:1", cast(Any, None))],
            SessionSettings(client_id="gateway"),
            clock=self.clock,
        )
        self.assertEqual(
            broker_status(SharedPublisher(session).status(), ("mqtt://127.0.0.1:1",)),
            "Broker unreachable, retrying (mqtt://127.0.0.1:1)",
        )
        passthrough = PassthroughPublisher(
            [Broker("mqtt://127.0.0.1:1", cast(Any, None))],
            clock=self.clock,
            probe_interval=None,
        )
        self.assertEqual(
            broker_status(passthrough.status()), "Broker mode: a broker is reachable"
        )


class UnitFileTests(SynchronousTestCase):
    def test_verify(self) -> None:
        """systemd-analyze verify finds nothing to say about the unit files (the
        ExecStart path made to exist)."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed (Debian package systemd)")
        directory = tempfile.mkdtemp(prefix="units-")
        self.addCleanup(shutil.rmtree, directory)
        units = []
        for name in sorted(os.listdir(os.path.join(ROOT, "systemd"))):
            with open(os.path.join(ROOT, "systemd", name)) as f:
                text = f.read()
            text = text.replace("/opt/mqtt-http-gateway/.venv/bin/twistd", TWISTD)
            path = os.path.join(directory, name)
            with open(path, "w") as f:
                f.write(text)
            units.append(path)
        result = subprocess.run(
            [analyze, "verify", "--man=no", *units],
            check=False,
            capture_output=True,
            text=True,
            cwd=directory,
        )
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_promises(self) -> None:
        """The service is Type=notify with a watchdog, reloads with SIGHUP, and
        the sockets name their descriptors as the README's endpoints expect."""
        with open(os.path.join(ROOT, "systemd", "mqtt-http-gateway.service")) as f:
            service = _directives(f.read())
        for directive in (
            "Type=notify",
            "NotifyAccess=main",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "Restart=on-failure",
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
            "ReadOnlyPaths=/etc/mqtt-http-gateway",
        ):
            self.assertIn(directive, service)
        self.assertTrue(any(d.startswith("WatchdogSec=") for d in service))
        for name, port in (("http", 80), ("https", 443)):
            unit = (
                "mqtt-http-gateway.socket"
                if name == "http"
                else "mqtt-http-gateway-https.socket"
            )
            with open(os.path.join(ROOT, "systemd", unit)) as f:
                socket_unit = _directives(f.read())
            self.assertIn(f"FileDescriptorName={name}", socket_unit)
            self.assertIn(f"ListenStream=0.0.0.0:{port}", socket_unit)
            self.assertIn("Service=mqtt-http-gateway.service", socket_unit)


def _directives(text: str) -> list[str]:
    return [
        line.strip()
        for line in text.replace("\\\n", " ").splitlines()
        if line.strip() and not line.startswith(("#", ";", "["))
    ]


def listening_socket() -> socket.socket:
    """A TCP socket listening on a free port of 127.0.0.1, as systemd makes one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


class SocketActivationTests(TestCase):
    """The daemon serves on sockets systemd bound for it (ports 80 and 443 in
    production), by index or by FileDescriptorName."""

    timeout = 60

    async def test_inherited_sockets(self) -> None:
        """HTTP on an inherited socket picked by index, HTTPS on one picked by
        name; curl publishes through both."""
        from tests.certs import make_pki

        pki = make_pki()
        self.addCleanup(pki.remove)
        broker = Mosquitto()
        self.addCleanup(broker.stop)
        await broker.start()
        subscriber = Subscriber("127.0.0.1", broker.port, "#")
        self.addCleanup(subscriber.stop)
        await subscriber.start()
        config = pki.write(
            "gateway.toml",
            (
                '[http]\nlisten = ["systemd:domain=INET:index=0"]\n'
                '[tls]\nlisten = ["systemd:domain=INET:name=https"]\n'
                f'cert = "{pki.server_chain}"\nkey = "{pki.server_key}"\n'
                'client_cert = "none"\n'
                "[auth]\nallow_anonymous = true\n"
                f'[mqtt]\nbrokers = ["mqtt://127.0.0.1:{broker.port}"]\n'
            ).encode(),
        )
        http, https = listening_socket(), listening_socket()
        http_port, https_port = http.getsockname()[1], https.getsockname()[1]
        with http, https:
            daemon = Daemon(
                self, "--config", config, sockets=[("http", http), ("https", https)]
            )
        await daemon.wait_for("Connected to")
        self.assertIn("Serving HTTP on systemd:domain=INET:index=0", daemon.output)
        self.assertIn("Serving HTTPS on systemd:domain=INET:name=https", daemon.output)
        result = await curl(
            "-X", "POST", "--data", "plain", f"http://127.0.0.1:{http_port}/topics/a"
        )
        self.assertEqual(result.status, 200, result.raw_head)
        result = await curl(
            "--cacert",
            pki.ca,
            "-X",
            "POST",
            "--data",
            "tls",
            f"https://localhost:{https_port}/topics/b",
        )
        self.assertEqual(result.status, 200, result.raw_head)
        messages = await subscriber.wait_for(2)
        self.assertEqual(
            sorted((m.topic, m.payload) for m in messages),
            [("a", b"plain"), ("b", b"tls")],
        )
        self.assertEqual(await daemon.stop(), 0)


class NotifyUnderTwistdTests(TestCase):
    """The assembled daemon talks to systemd: READY=1 once listening, its
    broker status, watchdog pings, STOPPING=1 on SIGTERM."""

    timeout = 60

    async def test_notifications(self) -> None:
        broker = Mosquitto()
        self.addCleanup(broker.stop)
        await broker.start()
        notify = NotifySocket(abstract=True)
        self.addCleanup(notify.close)
        port = free_port()
        daemon = Daemon(
            self,
            "--broker",
            f"mqtt://127.0.0.1:{broker.port}",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "300000"},
        )
        await poll(
            daemon.reactor,
            lambda: (
                f"STATUS=Connected to mqtt://127.0.0.1:{broker.port} (MQTT 5)"
                in notify.assignments()
            ),
            15,
            lambda: f"{notify.messages}\n{daemon.output}",
        )
        assignments = notify.assignments()
        self.assertEqual(assignments[0], "READY=1")
        self.assertIn("Serving HTTP on", daemon.output)
        await poll(
            daemon.reactor,
            lambda: notify.assignments().count("WATCHDOG=1") >= 3,
            5,
            lambda: f"{notify.messages}",
        )
        self.assertEqual(await daemon.stop(), 0)
        self.assertIn("STOPPING=1", notify.assignments())


SEED_DATA = '{ "message": "Hello, world" }'


def readme_blocks(heading: str) -> list[str]:
    """The C{sh} code blocks of the README section C{heading}, in order."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end >= 0 else len(text)]
    return re.findall(r"```sh\n(.*?)```", section, re.DOTALL)


class OpenSSLRecipeTests(TestCase):
    """The README's openssl commands make the seed's device files, and a device
    with them publishes with the seed's curl command."""

    timeout = 60

    def run_block(self, block: str, directory: str) -> None:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=directory,
            check=False,
            capture_output=True,
            text=True,
        )
        self.assertEqual(
            result.returncode, 0, f"{block}\n{result.stdout}{result.stderr}"
        )

    def openssl(self, *args: str, directory: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", *args],
            cwd=directory,
            check=False,
            capture_output=True,
            text=True,
        )

    async def test_recipe(self) -> None:
        if shutil.which("openssl") is None:
            raise SkipTest("the openssl command is not installed")
        blocks = readme_blocks("Issue device certificates with openssl")
        self.assertEqual(len(blocks), 5, "CA, server, device, CRL, revocation")
        directory = tempfile.mkdtemp(prefix="openssl-recipe-")
        self.addCleanup(shutil.rmtree, directory)
        for block in blocks[:4]:
            self.run_block(block, directory)
        device = os.path.join(directory, "device-42")
        for name in ("CA.crt", "client.chain.crt", "client.pkcs8.key"):
            self.assertTrue(os.path.exists(os.path.join(device, name)), name)
        for name in ("server.crt", "server.key", "revoked.crl"):
            self.assertTrue(os.path.exists(os.path.join(directory, name)), name)
        with open(os.path.join(device, "client.pkcs8.key")) as f:
            # PKCS#8, as curl --key client.pkcs8.key expects.
            self.assertTrue(f.read().startswith("-----BEGIN " + "PRIVATE KEY-----\n"))
        verify_device = (
            "verify",
            "-CAfile",
            "device-42/CA.crt",
            "-untrusted",
            "device-42/client.chain.crt",
            "-crl_check",
            "-CRLfile",
            "revoked.crl",
            "device-42/client.chain.crt",
        )
        verified = self.openssl(*verify_device, directory=directory)
        self.assertEqual(
            verified.stdout.strip(), "device-42/client.chain.crt: OK", verified.stderr
        )
        verified = self.openssl(
            "verify", "-CAfile", "CA.crt", "server.crt", directory=directory
        )
        self.assertEqual(verified.stdout.strip(), "server.crt: OK", verified.stderr)

        broker = Mosquitto()
        self.addCleanup(broker.stop)
        await broker.start()
        subscriber = Subscriber("127.0.0.1", broker.port, "#")
        self.addCleanup(subscriber.stop)
        await subscriber.start()

        async def publish() -> Any:
            tls_port = free_port()
            running = RunningGateway(
                f'[mqtt]\nbrokers = ["mqtt://127.0.0.1:{broker.port}"]\n'
                '[log]\naccess = ""\n'
                f'[tls]\nlisten = ["tcp:{tls_port}:interface=127.0.0.1"]\n'
                f'cert = "{directory}/server.crt"\nkey = "{directory}/server.key"\n'
                f'client_ca = "{directory}/CA.crt"\ncrl = "{directory}/revoked.crl"\n'
            )
            await running.start()
            try:
                # The seed's command verbatim, in the folder of the files, with
                # the host name of the server certificate resolved to 127.0.0.1.
                return await curl(
                    "--resolve",
                    f"gateway.example:{tls_port}:127.0.0.1",
                    "--tlsv1.2",
                    "--cacert",
                    f"{device}/CA.crt",
                    "--cert",
                    f"{device}/client.chain.crt",
                    "--key",
                    f"{device}/client.pkcs8.key",
                    "--request",
                    "POST",
                    "--data",
                    SEED_DATA,
                    f"https://gateway.example:{tls_port}/topics/home?qos=1",
                )
            finally:
                await running.stop()

        result = await publish()
        self.assertEqual(result.status, 200, result.raw_head + result.stderr.decode())
        [message] = await subscriber.wait_for(1)
        self.assertEqual((message.topic, message.payload), ("home", SEED_DATA.encode()))
        self.assertEqual(
            dict(message.properties["UserProperty"]).get("http-client-id"), "device-42"
        )

        # The revocation step: the device is refused from then on.
        self.run_block(blocks[4], directory)
        verified = self.openssl(*verify_device, directory=directory)
        self.assertIn("certificate revoked", verified.stdout + verified.stderr)
        result = await publish()
        self.assertNotEqual(result.status, 200)
