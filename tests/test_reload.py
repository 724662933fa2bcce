"""
SIGHUP (C{systemctl reload}): the password file, ACL, TLS files
and limits are read again and put in force without dropping a connection; a bad
new file is refused with one log line naming it and the old one stays in force;
the access log is reopened after rotation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.accesslog import AccessLog
from gateway.auth.acl import ACL
from gateway.auth.certs import ServerTLSOptions, load_server_options
from gateway.auth.files import FileError
from gateway.auth.identify import Authenticator
from gateway.auth.passwords import PasswordFile
from gateway.auth.tls_reload import ReloadableServerTLS
from gateway.config import Config, ConfigError, LimitsConfig, load
from gateway.reload import Reloader, ReloadOnSIGHUP, command_line_loader
from gateway.swappable import daemon_parts
from tests.brokers import Mosquitto, free_port
from tests.certs import PKI, make_pki
from tests.fakes import Daemon
from tests.gateway import curl


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def password_line(user: str, password: str) -> str:
    """A mosquitto_passwd line with a legacy $6$ hash (quick to make)."""
    salt = os.urandom(12)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return (
        f"{user}:$6${base64.b64encode(salt).decode()}$"
        f"{base64.b64encode(digest).decode()}\n"
    )


@contextmanager
def captured_log() -> Iterator[list[LogEvent]]:
    """Every log event emitted meanwhile."""
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def lines(events: list[LogEvent], level: LogLevel | None = None) -> list[str]:
    return [
        formatEvent(e)
        for e in events
        if e.get("log_namespace") == "gateway.reload"
        and (level is None or e.get("log_level") is level)
    ]


class Holder:
    """Stands for the core: an ACL slot."""

    acl: Any = None


class Files:
    """A configuration folder: gateway.toml, passwords, acl, TLS files, access log."""

    def __init__(self, pki: PKI) -> None:
        self.pki = pki
        self.directory = tempfile.mkdtemp(prefix="reload-")
        self.config = os.path.join(self.directory, "gateway.toml")
        self.passwords = self.write("passwords", password_line("user0", "secret0"))
        self.acl = self.write("acl", "user user0\ntopic write home\n")
        self.access = os.path.join(self.directory, "access.log")
        self.cert = self.write("server.crt", read(pki.server_chain))
        self.key = self.write("server.key", read(pki.server_key))
        self.crl = self.write("revoked.crl", read(pki.crl))
        self.toml()

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def toml(
        self, extra: str = "", limits: str = "rate = 1000\nburst = 1000\n"
    ) -> None:
        self.write(
            "gateway.toml",
            '[http]\nlisten = ["tcp:8080:interface=127.0.0.1"]\n'
            '[tls]\nlisten = ["tcp:8443:interface=127.0.0.1"]\n'
            'cert = "server.crt"\nkey = "server.key"\n'
            f'client_ca = "{self.pki.ca}"\ncrl = "revoked.crl"\n'
            '[mqtt]\nbrokers = ["mqtt://127.0.0.1:1883"]\n'
            '[auth]\npassword_file = "passwords"\nacl_file = "acl"\n'
            f"[limits]\n{limits}"
            '[log]\naccess = "access.log"\n' + extra,
        )

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class ReloaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = make_pki()
        self.addCleanup(self.pki.remove)
        self.files = Files(self.pki)
        self.addCleanup(self.files.remove)
        self.config = load(self.files.config)
        self.authenticator = Authenticator(
            PasswordFile.load(self.files.passwords), allow_anonymous=False
        )
        self.core = Holder()
        self.core.acl = ACL.load(self.files.acl)
        self.tls_options = load_server_options(self.config.tls)
        self.tls = ReloadableServerTLS(self.tls_options)
        self.limits: list[LimitsConfig] = []
        self.access_log = AccessLog(self.config.log.access, Clock())
        self.access_log.startService()
        self.addCleanup(self.access_log.stopService)
        self.reloader = self.make_reloader(lambda: load(self.files.config))

    def make_reloader(self, load_config: Callable[[], Config] | None) -> Reloader:
        return Reloader(
            self.config,
            load_config,
            daemon_parts(
                self.config,
                authenticator=self.authenticator,
                core=self.core,
                tls=self.tls,
                apply_limits=self.limits.append,
                access_log=self.access_log,
            ),
        )

    def verify(self, user: str, password: str) -> bool:
        passwords = self.authenticator.passwords
        return passwords is not None and bool(passwords.verify(user, password.encode()))

    def test_passwords(self) -> None:
        """A changed password file is in force after the reload."""
        self.files.write(
            "passwords",
            password_line("user0", "new0") + password_line("user1", "secret1"),
        )
        report = self.reloader.reload()
        self.assertIn("passwords", report.applied)
        self.assertTrue(self.verify("user0", "new0"))
        self.assertFalse(self.verify("user0", "secret0"))
        self.assertTrue(self.verify("user1", "secret1"))

    def test_bad_acl(self) -> None:
        """A new ACL that does not parse is refused with one log line naming the
        file; the old ACL stays; the new password file is applied all the same."""
        self.files.write("acl", "user user0\ntopic write home/#/x\n")
        self.files.write("passwords", password_line("user0", "new0"))
        old = self.core.acl
        with captured_log() as events:
            report = self.reloader.reload()
        self.assertIs(self.core.acl, old)
        self.assertTrue(self.core.acl.may_publish("home", "user0", "c"))
        self.assertTrue(self.verify("user0", "new0"))
        self.assertIn("passwords", report.applied)
        self.assertNotIn("acl", report.applied)
        [error] = lines(events, LogLevel.error)
        self.assertIn(f"{self.files.acl}:2", error)
        self.assertIn("the previous one stays in force", error)
        [refused] = report.refused
        self.assertIn(refused, error)

    def test_acl(self) -> None:
        """A changed ACL is in force after the reload."""
        self.files.write("acl", "user user0\ntopic write other\n")
        self.reloader.reload()
        self.assertFalse(self.core.acl.may_publish("home", "user0", "c"))
        self.assertTrue(self.core.acl.may_publish("other", "user0", "c"))

    def test_bad_passwords(self) -> None:
        """A bad password file is refused; the old one stays."""
        self.files.write("passwords", "user0:not-a-hash\n")
        with captured_log() as events:
            report = self.reloader.reload()
        self.assertTrue(self.verify("user0", "secret0"))
        [error] = lines(events, LogLevel.error)
        self.assertIn(f"{self.files.passwords}:1", error)
        self.assertNotIn("not-a-hash", error)
        self.assertEqual(len(report.refused), 1)

    def test_tls(self) -> None:
        """A new certificate (and CRL) is swapped in for new connections."""
        server = self.pki.intermediate.issue("localhost", server=True)
        self.files.write("server.crt", server.chain_pem().decode())
        self.files.write("server.key", server.key_pem().decode())
        report = self.reloader.reload()
        self.assertIn("tls", report.applied)
        options = self.tls.options
        self.assertIsNot(options, self.tls_options)
        assert isinstance(options, ServerTLSOptions)
        served = options.serverConnectionForTLS(None).get_certificate()
        assert served is not None
        self.assertEqual(
            served.to_cryptography().serial_number, server.certificate.serial_number
        )

    def test_tls_unchanged(self) -> None:
        """Unchanged TLS files are not reloaded, so that TLS sessions (tickets,
        cache) survive a reload for log rotation."""
        report = self.reloader.reload()
        self.assertNotIn("tls", report.applied)
        self.assertIs(self.tls.options, self.tls_options)
        self.files.write(
            "revoked.crl",
            self.pki.intermediate.crl([self.pki.device.certificate])
            .public_bytes(Encoding.PEM)
            .decode(),
        )
        self.assertIn("tls", self.reloader.reload().applied)
        self.assertNotIn("tls", self.reloader.reload().applied)

    def test_bad_tls(self) -> None:
        """A key that does not match the certificate is refused; the old
        settings stay."""
        other = self.pki.intermediate.issue("localhost", server=True)
        self.files.write("server.key", other.key_pem().decode())
        with captured_log() as events:
            report = self.reloader.reload()
        self.assertIs(self.tls.options, self.tls_options)
        [error] = lines(events, LogLevel.error)
        self.assertIn(self.files.key, error)
        self.assertEqual(len(report.refused), 1)
        # Fixed: applied at the next reload.
        self.files.write("server.crt", other.chain_pem().decode())
        self.assertIn("tls", self.reloader.reload().applied)

    def test_limits(self) -> None:
        """Changed limits are handed over once; unchanged ones are not."""
        self.reloader.reload()
        self.assertEqual(self.limits, [])
        self.files.toml(
            limits="rate = 5\nburst = 10\nclient_rate = 1\nclient_burst = 2\n"
        )
        report = self.reloader.reload()
        self.assertIn("limits", report.applied)
        self.assertEqual(self.limits, [LimitsConfig(5.0, 10, 1.0, 2)])
        self.reloader.reload()
        self.assertEqual(len(self.limits), 1)

    def test_allow_anonymous(self) -> None:
        """auth.allow_anonymous follows the file."""
        self.files.toml(extra="")
        text = read(self.files.config).replace(
            'acl_file = "acl"\n', 'acl_file = "acl"\nallow_anonymous = true\n'
        )
        self.files.write("gateway.toml", text)
        self.assertIn("allow_anonymous", self.reloader.reload().applied)
        self.assertTrue(self.authenticator.allow_anonymous)

    def test_restart_needed(self) -> None:
        """Listen addresses, brokers and the like are not applied: one line
        names them and says a restart is needed."""
        text = read(self.files.config)
        text = text.replace("tcp:8080:", "tcp:8081:").replace(":1883", ":1884")
        self.files.write("gateway.toml", text)
        with captured_log() as events:
            report = self.reloader.reload()
        self.assertEqual(report.restart_needed, ("http.listen", "mqtt.brokers"))
        [warning] = lines(events, LogLevel.warn)
        self.assertIn("http.listen, mqtt.brokers", warning)
        self.assertIn("restart", warning)

    def test_max_batch_needs_restart(self) -> None:
        """A changed [http] max_batch is named as needing a restart."""
        text = read(self.files.config).replace("[http]\n", "[http]\nmax_batch = 5\n")
        self.assertIn("max_batch = 5", text)
        self.files.write("gateway.toml", text)
        self.assertEqual(self.reloader.reload().restart_needed, ("http.max_batch",))

    def test_bad_config(self) -> None:
        """A config file that does not parse is refused with one line naming it;
        the files the running configuration names are read again."""
        self.files.write("passwords", password_line("user0", "new0"))
        self.files.write("gateway.toml", "[http]\nlisten = [\n")
        with captured_log() as events:
            report = self.reloader.reload()
        [error] = lines(events, LogLevel.error)
        self.assertIn(self.files.config, error)
        self.assertTrue(self.verify("user0", "new0"))
        self.assertEqual(report.restart_needed, ())
        self.files.toml(limits="rate = 0\n")
        text = read(self.files.config) + "[mqtt]\nkeepalive = -1\n"
        self.files.write("gateway.toml", text)
        with captured_log() as events:
            self.reloader.reload()
        [error] = lines(events, LogLevel.error)
        self.assertIn(self.files.config, error)
        self.assertEqual(self.limits, [])

    def test_access_log(self) -> None:
        """The access log is reopened: after rotation, records go to a new file."""
        self.access_log({"n": 1})
        self.access_log.flush()
        os.rename(self.files.access, self.files.access + ".1")
        report = self.reloader.reload()
        self.assertIn("access_log", report.applied)
        self.access_log({"n": 2})
        self.access_log.flush()
        with open(self.files.access + ".1") as f:
            self.assertEqual([json.loads(line) for line in f], [{"n": 1}])
        with open(self.files.access) as f:
            self.assertEqual([json.loads(line) for line in f], [{"n": 2}])

    def test_access_log_unwritable(self) -> None:
        """A log file that cannot be opened again is refused; the old one stays
        open and records still reach it."""
        self.access_log({"n": 1})
        moved = self.files.access + ".moved"
        os.rename(self.files.access, moved)
        os.mkdir(self.files.access)  # a folder where the file should be
        self.addCleanup(os.rmdir, self.files.access)
        with captured_log() as events:
            report = self.reloader.reload()
        self.assertNotIn("access_log", report.applied)
        [error] = lines(events, LogLevel.error)
        self.assertIn(self.files.access, error)
        self.access_log({"n": 2})
        self.access_log.flush()
        with open(moved) as f:
            self.assertEqual([json.loads(line) for line in f], [{"n": 1}, {"n": 2}])

    def test_without_config_file(self) -> None:
        """With no config file (the laptop default) a reload reopens the log."""
        reloader = self.make_reloader(None)
        self.files.write("passwords", "broken\n")
        report = reloader.reload()
        self.assertEqual(report.applied, ("access_log",))
        self.assertTrue(self.verify("user0", "secret0"))

    def test_command_line(self) -> None:
        """A reload reads the file with the command line's overrides, so they do
        not count as changes."""
        options = {
            "config": self.files.config,
            "listen": ["tcp:9000"],
            "tls-listen": [],
            "broker": ["mqtt://10.0.0.1"],
            "admin": None,
        }
        load_config = command_line_loader(options)
        assert load_config is not None
        config = load_config()
        self.assertEqual(config.http.listen, ("tcp:9000",))
        self.assertEqual(config.mqtt.brokers[0].host, "10.0.0.1")
        self.assertIsNone(command_line_loader({**options, "config": None}))
        reloader = Reloader(config, load_config)
        self.assertEqual(reloader.reload().restart_needed, ())


@attrs.define
class Part:
    """A swappable part that does what the test says."""

    outcome: Callable[[Config], str | None]
    part: str = "fake"
    what: str = "the fake part"
    reads: str = "files"
    seen: list[Config] = attrs.Factory(list)

    def swap(self, config: Config) -> str | None:
        self.seen.append(config)
        return self.outcome(config)


class SwappableTests(SynchronousTestCase):
    """Every part changes through the one interface: a refusal is one
    ConfigError (a FileError naming the file), logged in one line, and the
    other parts are swapped all the same."""

    def test_parts(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "gateway.toml")
        with open(path, "w") as f:
            f.write("[limits]\nrate = 5.0\nburst = 5\n")
        running = load(path)

        def refuse(config: Config) -> str | None:
            raise FileError("/etc/x.pem", 3, "not PEM")

        refused = Part(refuse, part="refused")
        applied = Part(lambda config: "done", part="applied")
        settings = Part(lambda config: "set", part="settings", reads="settings")
        always = Part(lambda config: None, part="always", reads="nothing")
        reloader = Reloader(
            running,
            lambda: load(path),
            cast(Any, [always, refused, applied, settings]),
        )
        with captured_log() as events:
            report = reloader.reload()
        self.assertEqual(report.applied, ("applied", "settings"))
        self.assertEqual(report.refused, ("/etc/x.pem:3: not PEM",))
        [error] = lines(events, LogLevel.error)
        self.assertIn("the fake part: /etc/x.pem:3: not PEM", error)
        self.assertEqual(always.seen, [running], "reads nothing of the new file")
        with open(path, "w") as f:
            f.write("[limits]\nrate = -1\n")
        report = reloader.reload()
        self.assertEqual(len(settings.seen), 1, "settings only from a valid file")
        self.assertIs(applied.seen[-1], running, "files of the running one")
        self.assertEqual(report.applied, ("applied",))
        self.assertTrue(issubclass(FileError, ConfigError))


class FakeReactor:
    """Runs what is scheduled at once."""

    def callWhenRunning(self, f: Callable[..., object], *a: object) -> None:
        f(*a)

    def callFromThread(self, f: Callable[..., object], *a: object) -> None:
        f(*a)


class SIGHUPTests(SynchronousTestCase):
    def test_signal(self) -> None:
        """SIGHUP calls the reload while the service runs; stopping puts the
        previous handler back."""
        calls: list[int] = []
        before = signal.getsignal(signal.SIGHUP)
        service = ReloadOnSIGHUP(lambda: calls.append(1), FakeReactor())
        service.startService()
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            self.assertEqual(calls, [1])
        finally:
            service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)

    def test_failure_logged(self) -> None:
        """A reload that raises is logged, not fatal."""

        def broken() -> None:
            raise RuntimeError("boom")

        ReloadOnSIGHUP(broken, FakeReactor()).reload()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


@attrs.frozen
class Response:
    status: int
    body: bytes


def _read_response(sock: ssl.SSLSocket) -> Response:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(65536)
    return Response(int(head.split(b" ")[1]), body)


class KeepAlive:
    """An HTTP/1.1 keep-alive connection over TLS, in blocking Python: a
    device's (its certificate) or, with C{basic}, a user's without one."""

    def __init__(self, port: int, pki: PKI, basic: str | None = None) -> None:
        context = ssl.create_default_context(cafile=pki.ca)
        self.authorization = ""
        if basic is None:
            context.load_cert_chain(pki.client_chain, pki.client_key)
        else:
            token = base64.b64encode(basic.encode()).decode()
            self.authorization = f"Authorization: Basic {token}\r\n"
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")

    def post(self, topic: str) -> Response:
        self.sock.sendall(
            f"POST /topics/{topic}?qos=1 HTTP/1.1\r\nHost: localhost\r\n"
            f"{self.authorization}Content-Length: 2\r\n\r\nhi".encode()
        )
        return _read_response(self.sock)

    def close(self) -> None:
        self.sock.close()


def served_serial(port: int, ca: str) -> int:
    """The serial number of the certificate a new TLS connection is served."""
    context = ssl.create_default_context(cafile=ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


class SIGHUPEndToEndTests(TestCase):
    """twistd under a SIGHUP, as C{systemctl reload} sends it."""

    timeout = 90

    async def test_reload(self) -> None:
        """After SIGHUP: the new certificate is served on the same port, a newly
        revoked device is refused and its keep-alive connection opened before
        is closed (the reload's log line says so), another keep-alive
        connection (Basic auth) still works, a broken new ACL is refused with
        one log line while the old ACL applies, and the access log is
        reopened."""
        pki = make_pki()
        self.addCleanup(pki.remove)
        files = Files(pki)
        self.addCleanup(files.remove)
        broker = Mosquitto()
        self.addCleanup(broker.stop)
        await broker.start()
        tls_port = free_port()
        files.toml()
        text = read(files.config)
        text = text.replace("tcp:8443:", f"tcp:{tls_port}:").replace(
            "mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{broker.port}"
        )
        files.write("gateway.toml", text)
        files.write("acl", "user user0\ntopic write home\npattern write home\n")
        daemon = Daemon(
            self,
            "--config",
            files.config,
            "--listen",
            f"tcp:{free_port()}:interface=127.0.0.1",
        )
        await daemon.wait_for("Connected to")

        def device(topic: str = "home") -> Any:
            return curl(
                "--cacert",
                pki.ca,
                "--cert",
                pki.client_chain,
                "--key",
                pki.client_key,
                "-X",
                "POST",
                "--data",
                "hi",
                f"https://localhost:{tls_port}/topics/{topic}?qos=1",
            )

        def user0(topic: str) -> Any:
            return curl(
                "--cacert",
                pki.ca,
                "-u",
                "user0:secret0",
                "-X",
                "POST",
                "--data",
                "hi",
                f"https://localhost:{tls_port}/topics/{topic}?qos=1",
            )

        before = await deferToThread(served_serial, tls_port, pki.ca)
        self.assertEqual(before, pki.server.certificate.serial_number)
        keep_alive = await deferToThread(KeepAlive, tls_port, pki)
        self.addCleanup(keep_alive.close)
        self.assertEqual((await deferToThread(keep_alive.post, "home")).status, 200)
        user_kept = await deferToThread(KeepAlive, tls_port, pki, "user0:secret0")
        self.addCleanup(user_kept.close)
        self.assertEqual((await deferToThread(user_kept.post, "home")).status, 200)
        self.assertEqual((await device()).status, 200)
        self.assertEqual((await user0("home")).status, 200)
        self.assertEqual((await user0("other")).status, 403)

        server = pki.intermediate.issue("localhost", server=True)
        files.write("server.crt", server.chain_pem().decode())
        files.write("server.key", server.key_pem().decode())
        crl = pki.intermediate.crl([pki.revoked.certificate, pki.device.certificate])
        files.write("revoked.crl", crl.public_bytes(Encoding.PEM).decode())
        files.write("acl", "user user0\ntopic write other\ntopic write a/#/b\n")
        os.rename(files.access, files.access + ".1")
        daemon.signal("HUP")
        await daemon.wait_for("Reload: TLS settings")

        after = await deferToThread(served_serial, tls_port, pki.ca)
        self.assertEqual(after, server.certificate.serial_number)
        refused = await device()
        self.assertEqual(refused.status, 0, refused.raw_head)
        self.assertIn(
            "closed 1 open connection(s) whose device certificate they refuse",
            daemon.output,
        )
        with self.assertRaises((ConnectionError, ssl.SSLError)):
            await deferToThread(keep_alive.post, "home")
        self.assertEqual((await deferToThread(user_kept.post, "home")).status, 200)
        refusals = [
            line for line in daemon.output.splitlines() if "Reload refused" in line
        ]
        self.assertEqual(len(refusals), 1, daemon.output)
        self.assertIn(f"{files.acl}:3", refusals[0])
        self.assertEqual((await user0("home")).status, 200)
        self.assertEqual((await user0("other")).status, 403)
        self.assertEqual(await daemon.stop(), 0)
        with open(files.access) as f:
            self.assertTrue(f.read().strip(), "the reopened access log gets records")
