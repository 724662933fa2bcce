"""
The HTTP/1.x server protocol: parsing, ordering, limits, timeouts, failures and the
access log, over in-memory transports and a fake clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IProtocolNegotiationFactory,
    ISSLTransport,
)
from twisted.internet.task import Clock
from twisted.internet.testing import (
    StringTransport,
    StringTransportWithDisconnection,
)
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from gateway.errors import Code, GatewayError
from gateway.model import Peer
from gateway.web.messages import AccessLogFields, HTTPRequest, HTTPResponse
from gateway.web.server import HTTPServerFactory, HTTPServerProtocol
from tests.gateway import responses

DATE_0 = b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
STANDARD = DATE_0 + b"Server: mqtt-http-gateway\r\n"

Answer = Callable[[HTTPRequest], "HTTPResponse | Deferred[HTTPResponse]"]


def ok(request: HTTPRequest) -> HTTPResponse:
    return HTTPResponse(200, (("X-Message-Id", "AB12"),))


class Handler:
    """Records requests and answers with C{answer} (200 at once by default)."""

    def __init__(self, answer: Answer = ok) -> None:
        self.answer = answer
        self.requests: list[HTTPRequest] = []
        self.errors: list[tuple[HTTPRequest, GatewayError]] = []
        self.closed: list[str] = []
        self.heard: set[str] = set()

    def handle(self, request: HTTPRequest) -> HTTPResponse | Deferred[HTTPResponse]:
        connection = request.connection
        if connection is not None and connection.id not in self.heard:
            # Like broker mode: hear the connection's closing through its handle.
            self.heard.add(connection.id)
            connection.when_closed(lambda: self.closed.append(connection.id))
        self.requests.append(request)
        return self.answer(request)

    def render_error(self, request: HTTPRequest, error: GatewayError) -> HTTPResponse:
        self.errors.append((request, error))
        body = json.dumps({"code": error.code.value, "message": error.message})
        return HTTPResponse(
            error.status,
            (("Content-Type", "application/json"), *error.response_headers()),
            body.encode(),
            AccessLogFields(client_id="errors"),
        )


class Deferring:
    """An answer that hands out a new, unfired Deferred per request."""

    def __init__(self) -> None:
        self.deferreds: list[Deferred[HTTPResponse]] = []

    def __call__(self, request: HTTPRequest) -> Deferred[HTTPResponse]:
        d: Deferred[HTTPResponse] = Deferred()
        self.deferreds.append(d)
        return d


class Connection:
    """A server protocol connected to an in-memory transport."""

    def __init__(
        self,
        handler: Handler | None = None,
        transport: StringTransport | None = None,
        **options: Any,
    ) -> None:
        self.handler = handler or Handler()
        self.clock = Clock()
        self.log: list[dict[str, object]] = []
        self.factory = HTTPServerFactory(
            self.handler,
            clock=self.clock,
            access_log=lambda record: self.log.append(record.as_dict()),
            **options,
        )
        self.protocol = self.factory.buildProtocol(None)
        if transport is None:
            transport = StringTransportWithDisconnection()
        self.transport = transport
        if isinstance(transport, StringTransportWithDisconnection):
            transport.protocol = self.protocol
        self.protocol.makeConnection(transport)

    def send(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.protocol.dataReceived(chunk)

    def output(self) -> bytes:
        value: bytes = self.transport.value()
        self.transport.clear()
        return value

    @property
    def closed(self) -> bool:
        return bool(
            self.transport.disconnecting or not getattr(self.transport, "connected", 1)
        )


def post(
    target: bytes = b"/topics/a",
    body: bytes = b"hello",
    headers: bytes = b"",
    version: bytes = b"1.1",
) -> bytes:
    return b"POST %s HTTP/%s\r\nHost: gw\r\nContent-Length: %d\r\n%s\r\n%s" % (
        target,
        version,
        len(body),
        headers,
        body,
    )


def statuses(data: bytes) -> list[int]:
    return [status for status, _, _ in responses(data)]


def error_code(data: bytes) -> str:
    [(_, _, body)] = responses(data)
    code: str = json.loads(body)["code"]
    return code


class RoundTripTests(SynchronousTestCase):
    def test_post(self) -> None:
        """A POST becomes an L{HTTPRequest}; the response bytes are exact."""
        c = Connection()
        c.send(post(b"/topics/a%2Fb?qos=1&x=%20", b'{"m": 1}'))
        self.assertEqual(
            c.output(),
            b"HTTP/1.1 200 OK\r\nX-Message-Id: AB12\r\nContent-Length: 0\r\n"
            + STANDARD
            + b"\r\n",
        )
        [request] = c.handler.requests
        self.assertEqual(request.method, "POST")
        self.assertEqual(request.path, b"/topics/a%2Fb")
        self.assertEqual(request.query, b"qos=1&x=%20")
        self.assertEqual(request.headers, ((b"host", b"gw"), (b"content-length", b"8")))
        self.assertEqual(request.body, b'{"m": 1}')
        self.assertEqual(request.http_version, "1.1")
        self.assertEqual(request.connection.peer, Peer("192.168.1.1", 54321))
        self.assertEqual(len(request.connection.id), 16)
        self.assertTrue(request.keep_alive)
        self.assertIsNone(request.peer_certificate)
        self.assertFalse(c.closed)

    def test_body_as_sent(self) -> None:
        """A form-encoded body is not parsed; header names are lower-cased."""
        c = Connection()
        c.send(
            post(
                body=b"a=1&b=%41",
                headers=b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"X-Mixed-Case: V\r\n",
            )
        )
        [request] = c.handler.requests
        self.assertEqual(request.body, b"a=1&b=%41")
        self.assertEqual(request.query, b"")
        self.assertEqual(request.header(b"x-mixed-case"), b"V")

    def test_response_body_and_headers(self) -> None:
        """The response's headers come first, then Content-Length, Date, Server."""
        c = Connection(
            Handler(lambda r: HTTPResponse(201, (("A", "1"), ("B", "2")), b"xyz"))
        )
        c.send(post())
        self.assertEqual(
            c.output(),
            b"HTTP/1.1 201 Created\r\nA: 1\r\nB: 2\r\nContent-Length: 3\r\n"
            + STANDARD
            + b"\r\nxyz",
        )

    def test_header_sanitising(self) -> None:
        """CR/LF in header values cannot split the response; reserved names go."""
        c = Connection(
            Handler(
                lambda r: HTTPResponse(
                    200,
                    (
                        ("X-Evil", "a\r\nSet-Cookie: x"),
                        ("content-length", "99"),
                        ("Connection", "keep-alive"),
                    ),
                )
            )
        )
        c.send(post())
        self.assertEqual(
            c.output(),
            b"HTTP/1.1 200 OK\r\nX-Evil: a  Set-Cookie: x\r\nContent-Length: 0\r\n"
            + STANDARD
            + b"\r\n",
        )

    def test_head_has_no_body(self) -> None:
        """A response to HEAD keeps its Content-Length but sends no body."""
        c = Connection(Handler(lambda r: HTTPResponse(405, (), b"nope")))
        c.send(
            b"HEAD /x HTTP/1.1\r\nHost: gw\r\n\r\nGET /y HTTP/1.1\r\nHost: gw\r\n\r\n"
        )
        self.assertEqual(
            c.output(),
            (
                b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 4\r\n"
                + STANDARD
                + b"\r\n"
            )
            + (
                b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 4\r\n"
                + STANDARD
                + b"\r\nnope"
            ),
        )

    def test_unknown_status(self) -> None:
        c = Connection(Handler(lambda r: HTTPResponse(299)))
        c.send(post())
        self.assertTrue(c.output().startswith(b"HTTP/1.1 299 Unknown\r\n"))

    def test_date_follows_clock(self) -> None:
        """The Date header is the clock's time (cached per second)."""
        c = Connection(idle_timeout=1e10)
        c.clock.advance(86400 + 0.5)
        c.send(post())
        self.assertIn(b"Date: Fri, 02 Jan 1970 00:00:00 GMT\r\n", c.output())
        c.clock.advance(1)
        c.send(post())
        self.assertIn(b"Date: Fri, 02 Jan 1970 00:00:01 GMT\r\n", c.output())

    def test_absolute_form(self) -> None:
        """An absolute-form target yields the path and query alone."""
        c = Connection()
        c.send(b"GET http://gw:8080/topics/x?qos=0 HTTP/1.1\r\nHost: gw\r\n\r\n")
        c.send(b"GET http://gw?qos=2 HTTP/1.1\r\nHost: gw\r\n\r\n")
        first, second = c.handler.requests
        self.assertEqual((first.path, first.query), (b"/topics/x", b"qos=0"))
        self.assertEqual((second.path, second.query), (b"/", b"qos=2"))

    def test_ipv6_peer(self) -> None:
        transport = StringTransportWithDisconnection(
            peerAddress=IPv6Address("TCP", "::1", 4433)
        )
        c = Connection(transport=transport)
        c.send(post())
        self.assertEqual(str(c.handler.requests[0].connection.peer), "[::1]:4433")

    def test_alpn(self) -> None:
        """Under TLS, ALPN offers HTTP/1.1 and HTTP/1.0 (for C{curl --http1.0})."""
        factory = HTTPServerFactory(Handler(), clock=Clock())
        self.assertTrue(IProtocolNegotiationFactory.providedBy(factory))
        self.assertEqual(factory.acceptableProtocols(), [b"http/1.1", b"http/1.0"])

    def test_open_connections(self) -> None:
        c = Connection()
        self.assertEqual(c.factory.open_connections, 1)
        other = c.factory.buildProtocol(None)
        t = StringTransportWithDisconnection()
        t.protocol = other
        other.makeConnection(t)
        self.assertEqual(c.factory.open_connections, 2)
        t.loseConnection()
        c.transport.loseConnection()
        self.assertEqual(c.factory.open_connections, 0)


