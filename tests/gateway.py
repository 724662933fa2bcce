"""
Test support: the real gateway, assembled as twistd assembles it, run in the test's
process on free ports, and curl as its client; the configuration the end-to-end
tests give it, and the raw HTTP responses it writes, split.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from typing import Any

import attrs
from twisted.application.service import IService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.utils import getProcessOutputAndValue

from gateway.mqtt.session import BrokerSession
from gateway.tap import Options, makeService
from tests.brokers import free_port, poll


def password_file(**users: str) -> str:
    """A mosquitto password file made by mosquitto_passwd, with C{users}."""
    path = os.path.join(tempfile.mkdtemp(prefix="passwords-"), "passwords")
    open(path, "w").close()
    for user, password in users.items():
        subprocess.run(
            ["mosquitto_passwd", "-b", path, user, password],
            check=True,
            capture_output=True,
        )
    return path


def config_file(text: str) -> str:
    """The path of a new C{gateway.toml} (in a folder of its own) holding C{text}."""
    path = os.path.join(tempfile.mkdtemp(prefix="gateway-test-"), "gateway.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


@functools.cache
def _anonymous_and_users() -> str:
    return (
        "[auth]\nallow_anonymous = true\n"
        f'password_file = "{password_file(user0="secret0", bob="builder")}"\n'
    )


def config(broker: str, *, protocol: str = "auto", extra: str = "") -> str:
    """
    The end-to-end tests' configuration for the one broker C{broker} at
    C{protocol}: a publish timeout of 2 s, no access log, bodies up to 4096 bytes,
    and C{extra}, or else anonymous access and the users C{user0} (password
    C{secret0}) and C{bob} (C{builder}).
    """
    return (
        f'[mqtt]\nbrokers = ["{broker}"]\nprotocol = "{protocol}"\n'
        "publish_timeout = 2\nkeepalive = 10\n"
        '[log]\naccess = ""\n'
        "[http]\nmax_body = 4096\n" + (extra or _anonymous_and_users())
    )


def responses(data: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Split C{data} into (status, headers, body) using Content-Length."""
    result = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b": ")
            headers[name.lower()] = value
        length = int(headers.get(b"content-length", b"0"))
        result.append((status, headers, data[:length]))
        data = data[length:]
    return result


@attrs.frozen
class CurlResult:
    """What curl saw: the final response's status, headers and body."""

    status: int
    headers: dict[str, str]
    body: bytes
    raw_head: str
    exit_code: int
    stderr: bytes


def _parse(output: bytes) -> tuple[int, dict[str, str], bytes, str]:
    # With -i every response head precedes its body; keep the last response.
    head, _, body = output.rpartition(b"\r\n\r\n")
    # A 100 Continue or several responses: take the last head block.
    blocks = (head + b"\r\n\r\n").split(b"\r\n\r\n")
    heads = [b for b in blocks if b.startswith(b"HTTP/")]
    last = heads[-1].decode("latin-1") if heads else ""
    lines = last.split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body, last


def curl(*args: str, timeout: float = 20) -> Deferred[CurlResult]:
    """
    Run curl with C{args} (plus C{-sS -i}) and parse its last response.
    """

    async def run() -> CurlResult:
        out, err, code = await getProcessOutputAndValue(
            "curl",
            ("-sS", "-i", "--max-time", str(timeout), *args),
            env=os.environ,
        )
        status, headers, body, head = _parse(out)
        return CurlResult(status, headers, body, head, code, err)

    return ensureDeferred(run())


def json_post(body: object) -> tuple[str, ...]:
    """curl's arguments for a POST of C{body} (a string as it is, anything else
    as JSON) labelled C{application/json}, as EMQX's documentation sends it."""
    data = body if isinstance(body, str) else json.dumps(body)
    return ("-X", "POST", "-H", "Content-Type: application/json", "--data", data)


class RunningGateway:
    """
    The gateway with a generated TOML configuration, started as twistd would:
    Options parsed from a command line, makeService, privileged start, start.
    """

    def __init__(self, config: str, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = config_file(config)
        self.options = Options()
        self.options.parseOptions(
            [
                "--config",
                self.config_path,
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1",
                *args,
            ]
        )
        self.service: IService = makeService(self.options)

    @property
    def session(self) -> BrokerSession:
        """The gateway's broker session."""
        session = self.service.getServiceNamed("mqtt-session")  # type: ignore[attr-defined]
        assert isinstance(session, BrokerSession)
        return session

    def start(self) -> Deferred[None]:
        """Start the services and wait until the broker session is up."""
        self.service.privilegedStartService()
        self.service.startService()
        return self.wait_connected()

    def wait_connected(self, timeout: float = 10) -> Deferred[None]:
        """Fires once the broker session is up."""
        from twisted.internet import reactor

        return ensureDeferred(
            poll(
                reactor,
                lambda: self.session.connected,
                timeout,
                lambda: "the gateway did not connect to its broker",
            )
        )

    def stop(self) -> Deferred[Any]:
        """Stop every service."""
        return self.service.stopService()  # type: ignore[no-any-return]

    def topic_url(self, topic: str, query: str = "") -> str:
        """The URL of C{POST /topics/{topic}?query}."""
        return f"{self.url}/topics/{topic}" + (f"?{query}" if query else "")
