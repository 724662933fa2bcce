"""
L{gateway.auth.passwords}: mosquitto_passwd files verify the passwords Mosquitto
accepts, refuse the ones it refuses, and do so cheaply for a device that sends one
request per message.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import time
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from gateway.auth.files import FileError
from gateway.auth.passwords import PasswordFile, VerificationCache
from tests.brokers import Mosquitto

# The tests count calls to hashlib.pbkdf2_hmac; the lines they build do not count.
_pbkdf2_hmac = hashlib.pbkdf2_hmac


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pbkdf2_line(
    user: str, password: bytes, iterations: int = 101, salt: bytes | None = None
) -> str:
    """A C{$7$} line as mosquitto_passwd writes it."""
    salt = os.urandom(12) if salt is None else salt
    digest = _pbkdf2_hmac("sha512", password, salt, iterations, 64)
    return f"{user}:$7${iterations}${b64(salt)}${b64(digest)}"


def sha512_line(user: str, password: bytes, salt: bytes | None = None) -> str:
    """A legacy C{$6$} line: SHA-512 of the password followed by the salt."""
    salt = os.urandom(12) if salt is None else salt
    digest = hashlib.sha512(password + salt).digest()
    return f"{user}:$6${b64(salt)}${b64(digest)}"


def mosquitto_passwd(path: str, user: str, password: str, *options: str) -> str:
    """Add C{user} to C{path} with the real mosquitto_passwd; return its line."""
    executable = shutil.which("mosquitto_passwd")
    if executable is None:
        raise SkipTest("mosquitto_passwd is not installed")
    create = [] if os.path.exists(path) else ["-c"]
    subprocess.run(
        [executable, *options, *create, "-b", path, user, password],
        check=True,
        capture_output=True,
    )
    with open(path, encoding="utf-8") as f:
        [line] = [line for line in f if line.startswith(f"{user}:")]
    return line.rstrip("\n")


def connack_code(host: str, port: int, username: str, password: bytes) -> int:
    """CONNECT with MQTT 5 as C{username}; the CONNACK reason code. Blocking."""
    from paho.mqtt import client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"pw-{os.urandom(4).hex()}",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set(username, password)  # type: ignore[arg-type]
    codes: list[int] = []

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, p: Any) -> None:
        codes.append(reason.value)

    client.on_connect = on_connect
    client.connect(host, port, keepalive=10)
    # Driven by hand: paho's own thread may sleep a second before it notices a
    # refused connection has ended.
    deadline = time.monotonic() + 5
    try:
        while not codes and time.monotonic() < deadline:
            client.loop(timeout=0.05)
        if not codes:
            raise AssertionError(f"no CONNACK for {username!r}")
        return codes[0]
    finally:
        client.disconnect()


class CountingPBKDF2:
    """Stands in for C{hashlib.pbkdf2_hmac}, recording the iteration counts."""

    def __init__(self) -> None:
        self.iterations: list[int] = []

    def __call__(
        self, name: str, password: bytes, salt: bytes, iterations: int, size: int
    ) -> bytes:
        self.iterations.append(iterations)
        return _pbkdf2_hmac(name, password, salt, iterations, size)


class SameAsMosquittoTests(TestCase):
    timeout = 30

    async def test_mosquitto_accepts_what_verify_accepts(self) -> None:
        """
        For lines from the real mosquitto_passwd ($7$ by default, $6$ with
        C{-H sha512}) and lines built by hand, a real Mosquitto accepts exactly
        the passwords L{PasswordFile.verify} accepts.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "passwd")
        mosquitto_passwd(path, "alice", "alice's secret")
        mosquitto_passwd(path, "bob", "bob-legacy", "-H", "sha512")
        mosquitto_passwd(path, "erin smith", "pass word")
        with open(path, "a", encoding="utf-8") as f:
            f.write(sha512_line("carol", b"carol-6") + "\n")
            f.write(pbkdf2_line("dave", b"dave-7", iterations=1000) + "\n")
            f.write(pbkdf2_line("frank", "fr\u00e4nk".encode()) + "\n")
        broker = Mosquitto(
            allow_anonymous=False, password_file=path, connection_messages=False
        )
        await broker.start()
        self.addCleanup(broker.stop)
        file = PasswordFile.load(path, cache=VerificationCache())

        cases = [
            ("alice", b"alice's secret", True),
            ("alice", b"alice's secreT", False),
            ("bob", b"bob-legacy", True),
            ("bob", b"bob-legacy ", False),
            ("erin smith", b"pass word", True),
            ("erin smith", b"password", False),
            ("carol", b"carol-6", True),
            ("carol", b"", False),
            ("dave", b"dave-7", True),
            ("dave", b"dave-6", False),
            ("frank", "fr\u00e4nk".encode(), True),
            ("frank", b"frank", False),
            ("nobody", b"alice's secret", False),
        ]

        def ask_broker() -> list[int]:
            return [
                connack_code(broker.host, broker.port, user, password)
                for user, password, _ in cases
            ]

        codes = await deferToThread(ask_broker)
        for (user, password, expected), code in zip(cases, codes, strict=True):
            self.assertEqual(code == 0, expected, (user, password, hex(code)))
            self.assertEqual(file.verify(user, password), expected, (user, password))