class FakeCertificate:
    def __init__(self) -> None:
        self.converted = object()

    def to_cryptography(self) -> object:
        return self.converted


class TLSTransport(StringTransportWithDisconnection):
    def __init__(self, certificate: FakeCertificate | None) -> None:
        super().__init__()
        directlyProvides(self, ISSLTransport)
        self.certificate = certificate
        self.fetched = 0
        self.no_delay = False

    def getPeerCertificate(self) -> FakeCertificate | None:
        self.fetched += 1
        return self.certificate

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


class CertificateTests(SynchronousTestCase):
    def test_fetched_once_lazily(self) -> None:
        """The client certificate is read at the first request, then reused."""
        certificate = FakeCertificate()
        transport = TLSTransport(certificate)
        c = Connection(transport=transport)
        self.assertEqual(transport.fetched, 0)
        c.send(post(), post())
        self.assertEqual(transport.fetched, 1)
        for request in c.handler.requests:
            self.assertIs(request.peer_certificate, certificate.converted)

    def test_no_delay(self) -> None:
        """Over TCP (TLS included) responses are not held back by Nagle's
        algorithm: a new TLS connection's first answer would wait ~40 ms."""
        transport = TLSTransport(None)
        Connection(transport=transport)
        self.assertTrue(transport.no_delay)

    def test_no_certificate(self) -> None:
        transport = TLSTransport(None)
        c = Connection(transport=transport)
        c.send(post(), post())
        self.assertEqual(transport.fetched, 1)
        self.assertIsNone(c.handler.requests[1].peer_certificate)


