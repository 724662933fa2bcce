"""
No input, however malformed, crashes the daemon or leaks a traceback :
generated requests against API 1 and the whole HTTP stack in memory, then
thousands of malformed requests over real sockets against the real daemon.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote_from_bytes

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.auth.identify import Authenticator
from gateway.config import LimitsConfig
from gateway.core import Gateway
from gateway.errors import (
    Code,
    GatewayError,
    broker_unavailable,
    from_reason_code,
)
from gateway.limits import RateLimiter
from gateway.model import Connection, Peer
from gateway.web.messages import HTTPRequest, HTTPResponse
from gateway.web.router import Router
from gateway.web.server import HTTPServerFactory
from gateway.web.topics import TopicsAPI
from tests.brokers import Mosquitto, free_port, poll
from tests.fakes import TWISTD, FakePublisher, Passwords, TopicACL, fails
from tests.gateway import curl, responses

#: The documented error codes.
DOCUMENTED_CODES = {
    "InvalidPath",
    "InvalidTopic",
    "InvalidQoS",
    "InvalidRetained",
    "InvalidParameter",
    "UnsupportedProperty",
    "PayloadTooLarge",
    "HeadersTooLarge",
    "Unauthorized",
    "Forbidden",
    "MethodNotAllowed",
    "RateLimited",
    "BrokerUnavailable",
    "BrokerRejected",
    "InternalError",
}
#: What the HTTP server adds for requests it cannot parse (gateway.errors).
SERVER_CODES = frozenset({"BadRequest", "UriTooLong"})
MESSAGE_ID = re.compile(r"^[0-9A-F]{32}$")

# What the broker may answer a publish with.
OUTCOMES: list[GatewayError | None] = [
    None,
    broker_unavailable("down", retry_after=3),
    from_reason_code(0x87),
    from_reason_code(0x90),
    from_reason_code(0x95),
    from_reason_code(0x97),
    from_reason_code(0x80),
    GatewayError(Code.UnsupportedProperty, "3.1.1"),
]


def router(allow_anonymous: bool = True) -> tuple[Router, FakePublisher]:
    """API 1 on the real core: passwords, an ACL, tight client rate limits."""
    publisher = FakePublisher()
    core = Gateway(
        publisher,
        Authenticator(Passwords(user="secret"), allow_anonymous=allow_anonymous),
        Clock(),
        TopicACL(lambda topic: not topic.startswith("deny")),
        limiter=RateLimiter(LimitsConfig(rate=0, client_rate=1, client_burst=3)),
    )
    return Router(TopicsAPI(core)), publisher


PARAMETER_NAMES = [
    "qos",
    "retained",
    "client_id",
    "username",
    "ResponseTopic",
    "CorrelationData",
    "ContentType",
    "PayloadFormatIndicator",
    "MessageExpiryInterval",
    "UserProp.1.Key",
    "UserProp.1.Value",
    "UserProp.2.Key",
    "UserProp.0.Value",
    "UserProp.x.Key",
    "retain",
    "",
]
VALUES = st.one_of(
    st.sampled_from(["0", "1", "2", "3", "-1", "true", "FALSE", "", "a/+", "#"]),
    st.integers(-10, 2**33).map(str),
    st.text(max_size=20),
)


def _case(name: str, flip: list[bool]) -> str:
    return "".join(
        c.upper() if f else c.lower() for c, f in zip(name, flip, strict=True)
    )


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40))
    fields = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.one_of(st.sampled_from(PARAMETER_NAMES), st.text(max_size=8)))
        flip = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
        value = draw(VALUES).encode("utf-8", "surrogatepass")
        encoded = quote_from_bytes(value).encode() if draw(st.booleans()) else value
        fields.append(
            quote_from_bytes(
                _case(name, flip).encode("utf-8", "surrogatepass")
            ).encode()
            + b"="
            + encoded
        )
    return b"&".join(fields)


@st.composite
def paths(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.sampled_from([b"/", b"", b"/topics", b"/topic/a", b"/admin"]))
    if kind == 1:
        return b"/topics/" + draw(st.binary(max_size=30))
    topic = draw(
        st.one_of(
            st.text(max_size=30),
            st.sampled_from(["a/b", "deny/x", "a/+", "#", "\x00", "ok", "/", "é/ü"]),
        )
    )
    raw = topic.encode("utf-8", "surrogatepass")
    return b"/topics/" + (quote_from_bytes(raw).encode() if kind < 4 else raw)


def _basic(user: bytes, password: bytes) -> bytes:
    return b"Basic " + base64.b64encode(user + b":" + password)


AUTHORIZATION = st.one_of(
    st.none(),
    st.just(_basic(b"user", b"secret")),
    st.just(_basic(b"user", b"wrong")),
    st.just(_basic(b"\xff", b"x")),
    st.just(b"Basic !!!"),
    st.just(b"Bearer token"),
    st.binary(max_size=20),
)


@st.composite
def requests(draw: st.DrawFn) -> HTTPRequest:
    headers = []
    authorization = draw(AUTHORIZATION)
    if authorization is not None:
        headers.append((b"authorization", authorization))
    return HTTPRequest(
        method=draw(
            st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "HEAD", "BREW"])
        ),
        path=draw(paths()),
        query=draw(queries()),
        headers=tuple(headers),
        body=draw(st.binary(max_size=64)),
        http_version=draw(st.sampled_from(["1.0", "1.1"])),
        connection=Connection(
            draw(st.sampled_from(["c1", "c2", "c3"])), Peer("192.0.2.1", 1234)
        ),
        keep_alive=draw(st.booleans()),
    )


class ResponseChecks:
    """Assertions on what a client may ever see."""

    def assertWellFormed(
        self, response: HTTPResponse, extra_codes: frozenset[str] = frozenset()
    ) -> str | None:
        """
        A 200 with a message id and no body, or an error with the JSON body of
        the documented error codes and the headers its status needs. Returns the
        error code.
        """
        test: Any = self
        headers = {name.lower(): value for name, value in response.headers}
        for name, value in response.headers:
            test.assertNotIn("\n", name + value)
        if response.status == 200:
            test.assertRegex(headers["x-message-id"], MESSAGE_ID)
            test.assertEqual(response.body, b"")
            return None
        test.assertEqual(headers["content-type"], "application/json")
        body = json.loads(response.body)
        test.assertEqual(set(body), {"code", "message", "request_id"})
        code = body["code"]
        test.assertIn(code, DOCUMENTED_CODES | extra_codes)
        test.assertTrue(body["message"])
        test.assertNotIn("Traceback", body["message"])
        expected_status = Code(code).status
        if code == "BadRequest" and response.status in (501, 505):
            expected_status = response.status
        test.assertEqual(response.status, expected_status, body)
        if response.status == 401:
            test.assertIn("basic", headers["www-authenticate"].lower())
        if response.status == 405:
            test.assertEqual(headers["allow"], "POST")
        if response.status in (429, 503):
            test.assertGreaterEqual(int(headers["retry-after"]), 1)
        return str(code)


class TopicsAPIFuzzTests(SynchronousTestCase, ResponseChecks):
    @settings(max_examples=400, deadline=None)
    @given(
        st.lists(
            st.tuples(requests(), st.sampled_from(OUTCOMES)), min_size=1, max_size=8
        ),
        st.booleans(),
    )
    def test_every_outcome_well_formed(
        self, exchanges: list[tuple[HTTPRequest, GatewayError | None]], anonymous: bool
    ) -> None:
        """
        Whatever the request and whatever the broker answers, the response is a
        200 with a message id or an error with a documented error code, its status and
        headers; only a message the broker took gets a 200, and a refused
        request publishes nothing.
        """
        handler, publisher = router(allow_anonymous=anonymous)
        for request, outcome in exchanges:
            publisher.answer = (
                FakePublisher.numbered if outcome is None else fails(outcome)
            )
            before = len(publisher.calls)
            result = handler.handle(request)
            if isinstance(result, Deferred):
                result = self.successResultOf(result)
            code = self.assertWellFormed(result)
            published = len(publisher.calls) - before
            if code is None:
                self.assertEqual((published, outcome), (1, None))
            elif published:
                assert outcome is not None
                self.assertEqual(code, outcome.code.value)


PIECES = [
    b"POST /topics/a?qos=1 HTTP/1.1\r\n",
    b"POST /topics/deny?qos=2&client_id=x HTTP/1.1\r\n",
    b"POST /topics/a%2F%2B HTTP/1.1\r\n",
    b"GET /topics/a HTTP/1.1\r\n",
    b"POST / HTTP/1.0\r\n",
    b"POST /topics/" + b"x" * 300 + b" HTTP/1.1\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 70000\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: identity, chunked\r\n",
    b"Host: gw\r\n",
    b"Authorization: Basic dXNlcjpzZWNyZXQ=\r\n",
    b"Authorization: Basic ???\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"X-Long: " + b"v" * 500 + b"\r\n",
    b"\r\n",
    b"abc",
    b"3\r\nabc\r\n0\r\n\r\n",
]


class HTTPStackFuzzTests(SynchronousTestCase, ResponseChecks):
    @settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        st.lists(
            st.one_of(st.binary(max_size=20), st.sampled_from(PIECES)), max_size=20
        ),
        st.integers(1, 64),
    )
    def test_bytes_to_responses(self, pieces: list[bytes], chunk: int) -> None:
        """
        Any bytes, in any chunks, through the HTTP server into API 1 and the core:
        every response written parses and is well formed (documented error codes, plus
        BadRequest and UriTooLong for what the server cannot parse).
        """
        handler, _ = router()
        factory = HTTPServerFactory(
            handler,
            clock=Clock(),
            max_body=100,
            max_target_bytes=200,
            max_header_bytes=400,
        )
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        stream = b"".join(pieces)
        for start in range(0, len(stream), chunk):
            protocol.dataReceived(stream[start : start + chunk])
        factory.clock.advance(5)  # type: ignore[attr-defined]
        out = transport.value().replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
        for status, headers, body in responses(out):
            response = HTTPResponse(
                status,
                tuple(
                    (k.decode(), v.decode())
                    for k, v in headers.items()
                    if k not in (b"date", b"server", b"connection", b"content-length")
                ),
                body,
            )
            self.assertWellFormed(response, SERVER_CODES)


# -- the real daemon, over real sockets


VALID = (
    b"POST /topics/fuzz/ok?qos=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello"
)
SEEDS = [
    VALID,
    b"POST /topics/a?qos=0&retained=true HTTP/1.1\r\nHost: gw\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /topics/a HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    b"POST /topics/a%2Fb?UserProp.1.Key=k&UserProp.1.Value=v&ContentType=x HTTP/1.1\r\n"
    b"Host: gw\r\nAuthorization: Basic dXNlcjpwdw==\r\nContent-Length: 1\r\n\r\nx",
    # Numbers longer than Python's int() takes (4,300 digits).
    b"POST /topics/a?MessageExpiryInterval="
    + b"9" * 5000
    + b"&UserProp."
    + b"1" * 5000
    + b".Key=k HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n",
    b"GET /topics/a HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n",
    b"POST /topics/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
]
TOKENS = [
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\x00",
    b" ",
    b":",
    b"%",
    b"%zz",
    b"%ff",
    b"?",
    b"&",
    b"=",
    b"+",
    b"#",
    b"HTTP/1.1",
    b"HTTP/9.9",
    b"Content-Length: 99999999999999999999\r\n",
    b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: identity, chunked\r\n",
    b"Host: a\r\n",
    b"Authorization: Basic dXNlcjpwdw==\r\n",
    b"9" * 5000,
    b"Connection: Upgrade\r\nUpgrade: h2c\r\n",
    b"\xff\xfe",
    "é".encode(),
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
]


def mutate(rng: random.Random) -> bytes:
    """One malformed (or occasionally valid) request."""
    data = bytearray(rng.choice(SEEDS))
    kind = rng.randrange(10)
    if kind == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        return b"POST /topics/" + b"a" * 250_000 + b" HTTP/1.1\r\n\r\n"
    if kind == 2:
        return VALID.replace(b"Host: gw\r\n", b"X-Big: " + b"v" * 20_000 + b"\r\n")
    if kind == 3:
        return bytes(data) * rng.randrange(2, 6) + rng.choice(TOKENS)
    for _ in range(rng.randrange(1, 6)):
        spot = rng.randrange(len(data) + 1)
        action = rng.randrange(4)
        if action == 0 and data:
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        elif action == 1:
            data[spot:spot] = rng.choice(TOKENS)
        elif action == 2:
            del data[spot : spot + rng.randrange(1, 10)]
        else:
            data = data[:spot]
    return bytes(data)


def exchange(port: int, data: bytes) -> bytes:
    """Send C{data}, half-close, and read whatever comes back (at most 2 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass  # reset by the server after an error response: allowed
        return b"".join(chunks) if "chunks" in locals() else b""


def run_fuzz(port: int, count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    cases = [mutate(rng) for _ in range(count)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda data: exchange(port, data), cases))


STATUS_LINE = re.compile(rb"^HTTP/1\.1 (\d{3}) ")


class DaemonFuzzTests(TestCase):
    timeout = 90

    async def test_malformed_requests(self) -> None:
        """
        3,000 malformed requests (random bytes, mutated requests, huge targets and
        headers, smuggling attempts, TLS bytes) over real sockets, 16 at a time:
        every answer starts with a valid status line and shows no traceback, the
        daemon logs no traceback, and afterwards it answers a valid request with
        a 200 within a second.
        """
        from twisted.internet import reactor
        from twisted.internet.protocol import ProcessProtocol

        broker = Mosquitto()
        self.addCleanup(broker.stop)
        await broker.start()
        port = free_port()
        config = os.path.join(tempfile.mkdtemp(prefix="fuzz-"), "gateway.toml")
        with open(config, "w") as f:
            f.write(
                f'[mqtt]\nbrokers = ["mqtt://127.0.0.1:{broker.port}"]\n'
                'publish_timeout = 2\n[log]\naccess = ""\n'
                "[auth]\nallow_anonymous = true\n[http]\nmax_body = 4096\n"
            )
        output: list[bytes] = []
        ended: Deferred[int] = Deferred()

        class Watch(ProcessProtocol):
            def childDataReceived(self, fd: int, data: bytes) -> None:
                output.append(data)

            def processEnded(self, reason: Any) -> None:
                ended.callback(reason.value.exitCode)

        process = reactor.spawnProcess(  # type: ignore[attr-defined]
            Watch(),
            TWISTD,
            [
                TWISTD,
                "--pidfile=",
                "-n",
                "mqtt-http-gateway",
                "--config",
                config,
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
            ],
            env=os.environ,
        )

        def stop() -> Deferred[int]:
            if not ended.called:
                process.signalProcess("KILL")
            return ended

        self.addCleanup(stop)
        await poll(
            reactor,
            lambda: b"Connected to" in b"".join(output) or ended.called,
            15,
            lambda: b"".join(output).decode(errors="replace"),
        )
        started = time.monotonic()
        answers = await deferToThread(run_fuzz, port, 3000, 20240501)
        fuzz_seconds = time.monotonic() - started
        self.assertFalse(ended.called, b"".join(output)[-3000:])
        answered = 0
        for answer in answers:
            self.assertNotIn(b"Traceback", answer)
            if answer:
                answered += 1
                match = STATUS_LINE.match(answer)
                assert match is not None, answer[:200]
                self.assertIn(
                    int(match.group(1)),
                    {
                        100,
                        200,
                        400,
                        401,
                        403,
                        404,
                        405,
                        413,
                        414,
                        429,
                        431,
                        501,
                        503,
                        505,
                    },
                )
        self.assertGreater(answered, 1500)

        started = time.monotonic()
        result = await curl(
            "-X",
            "POST",
            "--data",
            "still here",
            f"http://127.0.0.1:{port}/topics/after?qos=1",
            timeout=1,
        )
        self.assertEqual(result.status, 200, result.raw_head)
        self.assertLess(time.monotonic() - started, 1.0)
        log = b"".join(output).decode(errors="replace")
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)
        self.assertLess(fuzz_seconds, 30)