class ParseTests(SynchronousTestCase):
    def test_mosquitto_passwd_file(self) -> None:
        """
        A file written by mosquitto_passwd parses; its users are known and verify
        with their passwords only.
        """
        path = self.mktemp()
        line = mosquitto_passwd(path, "alice", "s3cret")
        self.assertTrue(line.startswith("alice:$7$101$"), line)
        legacy = mosquitto_passwd(path, "bob", "legacy", "-H", "sha512")
        self.assertTrue(legacy.startswith("bob:$6$"), legacy)
        file = PasswordFile.load(path, cache=VerificationCache())
        self.assertEqual(len(file), 2)
        self.assertIn("alice", file)
        self.assertNotIn("carol", file)
        self.assertTrue(file.verify("alice", b"s3cret"))
        self.assertFalse(file.verify("alice", b"legacy"))
        self.assertTrue(file.verify("bob", b"legacy"))
        self.assertFalse(file.verify("bob", b"s3cret"))
        self.assertFalse(file.verify("carol", b"s3cret"))

    def test_comments_blanks_and_line_ends(self) -> None:
        """
        Blank lines and C{#} comments are skipped; blanks around the user name
        and hash, and CRLF line ends, are ignored (as Mosquitto does).
        """
        text = (
            "# users\r\n\r\n   \n"
            + "  "
            + pbkdf2_line("alice", b"a").replace(":", " :\t", 1)
            + " \r\n"
            + sha512_line("bob smith", b"b")
            + "\n# the end"
        )
        file = PasswordFile.parse(text, cache=VerificationCache())
        self.assertEqual(len(file), 2)
        self.assertTrue(file.verify("alice", b"a"))
        self.assertTrue(file.verify("bob smith", b"b"))

    def test_malformed(self) -> None:
        """
        Each malformed line is refused with one line naming the file and line
        number, and the message holds neither the password nor the hash.
        """
        salt, digest = b64(b"0123456789ab"), b64(bytes(64))
        secret = "plainTextSecret"
        cases = [
            (secret, "expected user:hash"),
            (f":$6${salt}${digest}", "empty user name"),
            (f"alice:{secret}", "not a $6$ or $7$ hash"),
            (f"alice:${secret}${salt}${digest}", "not a $6$ or $7$ hash"),
            (f"alice:$5${salt}${digest}", "unknown hash type $5$"),
            (f"alice:$7$many${salt}${digest}", "iteration count is not a number"),
            (f"alice:$7$0${salt}${digest}", "iteration count out of range"),
            (f"alice:$7$99999999999${salt}${digest}", "out of range"),
            (f"alice:$7$101${salt}", "malformed $7$ hash"),
            (f"alice:$6$101${salt}${digest}", "malformed $6$ hash"),
            (f"alice:$6$!{secret}${digest}", "salt is not base64"),
            (f"alice:$6$${digest}", "salt is not base64"),
            (f"alice:$6${salt}${b64(secret.encode())}", "hash is not 64 bytes"),
            (f"alice:$6${salt}${digest}x", "hash is not 64 bytes"),
        ]
        for line, fragment in cases:
            text = f"# first\n{pbkdf2_line('zed', b'z')}\n{line}\n"
            with self.assertRaises(FileError) as raised:
                PasswordFile.parse(text, "conf/passwd")
            message = str(raised.exception)
            self.assertTrue(message.startswith("conf/passwd:3: "), message)
            self.assertIn(fragment, message)
            self.assertEqual(raised.exception.line, 3)
            self.assertNotIn("\n", message)
            for secret_part in (secret, salt, digest):
                self.assertNotIn(secret_part, message)

    def test_duplicate_user(self) -> None:
        """A user listed twice is refused, naming both lines."""
        text = f"{pbkdf2_line('alice', b'a')}\n\n{sha512_line('alice', b'b')}\n"
        with self.assertRaises(FileError) as raised:
            PasswordFile.parse(text)
        self.assertEqual(
            str(raised.exception), "passwords:3: user 'alice' again (first on line 1)"
        )

    def test_load_errors(self) -> None:
        """Unreadable and non-UTF-8 files: errors name the path."""
        missing = self.mktemp()
        with self.assertRaises(FileError) as raised:
            PasswordFile.load(missing)
        self.assertEqual(
            str(raised.exception), f"{missing}: cannot read: No such file or directory"
        )
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(pbkdf2_line("alice", b"a").encode() + b"\n\xff:x\n")
        with self.assertRaises(FileError) as raised:
            PasswordFile.load(path)
        self.assertEqual(str(raised.exception), f"{path}:2: not UTF-8")

    def test_repr_has_no_hashes(self) -> None:
        """The repr names the file and counts users, nothing more."""
        line = pbkdf2_line("alice", b"a")
        file = PasswordFile.parse(line, "p")
        self.assertEqual(repr(file), "<PasswordFile 'p': 1 users>")


class VerifyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pbkdf2 = CountingPBKDF2()
        self.patch(hashlib, "pbkdf2_hmac", self.pbkdf2)
        self.cache = VerificationCache()

    def test_cached_after_success(self) -> None:
        """A verified password is verified again without PBKDF2."""
        file = PasswordFile.parse(pbkdf2_line("alice", b"pw"), cache=self.cache)
        self.assertTrue(file.verify("alice", b"pw"))
        self.assertTrue(file.verify("alice", b"pw"))
        self.assertTrue(file.verify("alice", b"pw"))
        self.assertEqual(self.pbkdf2.iterations, [101])

    def test_failures_not_cached(self) -> None:
        """Wrong passwords are computed every time, even after a success."""
        file = PasswordFile.parse(pbkdf2_line("alice", b"pw"), cache=self.cache)
        self.assertFalse(file.verify("alice", b"wrong"))
        self.assertTrue(file.verify("alice", b"pw"))
        self.assertFalse(file.verify("alice", b"wrong"))
        self.assertFalse(file.verify("alice", b"pw2"))
        self.assertEqual(len(self.pbkdf2.iterations), 4)
        self.assertEqual(len(self.cache), 1)

    def test_unknown_user_does_the_same_work(self) -> None:
        """
        An unknown user costs one PBKDF2 with the file's iteration count, every
        time, exactly as a known user with a wrong password does.
        """
        text = "\n".join(
            [
                pbkdf2_line("alice", b"pw", 5000),
                pbkdf2_line("bob", b"pw", 5000),
                sha512_line("carol", b"pw"),
            ]
        )
        file = PasswordFile.parse(text, cache=self.cache)
        self.assertFalse(file.verify("alice", b"wrong"))
        self.assertFalse(file.verify("nobody", b"pw"))
        self.assertFalse(file.verify("nobody", b"pw"))
        self.assertEqual(self.pbkdf2.iterations, [5000, 5000, 5000])
        self.assertEqual(len(self.cache), 0)

    def test_empty_file(self) -> None:
        """An empty file knows nobody, and still takes a default PBKDF2 to say so."""
        file = PasswordFile.parse("", cache=self.cache)
        self.assertFalse(file.verify("alice", b""))
        self.assertEqual(self.pbkdf2.iterations, [101])

    def test_reload_with_changed_hash(self) -> None:
        """
        After a reload in which the user's password changed, the old password
        fails although it was cached, and the new one works; the old file is
        unaffected.
        """
        old = PasswordFile.parse(pbkdf2_line("alice", b"old"), cache=self.cache)
        self.assertTrue(old.verify("alice", b"old"))
        new = PasswordFile.parse(pbkdf2_line("alice", b"new"), cache=self.cache)
        self.assertFalse(new.verify("alice", b"old"))
        self.assertTrue(new.verify("alice", b"new"))
        self.assertFalse(new.verify("alice", b"old"))
        self.assertTrue(old.verify("alice", b"old"))
        self.assertFalse(old.verify("alice", b"new"))

    def test_reload_with_same_hash_stays_cached(self) -> None:
        """A reload that leaves a user's hash alone keeps the cached verification."""
        line = pbkdf2_line("alice", b"pw")
        PasswordFile.parse(line, cache=self.cache).verify("alice", b"pw")
        reloaded = PasswordFile.parse(reloaded_text(line), cache=self.cache)
        self.assertTrue(reloaded.verify("alice", b"pw"))
        self.assertEqual(self.pbkdf2.iterations, [101])

    def test_user_removed(self) -> None:
        """A user dropped by a reload no longer verifies, cache or not."""
        line = pbkdf2_line("alice", b"pw")
        PasswordFile.parse(line, cache=self.cache).verify("alice", b"pw")
        reloaded = PasswordFile.parse(pbkdf2_line("bob", b"pw"), cache=self.cache)
        self.assertFalse(reloaded.verify("alice", b"pw"))

    def test_cache_is_per_user(self) -> None:
        """Another user with the same hash line is not verified by the cache."""
        salt = os.urandom(12)
        alice = pbkdf2_line("alice", b"pw", salt=salt)
        bob = pbkdf2_line("bob", b"pw", salt=salt)
        file = PasswordFile.parse(f"{alice}\n{bob}", cache=self.cache)
        self.assertTrue(file.verify("alice", b"pw"))
        self.assertTrue(file.verify("bob", b"pw"))
        self.assertEqual(len(self.pbkdf2.iterations), 2)

    def test_cache_bounded(self) -> None:
        """The cache keeps the most recently used verifications, up to its size."""
        cache = VerificationCache(maxsize=2)
        text = "\n".join(pbkdf2_line(user, b"pw") for user in ("a", "b", "c"))
        file = PasswordFile.parse(text, cache=cache)
        for user in ("a", "b", "a", "c"):
            self.assertTrue(file.verify(user, b"pw"))
        self.assertEqual(len(cache), 2)
        self.assertEqual(len(self.pbkdf2.iterations), 3)
        self.assertTrue(file.verify("a", b"pw"))  # used recently: kept
        self.assertEqual(len(self.pbkdf2.iterations), 3)
        self.assertTrue(file.verify("b", b"pw"))  # least recently used: gone
        self.assertEqual(len(self.pbkdf2.iterations), 4)
        cache.clear()
        self.assertEqual(len(cache), 0)

    def test_cache_holds_no_password(self) -> None:
        """The cache stores a keyed MAC of the password, never the password."""
        password = b"a password to look for"
        file = PasswordFile.parse(pbkdf2_line("alice", password), cache=self.cache)
        self.assertTrue(file.verify("alice", password))
        [(key, value)] = self.cache._entries.items()
        self.assertEqual(key[0], "alice")
        self.assertNotIn(password, key[1])
        self.assertNotEqual(key[1], hashlib.sha256(password).digest())
        self.assertNotIn(password.decode(), value)
        other = VerificationCache()
        self.assertNotEqual(
            other.key("alice", password), self.cache.key("alice", password)
        )

    def test_legacy_hashes_cached_too(self) -> None:
        """$6$ hashes verify, fail, and are cached like $7$ ones."""
        file = PasswordFile.parse(sha512_line("bob", b"pw"), cache=self.cache)
        self.assertTrue(file.verify("bob", b"pw"))
        self.assertFalse(file.verify("bob", b"pW"))
        self.assertEqual(len(self.cache), 1)
        self.assertEqual(self.pbkdf2.iterations, [])

    def test_shared_cache_by_default(self) -> None:
        """Without a cache argument every file uses the one process-wide cache."""
        line = pbkdf2_line("alice", b"pw")
        PasswordFile.parse(line).verify("alice", b"pw")
        self.assertTrue(PasswordFile.parse(line).verify("alice", b"pw"))
        self.assertEqual(self.pbkdf2.iterations, [101])


def reloaded_text(line: str) -> str:
    return f"# reloaded\n{pbkdf2_line('bob', b'b')}\n{line}\n"