class ConnectionTests(SynchronousTestCase):
    def test_http10_closes(self) -> None:
        """HTTP/1.0 connections close after the response, keep-alive or not."""
        for extra in (b"", b"Connection: keep-alive\r\n"):
            c = Connection()
            c.send(post(version=b"1.0", headers=extra) + post())
            [(status, headers, _)] = responses(c.output())
            self.assertEqual(status, 200)
            self.assertEqual(headers[b"connection"], b"close")
            self.assertTrue(c.closed)
            [request] = c.handler.requests
            self.assertEqual(request.http_version, "1.0")
            self.assertFalse(request.keep_alive)

    def test_keep_alive(self) -> None:
        """HTTP/1.1 connections stay open for further requests."""
        c = Connection()
        c.send(post())
        c.send(post(b"/topics/b"))
        self.assertEqual(statuses(c.output()), [200, 200])
        self.assertFalse(c.closed)
        first, second = c.handler.requests
        self.assertIs(first.connection, second.connection)
        self.assertEqual(second.path, b"/topics/b")

    def test_connection_close(self) -> None:
        """C{Connection: close} closes after the response; later bytes are ignored."""
        c = Connection()
        c.send(post(headers=b"Connection: close\r\n") + post())
        [(_, headers, _)] = responses(c.output())
        self.assertEqual(headers[b"connection"], b"close")
        self.assertTrue(c.closed)
        self.assertEqual(len(c.handler.requests), 1)
        self.assertFalse(c.handler.requests[0].keep_alive)

    def test_pipelined_in_order(self) -> None:
        """
        Pipelined requests are all dispatched at once; their responses go out in
        request order even when the handler answers in reverse order.
        """
        answer = Deferring()
        c = Connection(Handler(answer))
        c.send(post(b"/1") + post(b"/2") + post(b"/3")[:20])
        c.send(post(b"/3")[20:])
        self.assertEqual(len(answer.deferreds), 3)
        for n, d in reversed(list(enumerate(answer.deferreds, 1))):
            d.callback(HTTPResponse(200, body=b"%d" % n))
            if n > 1:
                self.assertEqual(c.output(), b"")
        self.assertEqual(
            [body for _, _, body in responses(c.output())], [b"1", b"2", b"3"]
        )
        self.assertEqual([entry["path"] for entry in c.log], ["/1", "/2", "/3"])

    def test_pipelined_partial_flush(self) -> None:
        """Each response goes out as soon as all earlier ones have."""
        answer = Deferring()
        c = Connection(Handler(answer))
        c.send(post(b"/1") + post(b"/2") + post(b"/3"))
        d1, d2, d3 = answer.deferreds
        d2.callback(HTTPResponse(202))
        self.assertEqual(c.output(), b"")
        d1.callback(HTTPResponse(201))
        self.assertEqual(statuses(c.output()), [201, 202])
        d3.callback(HTTPResponse(203))
        self.assertEqual(statuses(c.output()), [203])

    def test_chunked(self) -> None:
        """A chunked body arrives decoded."""
        c = Connection()
        c.send(
            b"POST /t HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n",
            b"6\r\n world\r\n0\r\n\r\n",
        )
        self.assertEqual(c.handler.requests[0].body, b"hello world")
        self.assertEqual(statuses(c.output()), [200])

    def test_max_pipeline(self) -> None:
        """Reading pauses at max_pipeline outstanding requests, resumes below."""
        answer = Deferring()
        c = Connection(Handler(answer), max_pipeline=2)
        c.send(post())
        self.assertEqual(c.transport.producerState, "producing")
        c.send(post())
        self.assertEqual(c.transport.producerState, "paused")
        answer.deferreds[1].callback(HTTPResponse(200))
        self.assertEqual(c.transport.producerState, "paused")
        answer.deferreds[0].callback(HTTPResponse(200))
        self.assertEqual(c.transport.producerState, "producing")
        self.assertEqual(statuses(c.output()), [200, 200])


