"""
Serving behind the PROXY protocol: the wrapper in memory (headers arriving in
pieces, bad and missing headers, LOCAL), the HTTP server seeing the client's
address behind it, and C{haproxy:} endpoint strings.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransportWithDisconnection,
)
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.config import Config, ConfigError, default
from gateway.errors import GatewayError
from gateway.listeners import parse_endpoints
from gateway.proxied import (
    ProxiedEndpoint,
    inner_description,
    listening_factory,
    proxied_factory,
    server_endpoint,
)
from gateway.web.messages import HTTPRequest, HTTPResponse
from gateway.web.server import HTTPServerFactory
from tests.proxy.headers import v1, v2

BALANCER = IPv4Address("TCP", "10.0.0.5", 50000)
GATEWAY = IPv4Address("TCP", "10.0.0.9", 8443)
CLIENT = IPv4Address("TCP", "192.0.2.7", 40001)
HEADER_V1 = v1("192.0.2.7", "198.51.100.1", 40001, 443)
HEADER_V2 = v2("192.0.2.7", "198.51.100.1", 40001, 443)


class Recorder(Protocol):
    """Records what it saw of its transport, and the bytes it got."""

    def __init__(self) -> None:
        self.peer: object = None
        self.host: object = None
        self.received = b""
        self.lost: list[Failure] = []

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer = self.transport.getPeer()
        self.host = self.transport.getHost()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)


@implementer(IHalfCloseableProtocol)
class HalfCloseable(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.halves: list[str] = []

    def readConnectionLost(self) -> None:
        self.halves.append("read")

    def writeConnectionLost(self) -> None:
        self.halves.append("write")


def capture_log(case: SynchronousTestCase) -> list[str]:
    """The text of every log event while C{case} runs."""
    lines: list[str] = []

    @implementer(ILogObserver)
    def observer(event: LogEvent) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines


class Connection:
    """One balancer connection to a proxied factory, in memory."""

    def __init__(self, factory: Factory, clock: Clock, timeout: float = 30.0) -> None:
        wrapper = proxied_factory(factory, clock, timeout, "haproxy:tcp:8443")
        protocol = wrapper.buildProtocol(BALANCER)
        assert protocol is not None
        self.protocol: Any = protocol
        self.transport = StringTransportWithDisconnection(GATEWAY, BALANCER)
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    def send(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.protocol.dataReceived(chunk)

    @property
    def closed(self) -> bool:
        return not self.transport.connected


class WrapperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.made: list[Recorder] = []
        self.log = capture_log(self)

    def connect(self, kind: type[Recorder] = Recorder) -> tuple[Connection, Recorder]:
        recorder = kind()
        self.made.append(recorder)
        return Connection(Factory.forProtocol(lambda: recorder), self.clock), recorder

    def test_byte_by_byte(self) -> None:
        """Fed one byte at a time, each version's header connects the wrapped
        protocol only when complete, and it sees the client's addresses."""
        for header in (HEADER_V1, HEADER_V2):
            c, recorder = self.connect()
            for byte in header:
                self.assertIsNone(recorder.peer)
                c.send(bytes([byte]))
            self.assertEqual(recorder.peer, CLIENT)
            self.assertEqual(recorder.host, IPv4Address("TCP", "198.51.100.1", 443))
            c.send(b"GET / HTTP/1.1\r\n")
            self.assertEqual(recorder.received, b"GET / HTTP/1.1\r\n")
            self.assertFalse(c.closed)
        self.assertEqual((self.clock.getDelayedCalls(), self.log), ([], []))

    def test_header_and_data_together(self) -> None:
        """Bytes after the header in the same read go to the wrapped protocol;
        a header split across reads still counts."""
        c, recorder = self.connect()
        c.send(HEADER_V2[:5], HEADER_V2[5:] + b"\x16\x03\x01")
        self.assertEqual((recorder.peer, recorder.received), (CLIENT, b"\x16\x03\x01"))

    def test_local(self) -> None:
        """A v2 LOCAL header (a health check) is the balancer's own connection."""
        c, recorder = self.connect()
        c.send(v2(command=0) + b"GET /readyz HTTP/1.1\r\n")
        self.assertEqual((recorder.peer, recorder.host), (BALANCER, GATEWAY))
        self.assertEqual(recorder.received, b"GET /readyz HTTP/1.1\r\n")

    def test_bad_headers(self) -> None:
        """A bad or missing header closes the connection with one log line;
        nothing reaches the wrapped protocol, not even what comes after."""
        for data, why in [
            (b"PROXY TCP4 192.0.2.7 127.0.0.1 http 443\r\n", "bad port 'http'"),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "no PROXY protocol header"),
            (b"\x16\x03\x01\x00\xa5\x01", "no PROXY protocol header"),
            (v2("192.0.2.7", "127.0.0.1", 1, 2, version=1), "version 1"),
            (b"PROXY UNKNOWN " + b"x" * 200, "longer than 107 bytes"),
        ]:
            del self.log[:]
            c, recorder = self.connect()
            c.send(data[:3], data[3:])
            c.send(b"more")
            self.assertTrue(c.closed, data)
            self.assertEqual(
                (recorder.peer, recorder.received, recorder.lost), (None, b"", [])
            )
            self.assertEqual(c.transport.value(), b"")
            [line] = self.log
            self.assertIn("from 10.0.0.5:50000 on haproxy:tcp:8443", line)
            self.assertIn(why, line)
            c.transport.loseConnection()  # the reactor reports the close
            self.assertEqual(recorder.lost, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_header_in_time(self) -> None:
        """A connection that sends no complete header in time is closed."""
        c, recorder = self.connect()
        c.send(b"PROXY TCP4 ")
        self.clock.advance(29.9)
        self.assertFalse(c.closed)
        self.clock.advance(0.1)
        self.assertTrue(c.closed)
        self.assertEqual(recorder.peer, None)
        [line] = self.log
        self.assertIn("no PROXY protocol header", line)

    def test_lost_before_header(self) -> None:
        """A connection gone before its header: the wrapped protocol never
        hears of it, the timer is gone."""
        c, recorder = self.connect()
        c.send(HEADER_V1[:10])
        c.transport.loseConnection()
        self.assertEqual((recorder.lost, self.clock.getDelayedCalls()), ([], []))

    def test_lost_after_header(self) -> None:
        """Once connected, the wrapped protocol hears the connection end."""
        c, recorder = self.connect()
        c.send(HEADER_V1)
        c.transport.loseConnection()
        self.assertEqual(len(recorder.lost), 1)

    def test_half_close(self) -> None:
        """Half-closes reach a wrapped protocol that takes them, after the
        header; before it, one ends the connection."""
        c, recorder = self.connect(HalfCloseable)
        self.assertTrue(IHalfCloseableProtocol.providedBy(c.protocol))
        c.send(HEADER_V2)
        IHalfCloseableProtocol(c.protocol).readConnectionLost()
        IHalfCloseableProtocol(c.protocol).writeConnectionLost()
        assert isinstance(recorder, HalfCloseable)
        self.assertEqual((recorder.halves, c.closed), (["read", "write"], False))
        early, _ = self.connect(HalfCloseable)
        IHalfCloseableProtocol(early.protocol).readConnectionLost()
        self.assertTrue(early.closed)
        plain, _ = self.connect()
        self.assertFalse(IHalfCloseableProtocol.providedBy(plain.protocol))

    def test_refusing_factory(self) -> None:
        """A wrapped factory that refuses a connection refuses it here too."""
        refusing = Factory()
        refusing.buildProtocol = lambda addr: None  # type: ignore[method-assign]
        wrapper = proxied_factory(refusing, self.clock)
        self.assertIsNone(wrapper.buildProtocol(BALANCER))


class Handler:
    """Answers 200 with the peer it saw; records the requests."""

    def __init__(self) -> None:
        self.requests: list[HTTPRequest] = []

    def handle(self, request: HTTPRequest) -> HTTPResponse:
        self.requests.append(request)
        return HTTPResponse(200, (), str(request.connection.peer).encode())

    def render_error(self, request: HTTPRequest, error: GatewayError) -> HTTPResponse:
        return HTTPResponse(error.status, (), error.message.encode())


class HTTPBehindTheBalancerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.records: list[dict[str, Any]] = []
        self.factory = HTTPServerFactory(
            Handler(),
            clock=self.clock,
            max_connections_per_source=1,
            access_log=lambda record: self.records.append(record.as_dict()),
        )

    def request(self, header: bytes) -> Connection:
        c = Connection(self.factory, self.clock)
        c.send(header + b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
        return c

    def test_peer(self) -> None:
        """The request's peer and the access log's are the client's address."""
        c = self.request(HEADER_V1)
        self.assertIn(b"200 OK", c.transport.value())
        self.assertTrue(c.transport.value().endswith(b"\r\n\r\n192.0.2.7:40001"))
        self.assertEqual(self.records[0]["peer"], "192.0.2.7:40001")
        json.dumps(self.records)

    def test_per_source_limit(self) -> None:
        """The per-address limit counts the client behind the balancer: a second
        connection of one client is refused, another client's is served, all
        from the same balancer address."""
        first = self.request(v2("192.0.2.7", "10.0.0.9", 1, 443))
        again = self.request(v2("192.0.2.7", "10.0.0.9", 2, 443))
        other = self.request(v1("192.0.2.8", "10.0.0.9", 3, 443))
        self.assertIn(b"200 OK", first.transport.value())
        self.assertIn(b"503 Service Unavailable", again.transport.value())
        self.assertIn(b"200 OK", other.transport.value())
        self.assertEqual(
            [r["peer"] for r in self.records],
            ["192.0.2.7:1", "192.0.2.7:2", "192.0.2.8:3"],
        )

    def test_bad_header_counts_nothing(self) -> None:
        """A connection with a bad header is no HTTP connection at all."""
        c = self.request(b"PROXY TCP4 1.2.3.4 5.6.7.8 x 443\r\n")
        self.assertTrue(c.closed)
        self.assertEqual(c.transport.value(), b"")
        self.assertEqual((self.factory.open_connections, self.records), (0, []))


class FakeEndpoint:
    def __init__(self) -> None:
        self.factories: list[object] = []

    def listen(self, factory: object) -> Deferred[IListeningPort]:
        self.factories.append(factory)
        return succeed(None)  # type: ignore[arg-type]


def listening(http: list[str], tls: list[str]) -> Config:
    """The default configuration listening on C{http} and C{tls}."""
    config = default()
    return attrs.evolve(
        config,
        http=attrs.evolve(config.http, listen=tuple(http)),
        tls=attrs.evolve(config.tls, listen=tuple(tls)),
    )


class DescriptionTests(SynchronousTestCase):
    def test_inner(self) -> None:
        """The endpoint behind C{haproxy:}; C{None} for others."""
        self.assertEqual(inner_description("haproxy:tcp:8443"), "tcp:8443")
        self.assertEqual(
            inner_description("haproxy:systemd:domain=INET:index=0"),
            "systemd:domain=INET:index=0",
        )
        self.assertIsNone(inner_description("tcp:8443"))
        self.assertRaises(ValueError, inner_description, "haproxy:haproxy:tcp:1")

    def test_server_endpoint(self) -> None:
        """C{haproxy:} strings make a L{ProxiedEndpoint} of the inner endpoint;
        others what Twisted makes of them."""
        reactor = MemoryReactorClock()
        endpoint = server_endpoint(reactor, "haproxy:tcp:8443:interface=127.0.0.1", 5)
        assert isinstance(endpoint, ProxiedEndpoint)
        self.assertEqual((endpoint.header_timeout, endpoint.clock), (5, reactor))
        endpoint.listen(Factory.forProtocol(Recorder))
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (8443, "127.0.0.1"))
        protocol: Any = factory.buildProtocol(BALANCER)
        protocol.makeConnection(StringTransportWithDisconnection(GATEWAY, BALANCER))
        protocol.dataReceived(HEADER_V1)
        self.assertEqual(protocol.getPeer(), CLIENT)
        plain = server_endpoint(reactor, "tcp:8080")
        self.assertNotIsInstance(plain, ProxiedEndpoint)

    def test_listening_factory(self) -> None:
        """Only C{haproxy:} strings wrap the factory."""
        clock = Clock()
        factory = Factory.forProtocol(Recorder)
        self.assertIs(listening_factory("tcp:8080", factory, clock), factory)
        wrapped = listening_factory("haproxy:tcp:8080", factory, clock)
        self.assertIsNot(wrapped, factory)
        self.assertIs(wrapped.wrappedFactory, factory)  # type: ignore[attr-defined]

    def test_config(self) -> None:
        """Each listener of a configuration may be a C{haproxy:} one, whose
        header timeout is the idle timeout; doubling it is a config error."""
        config = listening(["haproxy:tcp:8080"], ["haproxy:tcp:8443", "tcp:8444"])
        endpoints = parse_endpoints(config, MemoryReactorClock())
        kinds = [type(e).__name__ for _, e in endpoints.http + endpoints.tls]
        self.assertEqual(kinds[:2], ["ProxiedEndpoint", "ProxiedEndpoint"])
        self.assertNotEqual(kinds[2], "ProxiedEndpoint")
        assert isinstance(endpoints.http[0][1], ProxiedEndpoint)
        self.assertEqual(endpoints.http[0][1].header_timeout, 60)
        doubled = listening(["haproxy:haproxy:tcp:8080"], [])
        with self.assertRaisesRegex(ConfigError, "http.listen: bad endpoint"):
            parse_endpoints(doubled, MemoryReactorClock())