class LimitTests(SynchronousTestCase):
    def assertRefused(
        self, c: Connection, status: int, code: Code, *, linger: bool = True
    ) -> None:
        [(got, headers, body)] = responses(c.output())
        self.assertEqual(got, status)
        self.assertEqual(headers[b"connection"], b"close")
        self.assertEqual(json.loads(body)["code"], code.value)
        self.assertEqual(c.handler.requests, [])
        if linger:
            # Input is read and dropped for a moment, then the connection closes.
            self.assertFalse(c.closed)
            c.send(b"more body bytes " * 100)
            self.assertEqual(c.output(), b"")
            c.clock.advance(2)
        self.assertTrue(c.closed)

    def test_413_content_length(self) -> None:
        """A declared body over max_body is refused before it is read."""
        c = Connection(max_body=10)
        c.send(post(body=b"x" * 11)[:-11])
        self.assertRefused(c, 413, Code.PayloadTooLarge)
        [(request, _)] = c.handler.errors
        self.assertEqual(request.method, "POST")
        self.assertEqual(request.path, b"/topics/a")
        self.assertEqual(request.body, b"")

    def test_body_at_limit(self) -> None:
        c = Connection(max_body=10)
        c.send(post(body=b"x" * 10))
        self.assertEqual(statuses(c.output()), [200])

    def test_413_chunked(self) -> None:
        """A chunked body that grows past max_body is refused as it grows."""
        c = Connection(max_body=10)
        c.send(b"POST /t HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        c.send(b"6\r\nhello \r\n")
        self.assertEqual(c.output(), b"")
        c.send(b"6\r\nworld!\r\n")
        self.assertRefused(c, 413, Code.PayloadTooLarge)

    def test_100_continue(self) -> None:
        """C{Expect: 100-continue} gets an interim response once headers pass."""
        c = Connection()
        c.send(post(headers=b"Expect: 100-continue\r\n")[:-5])
        self.assertEqual(c.output(), b"HTTP/1.1 100 Continue\r\n\r\n")
        c.send(b"hello")
        self.assertEqual(statuses(c.output()), [200])
        self.assertEqual(c.handler.requests[0].body, b"hello")

    def test_100_continue_refused(self) -> None:
        """Over max_body, the answer to C{Expect: 100-continue} is 413 instead."""
        c = Connection(max_body=4)
        c.send(post(headers=b"Expect: 100-continue\r\n")[:-5])
        self.assertRefused(c, 413, Code.PayloadTooLarge)

    def test_100_continue_after_earlier_responses(self) -> None:
        """The interim response waits for the earlier pipelined responses."""
        answer = Deferring()
        c = Connection(Handler(answer))
        c.send(post() + post(headers=b"Expect: 100-continue\r\n")[:-5])
        self.assertEqual(c.output(), b"")
        answer.deferreds[0].callback(HTTPResponse(200))
        data = c.output()
        self.assertTrue(data.endswith(b"\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"), data)

    def test_414(self) -> None:
        """A request target over max_target_bytes is refused as it arrives."""
        c = Connection(max_target_bytes=100)
        c.send(b"GET /" + b"a" * 60)
        self.assertEqual(c.output(), b"")
        c.send(b"a" * 60)
        self.assertRefused(c, 414, Code.UriTooLong)

    def test_431_flood(self) -> None:
        """A header flood is cut as soon as it passes max_header_bytes."""
        c = Connection(max_header_bytes=1000)
        c.send(b"POST /t HTTP/1.1\r\n")
        sent = 0
        while not c.transport.value():
            # 32 counted bytes each: the 32nd passes 1000, seen as the 33rd starts
            c.send(b"X-Header-%03d: %s\r\n" % (sent, b"v" * 20))
            sent += 1
        self.assertEqual(sent, 33)
        self.assertRefused(c, 431, Code.HeadersTooLarge)

    def test_431_one_huge_header(self) -> None:
        """One header that never ends is cut too (within one read of the limit)."""
        c = Connection(max_header_bytes=1000, max_target_bytes=1000)
        c.send(b"POST /t HTTP/1.1\r\nX-Huge: ")
        sent = 0
        while not c.transport.value() and sent < 1000:
            c.send(b"v" * 1000)
            sent += 1
        self.assertLessEqual(sent, 8)
        self.assertRefused(c, 431, Code.HeadersTooLarge)

    def test_headers_at_limit(self) -> None:
        c = Connection(max_header_bytes=26)
        c.send(b"GET / HTTP/1.1\r\nHost: gw\r\nAbc: " + b"v" * 17 + b"\r\n\r\n")
        self.assertEqual(statuses(c.output()), [200])

    def test_400_garbage(self) -> None:
        c = Connection()
        c.send(b"\x00\x01garbage\r\n\r\n")
        self.assertRefused(c, 400, Code.BadRequest)
        [(request, _)] = c.handler.errors
        self.assertEqual((request.method, request.path), ("", b""))

    def test_400_content_length_and_chunked(self) -> None:
        """Content-Length together with Transfer-Encoding is request smuggling."""
        c = Connection()
        c.send(
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        self.assertRefused(c, 400, Code.BadRequest)

    def test_400_smuggling(self) -> None:
        """Every framing that two parsers could read differently is refused
        with 400 and a close: duplicated or listed Content-Length, a
        Transfer-Encoding not ending in chunked, a space before the colon,
        obsolete line folding, bare LF line ends."""
        for head in (
            b"Content-Length: 3\r\nContent-Length: 4\r\n",
            b"Content-Length: 3\r\nContent-Length: 3\r\n",
            b"Content-Length: 3, 3\r\n",
            b"Content-Length: +3\r\n",
            b"Transfer-Encoding: chunked, identity\r\n",
            b"Transfer-Encoding: gzip\r\n",
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            b"Content-Length : 3\r\n",
            b"X-A: a\r\n b\r\nContent-Length: 3\r\n",
        ):
            c = Connection()
            c.send(b"POST / HTTP/1.1\r\n" + head + b"\r\n3\r\nabc\r\n0\r\n\r\n")
            self.assertRefused(c, 400, Code.BadRequest)
        c = Connection()
        c.send(b"POST / HTTP/1.1\nContent-Length: 3\n\nabc")
        self.assertRefused(c, 400, Code.BadRequest)

    def test_431_default_limit(self) -> None:
        """With the defaults, a header block over 16 KiB is a 431."""
        c = Connection()
        headers = b"".join(b"X-H-%03d: %s\r\n" % (n, b"v" * 1000) for n in range(17))
        c.send(post(headers=headers))
        self.assertRefused(c, 431, Code.HeadersTooLarge)

    def test_chunked_extensions_and_trailers(self) -> None:
        """Chunk extensions and trailers are allowed and not part of the body."""
        c = Connection()
        c.send(
            b"POST /t HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;name=value\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
        )
        self.assertEqual(c.handler.requests[0].body, b"abc")
        self.assertEqual(statuses(c.output()), [200])

    def test_400_bad_chunk(self) -> None:
        c = Connection()
        c.send(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        self.assertRefused(c, 400, Code.BadRequest)

    def test_400_upgrade(self) -> None:
        c = Connection()
        c.send(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        self.assertRefused(c, 400, Code.BadRequest)

    def test_400_connect(self) -> None:
        c = Connection()
        c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertRefused(c, 400, Code.BadRequest)

    def test_505(self) -> None:
        c = Connection()
        c.send(b"GET / HTTP/2.0\r\n\r\n")
        [(status, _, _)] = responses(c.output())
        self.assertEqual(status, 505)

    def test_error_after_pipelined(self) -> None:
        """An error behind a pending request is answered after its response."""
        answer = Deferring()
        c = Connection(Handler(answer))
        c.send(post() + b"garbage\r\n\r\n")
        self.assertEqual(c.output(), b"")
        answer.deferreds[0].callback(HTTPResponse(200))
        self.assertEqual(statuses(c.output()), [200, 400])


class StrictFramingTests(SynchronousTestCase):
    """
    Framing a proxy in front could read differently is refused (RFC 9112): a
    Transfer-Encoding other than a lone chunked, HTTP/1.1 without exactly one
    Host, two Authorization headers, numbers in the framing of any length.
    """

    def assertRefused(self, data: bytes, status: int, message: str) -> None:
        """C{data} is answered with exactly this error response and a close;
        nothing reaches the handler."""
        c = Connection()
        c.send(data)
        body = json.dumps({"code": "BadRequest", "message": message}).encode()
        self.assertEqual(
            c.output(),
            b"HTTP/1.1 %d %s\r\n"
            % (status, HTTPStatus(status).phrase.encode())
            + b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            % len(body)
            + STANDARD
            + b"Connection: close\r\n\r\n"
            + body,
        )
        self.assertEqual(c.handler.requests, [])
        c.clock.advance(2)
        self.assertTrue(c.closed)

    def test_identity_chunked(self) -> None:
        """C{identity, chunked} is a 501: the coding is not implemented."""
        self.assertRefused(
            b"POST /t HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: identity, chunked"
            b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            501,
            "the transfer coding 'identity' is not supported; send the body with "
            "Content-Length or Transfer-Encoding: chunked alone",
        )

    def test_transfer_encodings(self) -> None:
        """Other codings before chunked are 501; chunked not last or twice, an
        empty element, two headers or HTTP/1.0 with the header are 400."""
        unsupported = (
            "the transfer coding {!r} is not supported; send the body with "
            "Content-Length or Transfer-Encoding: chunked alone"
        )
        once = "Transfer-Encoding must be chunked, given once"
        twice = "the Transfer-Encoding header is given more than once"
        # What llhttp refuses itself, before the head is complete.
        invalid = "malformed HTTP request: Invalid `Transfer-Encoding` header value"
        chunked = b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        for version, head, status, message in (
            (b"1.1", b"Transfer-Encoding: x, chunked", 501, unsupported.format("x")),
            (
                b"1.1",
                b"Transfer-Encoding: GZIP,chunked",
                501,
                unsupported.format("gzip"),
            ),
            (b"1.1", b"Transfer-Encoding: chunked, chunked", 400, invalid),
            (b"1.1", b"Transfer-Encoding: , chunked", 400, once),
            (b"1.1", b"Transfer-Encoding: chunked, gzip", 400, invalid),
            (
                b"1.1",
                b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                400,
                invalid,
            ),
            (
                b"1.1",
                b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
                400,
                twice,
            ),
            (
                b"1.0",
                b"Transfer-Encoding: chunked",
                400,
                "Transfer-Encoding is not allowed in an HTTP/1.0 request",
            ),
        ):
            data = b"POST /t HTTP/%s\r\nHost: gw\r\n%s%s" % (version, head, chunked)
            with self.subTest(head=head):
                self.assertRefused(data, status, message)

    def test_lone_chunked(self) -> None:
        """A lone chunked, in any case and with spaces around it, is served."""
        for value in (b"chunked", b"Chunked", b" CHUNKED "):
            c = Connection()
            c.send(
                b"POST /t HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: %s\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n" % value
            )
            self.assertEqual(statuses(c.output()), [200], value)
            self.assertEqual(c.handler.requests[0].body, b"hello")

    def test_host(self) -> None:
        """HTTP/1.1 needs exactly one Host (an empty one will do); HTTP/1.0 may
        have none, but never two; its value is a host and an optional port."""
        self.assertRefused(
            b"GET /t HTTP/1.1\r\n\r\n", 400, "an HTTP/1.1 request needs a Host header"
        )
        for version in (b"1.0", b"1.1"):
            self.assertRefused(
                b"GET /t HTTP/%s\r\nHost: gw\r\nHost: evil\r\n\r\n" % version,
                400,
                "the Host header is given more than once",
            )
        for value in (b"a b", b"gw/x", b"user@gw", b"gw:80:80", b"[::1"):
            self.assertRefused(
                b"GET /t HTTP/1.1\r\nHost: %s\r\n\r\n" % value,
                400,
                "the Host header is not a host with an optional port",
            )
        for data in (
            b"GET /t HTTP/1.0\r\n\r\n",
            b"GET /t HTTP/1.1\r\nHost:\r\n\r\n",
            b"GET /t HTTP/1.1\r\nHost: gw.example:8443\r\n\r\n",
            b"GET /t HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n",
            b"GET /t HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            b"GET /t HTTP/1.1\r\nHost: iot_gw-1\r\n\r\n",
        ):
            c = Connection()
            c.send(data)
            self.assertEqual(statuses(c.output()), [200], data)

    def test_two_authorizations(self) -> None:
        """Two Authorization headers are a 400, whatever their values."""
        self.assertRefused(
            post(
                headers=b"Authorization: Basic dTE6cA==\r\n"
                b"Authorization: Basic dTI6cA==\r\n"
            ),
            400,
            "the Authorization header is given more than once",
        )

    def test_long_numbers(self) -> None:
        """A Content-Length or chunk size of 5,000 digits is a 400 naming it;
        5,000 leading zeros are still the number after them (a 413 when that
        is over max_body)."""
        head = b"POST /t HTTP/1.1\r\nHost: gw\r\n"
        self.assertRefused(
            head + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n",
            400,
            "malformed HTTP request: Content-Length overflow",
        )
        self.assertRefused(
            head + b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 5000 + b"\r\n",
            400,
            "malformed HTTP request: Chunk size overflow",
        )
        c = Connection()
        c.send(head + b"Content-Length: " + b"0" * 5000 + b"5\r\n\r\nhello")
        self.assertEqual(statuses(c.output()), [200])
        self.assertEqual(c.handler.requests[0].body, b"hello")
        c = Connection(max_body=4)
        c.send(head + b"Content-Length: " + b"0" * 5000 + b"5\r\n\r\n")
        self.assertEqual(statuses(c.output()), [413])


class IdleTimeoutTests(SynchronousTestCase):
    def test_idle_keep_alive(self) -> None:
        """A keep-alive connection with nothing to do closes after idle_timeout."""
        c = Connection(idle_timeout=10)
        c.clock.advance(5)
        c.send(post())
        c.clock.advance(9.9)
        self.assertFalse(c.closed)
        c.clock.advance(0.1)
        self.assertTrue(c.closed)

    def test_never_used(self) -> None:
        c = Connection(idle_timeout=10)
        c.clock.advance(10)
        self.assertTrue(c.closed)

    def test_stalled_request(self) -> None:
        """A request stalled half-way is dropped idle_timeout after its first
        byte, without an answer."""
        c = Connection(idle_timeout=10)
        c.send(post()[:30])
        c.clock.advance(6)
        c.send(post()[30:40])
        c.clock.advance(3.9)
        self.assertFalse(c.closed)
        c.clock.advance(0.1)
        self.assertTrue(c.closed)
        self.assertEqual(c.output(), b"")

    def test_trickled_request(self) -> None:
        """A client that trickles a request a byte a second, never idle for long,
        is still cut off idle_timeout after the request's first byte."""
        c = Connection(idle_timeout=10)
        data = post(body=b"x" * 100)
        for second in range(10):
            self.assertFalse(c.closed, second)
            c.send(data[second : second + 1])
            c.clock.advance(1)
        self.assertTrue(c.closed)
        self.assertEqual((c.output(), c.handler.requests), (b"", []))

    def test_trickled_blank_lines(self) -> None:
        """Blank lines before a request count as its start (llhttp skips them
        without starting a request)."""
        c = Connection(idle_timeout=10)
        for _ in range(10):
            c.send(b"\r\n")
            c.clock.advance(1)
        self.assertTrue(c.closed)

    def test_request_timeout(self) -> None:
        """request_timeout, when shorter, bounds a request however recently the
        connection was active."""
        c = Connection(idle_timeout=60, request_timeout=5)
        c.send(post())
        c.clock.advance(50)
        c.send(post()[:10])
        c.clock.advance(4.9)
        self.assertFalse(c.closed)
        c.send(post()[10:20])
        c.clock.advance(0.1)
        self.assertTrue(c.closed)
        self.assertEqual(statuses(c.output()), [200])

    def test_deadline_per_request(self) -> None:
        """Each request on a keep-alive connection has its own deadline, counted
        from its own first byte."""
        c = Connection(idle_timeout=10)
        for _ in range(5):
            c.send(post()[:20])
            c.clock.advance(8)
            c.send(post()[20:])
            c.clock.advance(1)
        self.assertFalse(c.closed)
        self.assertEqual(statuses(c.output()), [200] * 5)

    def test_paused_time_not_counted(self) -> None:
        """While the server itself holds reading (max_pipeline), the clock of a
        request half-received does not run; it restarts when reading resumes."""
        answer = Deferring()
        c = Connection(Handler(answer), idle_timeout=10, max_pipeline=1)
        c.send(post() + post()[:20])
        self.assertEqual(c.transport.producerState, "paused")
        c.clock.advance(100)
        self.assertFalse(c.closed)
        answer.deferreds[0].callback(HTTPResponse(200))
        self.assertEqual(c.transport.producerState, "producing")
        c.clock.advance(9.9)
        self.assertFalse(c.closed)
        c.clock.advance(0.1)
        self.assertTrue(c.closed)

    def test_pending_handler_is_not_idle(self) -> None:
        """Waiting for a handler's Deferred is not idling."""
        answer = Deferring()
        c = Connection(Handler(answer), idle_timeout=10)
        c.send(post())
        c.clock.advance(100)
        self.assertFalse(c.closed)
        answer.deferreds[0].callback(HTTPResponse(200))
        self.assertEqual(statuses(c.output()), [200])
        c.clock.advance(9)
        self.assertFalse(c.closed)
        c.clock.advance(1)
        self.assertTrue(c.closed)


class FlowControlTests(SynchronousTestCase):
    def test_write_backpressure(self) -> None:
        """A client that does not read its responses stops being read: the
        protocol is its transport's producer and pauses reading while the
        transport's buffer is full."""
        c = Connection()
        self.assertIs(c.transport.producer, c.protocol)
        self.assertTrue(c.transport.streaming)
        c.protocol.pauseProducing()
        self.assertEqual(c.transport.producerState, "paused")
        c.protocol.resumeProducing()
        self.assertEqual(c.transport.producerState, "producing")

    def test_both_reasons_to_pause(self) -> None:
        """Reading resumes only when neither the pipeline nor the transport's
        buffer holds it."""
        answer = Deferring()
        c = Connection(Handler(answer), max_pipeline=1)
        c.send(post())
        c.protocol.pauseProducing()
        answer.deferreds[0].callback(HTTPResponse(200))
        self.assertEqual(c.transport.producerState, "paused")
        c.protocol.resumeProducing()
        self.assertEqual(c.transport.producerState, "producing")

    def test_producer_unregistered_on_close(self) -> None:
        """Closing unregisters the producer, which would otherwise keep a
        Twisted transport open forever."""
        c = Connection()
        c.send(post(headers=b"Connection: close\r\n"))
        self.assertTrue(c.closed)
        self.assertIsNone(c.transport.producer)

    def test_unread_responses_still_time_out(self) -> None:
        """A client that never reads is dropped idle_timeout after the last
        response was written."""
        c = Connection(idle_timeout=10)
        c.send(post())
        c.protocol.pauseProducing()
        c.clock.advance(10)
        self.assertTrue(c.closed)


class HalfCloseTests(SynchronousTestCase):
    def test_answered_after_half_close(self) -> None:
        """A client that half-closes after its request still gets the answer,
        then the connection closes."""
        answer = Deferring()
        c = Connection(Handler(answer))
        self.assertTrue(IHalfCloseableProtocol.providedBy(c.protocol))
        c.send(post())
        c.protocol.readConnectionLost()
        self.assertFalse(c.closed)
        answer.deferreds[0].callback(HTTPResponse(200))
        [(status, headers, _)] = responses(c.output())
        self.assertEqual((status, headers[b"connection"]), (200, b"close"))
        self.assertTrue(c.closed)

    def test_close_while_lingering(self) -> None:
        """The client closing while the server lingers after an error ends the
        linger (no timer is left behind)."""
        c = Connection()
        c.send(b"garbage\r\n\r\n")
        c.protocol.readConnectionLost()
        self.assertTrue(c.closed)
        self.assertEqual(c.clock.getDelayedCalls(), [])

    def test_half_close_mid_request(self) -> None:
        """A request cut short by a half-close is dropped; the connection closes."""
        c = Connection()
        c.send(post()[:20])
        c.protocol.readConnectionLost()
        self.assertTrue(c.closed)
        self.assertEqual((c.output(), c.handler.requests), (b"", []))


class ConnectionLimitTests(SynchronousTestCase):
    def connect(
        self, factory: HTTPServerFactory, peer: IAddress | None = None
    ) -> StringTransportWithDisconnection:
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection(peerAddress=peer)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport

    def test_default_limit(self) -> None:
        """By default, half the open file limit beyond a reserve, at most 10000."""
        from gateway.web.server import connection_limit

        self.assertEqual(
            [connection_limit(n) for n in (1024, 20000, 1 << 20, -1, 50)],
            [462, 9950, 10000, 10000, 1],
        )
        self.assertGreaterEqual(HTTPServerFactory(Handler()).max_connections, 1)

    def test_refused_beyond_limit(self) -> None:
        """Beyond max_connections a new connection gets a 503 at once, with
        Retry-After, and closes after lingering; served ones are untouched."""
        c = Connection(max_connections=2)
        second = self.connect(c.factory)
        third = self.connect(c.factory)
        [(status, headers, body)] = responses(third.value())
        self.assertEqual(status, 503)
        self.assertEqual(headers[b"retry-after"], b"1")
        self.assertEqual(headers[b"connection"], b"close")
        self.assertEqual(json.loads(body)["code"], "RateLimited")
        self.assertEqual(
            (c.factory.open_connections, c.factory.refused_connections), (2, 1)
        )
        self.assertEqual(c.log[-1]["status"], 503)
        # the request it sends meanwhile is read and dropped
        third.protocol.dataReceived(post())
        self.assertEqual(c.handler.requests, [])
        self.assertTrue(third.connected)
        c.clock.advance(2)
        self.assertFalse(third.connected)
        self.assertEqual(c.factory.refusing, 0)
        # the served ones still work, and a freed place is taken again
        c.send(post())
        self.assertEqual(statuses(c.output()), [200])
        self.assertEqual(second.value(), b"")
        second.loseConnection()
        fourth = self.connect(c.factory)
        fourth.protocol.dataReceived(post())
        self.assertEqual(statuses(fourth.value()), [200])
        served = [cast(HTTPServerProtocol, x.protocol) for x in (second, c)]
        self.assertEqual([p.connection.closed for p in served], [True, False])

    def test_per_source(self) -> None:
        """Beyond max_connections_per_source from one address a new connection
        from it gets a 503 at once, with Retry-After; other addresses are still
        served, and a place freed is taken again."""
        c = Connection(max_connections=10, max_connections_per_source=2)
        second = self.connect(c.factory)
        third = self.connect(c.factory)
        [(status, headers, body)] = responses(third.value())
        self.assertEqual((status, headers[b"retry-after"]), (503, b"1"))
        self.assertEqual(headers[b"connection"], b"close")
        self.assertEqual(
            json.loads(body),
            {
                "code": "RateLimited",
                "message": "too many open connections from this address",
            },
        )
        other = self.connect(c.factory, IPv4Address("TCP", "192.168.1.2", 40000))
        other.protocol.dataReceived(post())
        self.assertEqual(statuses(other.value()), [200])
        self.assertEqual(
            (c.factory.open_connections, c.factory.refused_connections), (3, 1)
        )
        second.loseConnection()
        fourth = self.connect(c.factory)
        fourth.protocol.dataReceived(post())
        self.assertEqual(statuses(fourth.value()), [200])
        refused = self.connect(c.factory)
        self.assertEqual(statuses(refused.value()), [503])

    def test_per_source_logged_once_a_minute(self) -> None:
        """Refusals over the per-source cap are logged at most once a minute,
        with how many there were."""
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        c = Connection(
            max_connections=10, max_connections_per_source=1, idle_timeout=1000
        )
        for _ in range(3):
            self.connect(c.factory)
        c.clock.advance(59)
        self.connect(c.factory)
        c.clock.advance(1)
        self.connect(c.factory)
        lines = [
            formatEvent(e)
            for e in events
            if e.get("log_namespace") == "gateway.web.server"
        ]
        self.assertEqual(
            lines,
            [
                "Refused 1 connection(s) over max_connections_per_source (1) since "
                "the last such line, the latest from 192.168.1.1",
                "Refused 4 connection(s) over max_connections_per_source (1) since "
                "the last such line, the latest from 192.168.1.1",
            ],
        )

    def test_per_source_ipv6_and_unix(self) -> None:
        """IPv6 clients count by address; all clients of a UNIX socket are one."""
        c = Connection(max_connections=10, max_connections_per_source=1)
        a = IPv6Address("TCP", "2001:db8::1", 1)
        b = IPv6Address("TCP", "2001:db8::2", 1)
        self.assertEqual(self.connect(c.factory, a).value(), b"")
        self.assertEqual(self.connect(c.factory, b).value(), b"")
        self.assertEqual(statuses(self.connect(c.factory, a).value()), [503])
        unix = UNIXAddress(b"/run/gw.sock")
        self.assertEqual(self.connect(c.factory, unix).value(), b"")
        self.assertEqual(statuses(self.connect(c.factory, unix).value()), [503])

    def test_refusals_bounded(self) -> None:
        """Refused connections linger only up to max_connections of them; beyond
        that they are closed at once."""
        c = Connection(max_connections=1)
        lingering = self.connect(c.factory)
        closed = self.connect(c.factory)
        self.assertTrue(lingering.connected)
        self.assertFalse(closed.connected)
        self.assertEqual(statuses(closed.value()), [503])
        self.assertEqual(c.factory.refusing, 1)


class DrainTests(SynchronousTestCase):
    def test_nothing_open(self) -> None:
        factory = HTTPServerFactory(Handler(), clock=Clock())
        self.successResultOf(factory.drain(10))

    def test_idle_closed(self) -> None:
        """Idle keep-alive connections close at once."""
        c = Connection()
        c.send(post())
        d = c.factory.drain(10)
        self.assertTrue(c.closed)
        self.successResultOf(d)

    def test_outstanding_answered(self) -> None:
        """A request waiting for its handler gets its answer, with Connection:
        close, then the connection closes and the drain is done; pipelined
        requests not yet read are not read."""
        answer = Deferring()
        c = Connection(Handler(answer))
        c.send(post(b"/1"))
        d = c.factory.drain(10)
        self.assertNoResult(d)
        self.assertFalse(c.closed)
        c.send(post(b"/2"))
        answer.deferreds[0].callback(HTTPResponse(200))
        [(status, headers, _)] = responses(c.output())
        self.assertEqual((status, headers[b"connection"]), (200, b"close"))
        self.assertTrue(c.closed)
        self.successResultOf(d)
        self.assertEqual(len(c.handler.requests), 1)

    def test_request_being_received(self) -> None:
        """A request half-received when the drain starts is received, answered
        and the last one on its connection."""
        c = Connection()
        c.send(post()[:30])
        d = c.factory.drain(10)
        self.assertFalse(c.closed)
        c.send(post()[30:] + post())
        [request] = c.handler.requests
        self.assertFalse(request.keep_alive)
        [(status, headers, _)] = responses(c.output())
        self.assertEqual((status, headers[b"connection"]), (200, b"close"))
        self.assertTrue(c.closed)
        self.successResultOf(d)

    def test_new_connections_refused(self) -> None:
        """Connections accepted after the drain started get a 503."""
        c = Connection()
        c.factory.drain(10)
        other = c.factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = other
        other.makeConnection(transport)
        [(status, _, body)] = responses(transport.value())
        self.assertEqual(status, 503)
        self.assertIn(b"shutting down", body)

    def test_timeout(self) -> None:
        """A drain ends at its timeout: connections still open are aborted."""
        answer = Deferring()
        c = Connection(Handler(answer))
        c.send(post())
        d = c.factory.drain(5)
        c.clock.advance(4.9)
        self.assertNoResult(d)
        c.clock.advance(0.1)
        self.successResultOf(d)
        self.assertTrue(c.closed)
        self.assertEqual(c.factory.open_connections, 0)
        answer.deferreds[0].callback(HTTPResponse(200))
        self.assertEqual(c.output(), b"")

    def test_lingering_left_to_linger(self) -> None:
        """A connection lingering after an error response closes on its own
        schedule, so that the answer is not destroyed."""
        c = Connection()
        c.send(b"garbage\r\n\r\n")
        d = c.factory.drain(10)
        self.assertFalse(c.closed)
        c.clock.advance(2)
        self.assertTrue(c.closed)
        self.successResultOf(d)


class FailureTests(SynchronousTestCase):
    def test_handler_raises(self) -> None:
        """An unexpected exception is logged and answered 500 by render_error."""

        def broken(request: HTTPRequest) -> HTTPResponse:
            raise ZeroDivisionError("secret detail")

        c = Connection(Handler(broken))
        c.send(post())
        data = c.output()
        self.assertEqual(statuses(data), [500])
        self.assertEqual(error_code(data), "InternalError")
        self.assertNotIn(b"secret", data)
        self.assertNotIn(b"Traceback", data)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertFalse(c.closed)

    def test_handler_raises_gateway_error(self) -> None:
        def refuse(request: HTTPRequest) -> HTTPResponse:
            raise GatewayError(Code.RateLimited, "slow down", retry_after=3)

        c = Connection(Handler(refuse))
        c.send(post())
        [(status, headers, _)] = responses(c.output())
        self.assertEqual((status, headers[b"retry-after"]), (429, b"3"))

    def test_deferred_fails_with_gateway_error(self) -> None:
        c = Connection(
            Handler(lambda r: fail(GatewayError(Code.BrokerUnavailable, "down")))
        )
        c.send(post())
        self.assertEqual(error_code(c.output()), "BrokerUnavailable")

    def test_deferred_fails_otherwise(self) -> None:
        c = Connection(Handler(lambda r: fail(KeyError("k"))))
        c.send(post())
        self.assertEqual(error_code(c.output()), "InternalError")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_not_a_response(self) -> None:
        c = Connection(Handler(lambda r: succeed("nonsense")))  # type: ignore[arg-type,return-value]
        c.send(post())
        self.assertEqual(error_code(c.output()), "InternalError")

    def test_render_error_raises(self) -> None:
        """If render_error itself fails, a plain response still goes out."""
        handler = Handler()

        def render_error(request: HTTPRequest, error: GatewayError) -> HTTPResponse:
            raise RuntimeError("oops")

        handler.render_error = render_error  # type: ignore[method-assign]
        c = Connection(handler)
        c.send(b"garbage\r\n\r\n")
        [(status, _, body)] = responses(c.output())
        self.assertEqual(
            (status, body),
            (400, b"malformed HTTP request: Invalid method encountered\n"),
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_connection_lost_before_answer(self) -> None:
        """Answers arriving after the connection is gone are dropped quietly."""
        answer = Deferring()
        c = Connection(Handler(answer))
        c.send(post() + post() + post())
        c.transport.loseConnection()
        self.assertEqual(c.factory.open_connections, 0)
        self.assertEqual(c.factory.handler.closed, [c.protocol.connection.id])  # type: ignore[attr-defined]
        d1, d2, d3 = answer.deferreds
        d2.callback(HTTPResponse(200))
        d1.errback(GatewayError(Code.BrokerUnavailable, "down"))
        d3.callback(HTTPResponse(200))
        self.assertEqual(c.output(), b"")
        self.assertEqual(c.log, [])
        for d in answer.deferreds:
            self.assertIsNone(self.successResultOf(d))


class AccessLogTests(SynchronousTestCase):
    def test_entry(self) -> None:
        """One entry per response, with exactly the access log keys."""
        answer = Deferring()
        c = Connection(Handler(answer), idle_timeout=1e10)
        c.clock.advance(1714564800.25)
        c.send(post(b"/topics/a%2Fb?qos=1")[:10])
        c.clock.advance(0.0015)
        c.send(post(b"/topics/a%2Fb?qos=1")[10:])
        c.clock.advance(0.01)
        answer.deferreds[0].callback(
            HTTPResponse(
                200,
                body=b"12",
                log=AccessLogFields(client_id="dev1", user="u", message_id="M1"),
            )
        )
        [entry] = c.log
        self.assertEqual(
            entry,
            {
                "time": "2024-05-01T12:00:00.261Z",
                "peer": "192.168.1.1:54321",
                "method": "POST",
                "path": "/topics/a%2Fb",
                "http_version": "1.1",
                "status": 200,
                "bytes": 2,
                "duration_ms": 11.5,
                "client_id": "dev1",
                "user": "u",
                "message_id": "M1",
            },
        )

    def test_server_error_logged(self) -> None:
        """Errors the server detects itself are logged with what is known."""
        c = Connection(max_body=1)
        c.send(post(body=b"toolong"))
        [entry] = c.log
        self.assertEqual(entry["status"], 413)
        self.assertEqual(entry["method"], "POST")
        self.assertEqual(entry["path"], "/topics/a")
        self.assertEqual(entry["client_id"], "errors")
        self.assertIsNone(entry["message_id"])

    def test_garbage_logged(self) -> None:
        c = Connection()
        c.send(b"\x16\x03\x01 tls hello")
        [entry] = c.log
        self.assertEqual(
            (entry["status"], entry["method"], entry["path"]), (400, "", "")
        )

    def test_access_log_failure_contained(self) -> None:
        c = Connection()

        def broken(entry: object) -> None:
            raise OSError("disk full")

        c.factory.access_log = broken
        c.send(post(), post())
        self.assertEqual(statuses(c.output()), [200, 200])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)


PIECES = [
    b"POST /t?x=1 HTTP/1.1\r\n",
    b"GET / HTTP/1.0\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 99999999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"Upgrade: h2c\r\nConnection: Upgrade\r\n",
    b"Host: x\r\n",
    b"\r\n",
    b"abc",
    b"3\r\nabc\r\n",
    b"0\r\n\r\n",
    b" ",
    b":",
]


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.one_of(st.binary(max_size=30), st.sampled_from(PIECES)), max_size=25
        ),
        st.data(),
    )
    def test_arbitrary_input(self, pieces: list[bytes], data: st.DataObject) -> None:
        """
        Any bytes in any chunks: nothing escapes dataReceived; what is written is a
        sequence of well-formed responses, and errors close the connection.
        """
        stream = b"".join(pieces)
        cuts = sorted(
            data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts")
        )
        c = Connection(max_body=100, max_header_bytes=200, max_target_bytes=50)
        start = 0
        for cut in [*cuts, len(stream)]:
            c.send(stream[start:cut])
            start = cut
        c.clock.advance(3)
        out = c.output().replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
        found = responses(out)
        for status, headers, _ in found:
            self.assertIn(status, {200, 400, 413, 414, 431, 505})
            if status != 200:
                self.assertEqual(headers[b"connection"], b"close")
                self.assertTrue(c.closed)
        self.assertEqual(len(found), len(c.log))
        self.assertIsInstance(c.protocol, HTTPServerProtocol)
