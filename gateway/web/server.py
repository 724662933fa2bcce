# -*- test-case-name: tests.web.test_server -*-
"""
A small HTTP/1.0 and HTTP/1.1 server on llhttp (C{httptools}): the factory
(connection caps, drain, shared headers) and the handler interface.

The server is three parts: L{gateway.web.assembler} turns bytes into requests
and holds them to the limits (no I/O), L{gateway.web.pipeline} releases
responses in request order, and L{gateway.web.protocol} is the thin Twisted
protocol holding timers, flow control and draining.

It parses requests into L{HTTPRequest} values, hands each one to a
L{RequestHandler} at once (pipelined requests run concurrently) and writes the
L{HTTPResponse} values back strictly in request order. Limits are answered, not
dropped: 413 for bodies over C{max_body} (before the body is read), 414 for long
request targets, 431 for large header blocks, 400 for anything llhttp refuses
(saying what, e.g. C{Content-Length overflow}), and 400 or 501 for framing a
proxy in front could read differently (L{gateway.web.framing}).

Flow control: a connection stops reading while it has C{max_pipeline} requests
outstanding or while its transport cannot take more output (a client that does
not read its responses); a request must arrive whole within C{request_timeout} of
its first byte, however slowly its bytes trickle in; beyond C{max_connections}
open connections, or beyond C{max_connections_per_source} from one client
address, a new one is answered 503 at once and closed.
L{HTTPServerFactory.drain} ends every connection gracefully for a shutdown.

All responses are C{HTTP/1.1}, also to HTTP/1.0 clients (RFC 9110 section 2.5 lets
a server send its own version); HTTP/1.0 connections are always closed after the
response.
"""

from __future__ import annotations

import resource
import time
import typing
from collections.abc import Callable
from email.utils import formatdate

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocolNegotiationFactory,
    IReactorTime,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from gateway.clock import default_clock
from gateway.errors import GatewayError
from gateway.web.messages import AccessRecord, HTTPRequest, HTTPResponse
from gateway.web.protocol import HTTPServerProtocol

__all__ = [
    "HTTPServerFactory",
    "HTTPServerProtocol",
    "RequestHandler",
    "connection_limit",
    "limited_by_open_files",
    "open_file_limit",
]

_log = Logger()

_SERVER = b"mqtt-http-gateway"

# At most one log line per this many seconds about connections refused over the
# per-source cap (a flood must not flood the log).
_SOURCE_LOG_SECONDS = 60.0

# File descriptors kept free of HTTP connections (broker connections, log files,
# the listening sockets ...), and the most connections served by default.
_RESERVED_FILES = 100
_MAX_CONNECTIONS = 10_000


def connection_limit(open_files: int) -> int:
    """
    The default cap on concurrent connections for a process that may open
    C{open_files} file descriptors (C{RLIMIT_NOFILE}; negative for no limit).

    Half of what is left after a reserve, at most 10,000: refused connections
    (see L{HTTPServerFactory}) hold descriptors for a moment too, up to as many
    again, so the process never runs out of them.
    """
    if open_files < 0:
        return _MAX_CONNECTIONS
    return max(1, min(_MAX_CONNECTIONS, (open_files - _RESERVED_FILES) // 2))


def limited_by_open_files(open_files: int) -> bool:
    """
    Whether C{open_files} (see L{connection_limit}) holds the default cap on
    connections below its maximum of 10,000: the limit to raise for more.
    """
    return open_files >= 0 and connection_limit(open_files) < _MAX_CONNECTIONS


def open_file_limit() -> int:
    """
    The process's soft C{RLIMIT_NOFILE}, or -1 when it has none.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return -1 if soft == resource.RLIM_INFINITY else soft


class RequestHandler(typing.Protocol):
    """
    What the server hands requests to: an API adapter (or a router of them).
    """

    def handle(self, request: HTTPRequest) -> HTTPResponse | Deferred[HTTPResponse]:
        """
        Answer C{request}, now or later.

        @return: the response, or a L{Deferred} firing with it. Raising or failing
            with a L{GatewayError} is answered with L{render_error}; anything else
            is logged and answered as an internal error.
        """

    def render_error(self, request: HTTPRequest, error: GatewayError) -> HTTPResponse:
        """
        The response for C{error} on C{request}.

        For errors the server detects itself (413, 414, 431, 400, 505) C{request}
        has only what was known at that point: method, path and headers may be
        empty and the body is always C{b""}.
        """


@implementer(IProtocolNegotiationFactory)
class HTTPServerFactory(Factory):
    """
    Builds an L{HTTPServerProtocol} per connection, all sharing one handler.

    Under TLS it offers ALPN C{http/1.1} and C{http/1.0}: Twisted's TLS layer
    answers a client's ALPN offer with a handshake failure unless the wrapped
    factory names protocols, and C{curl --http1.0} offers only C{http/1.0}.

    Beyond C{max_connections} open connections, beyond
    C{max_connections_per_source} open connections from the new one's client
    address (so that one host cannot hold them all; with C{haproxy:} endpoints
    the address the proxy reports), and once L{drain} was called, a new
    connection is refused rather than left waiting: it gets a 503 (code
    C{RateLimited}, C{Retry-After: 1}, C{Connection: close}) as soon as it is
    accepted, and input is read and dropped for a moment before it closes (so
    that the close does not become a reset that destroys the answer). Refused
    connections linger only while there are fewer of them than
    C{max_connections}; beyond that they are closed at once. Refusing keeps the
    listener accepting, so clients hear at once rather than time out in the
    kernel's backlog, and a load balancer sees the 503.

    @ivar open_connections: how many connections are served right now (refused
        ones not counted).
    @ivar refused_connections: how many connections were refused so far.
    @ivar draining: whether L{drain} was called.
    """

    # The listener logs one line of its own; this would add two per port.
    noisy = False

    def __init__(
        self,
        handler: RequestHandler,
        *,
        max_body: int = 262144,
        max_header_bytes: int = 16384,
        max_target_bytes: int = 16384,
        idle_timeout: float = 60,
        request_timeout: float | None = None,
        max_pipeline: int = 32,
        max_connections: int | None = None,
        max_connections_per_source: int = 256,
        access_log: Callable[[AccessRecord], None] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param handler: answers the requests.
        @param max_body: the largest body accepted, in bytes (413 beyond).
        @param max_header_bytes: the largest header block (names and values) in
            bytes (431 beyond).
        @param max_target_bytes: the longest request target (414 beyond).
        @param idle_timeout: seconds a connection may wait for input before it is
            closed (a request waiting for its handler is not idle).
        @param request_timeout: seconds from the first byte of a request to its
            last before the connection is closed without an answer, however
            steadily bytes arrive; C{idle_timeout} if C{None}. Time spent with
            reading paused by the server does not count.
        @param max_pipeline: the most requests a connection may have outstanding;
            reading pauses at that count.
        @param max_connections: the most connections served at once (see above);
            if C{None}, L{connection_limit} of the process's open file limit.
        @param max_connections_per_source: the most connections served at once
            to one client address (IP address; for UNIX sockets all clients
            are one).
        @param access_log: called with the L{AccessRecord} of every response
            written, or C{None}.
        @param clock: the time source and scheduler; the global reactor if
            C{None}.
        """
        clock = default_clock(clock)
        self.handler = handler
        self.max_body = max_body
        self.max_header_bytes = max_header_bytes
        self.max_target_bytes = max_target_bytes
        self.idle_timeout = idle_timeout
        self.request_timeout = (
            idle_timeout if request_timeout is None else request_timeout
        )
        self.max_pipeline = max(1, max_pipeline)
        if max_connections is None:
            max_connections = connection_limit(open_file_limit())
        self.max_connections = max(1, max_connections)
        self.max_connections_per_source = max(1, max_connections_per_source)
        self.access_log = access_log
        self.clock = clock
        self.open_connections = 0
        self.refused_connections = 0
        self.refusing = 0
        self.draining = False
        self._connections: set[HTTPServerProtocol] = set()
        self._per_source: dict[str, int] = {}
        self._source_refusals = 0  # not logged yet
        self._source_logged = -_SOURCE_LOG_SECONDS
        self._drained: list[Deferred[None]] = []
        self._drain_timer: IDelayedCall | None = None
        self._date_second = -1
        self._date_lines = b""
        self._iso_second = -1
        self._iso_prefix = ""

    def acceptableProtocols(self) -> list[bytes]:
        """
        The ALPN protocols spoken, preferred first.
        """
        return [b"http/1.1", b"http/1.0"]

    def buildProtocol(self, addr: IAddress | None) -> HTTPServerProtocol:
        """
        A new protocol for one connection.
        """
        return HTTPServerProtocol(self)

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Stop taking requests, for a graceful shutdown (stop listening first).

        From now on new connections are refused (see above). An idle connection
        closes at once; a request being received is received and answered; every
        request already received is answered. Each connection closes after its
        last answer (which says C{Connection: close}); no later request on it is
        read.

        @param timeout: seconds after which connections still open are aborted.
        @return: fires with C{None} once no connection is open, or at the
            timeout.
        """
        self.draining = True
        for protocol in list(self._connections):
            protocol.drain()
        if not self._connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        if self._drain_timer is None:
            self._drain_timer = self.clock.callLater(timeout, self._drain_expired)
        return d

    def _drain_expired(self) -> None:
        self._drain_timer = None
        if self._connections:
            _log.warn(
                "Aborting {count} HTTP connection(s) still open after the drain "
                "timeout",
                count=len(self._connections),
            )
        for protocol in list(self._connections):
            protocol.abort()
        self._fire_drained()

    def _fire_drained(self) -> None:
        if self._drain_timer is not None:
            if self._drain_timer.active():
                self._drain_timer.cancel()
            self._drain_timer = None
        waiting, self._drained = self._drained, []
        for d in waiting:
            d.callback(None)

    def connection_opened(self, protocol: HTTPServerProtocol) -> str | None:
        """
        Count a new connection, unless it must be refused.

        @return: C{None} to serve it, or why it is refused (a sentence for the
            client).
        """
        if self.draining:
            return "the gateway is shutting down"
        if self.open_connections >= self.max_connections:
            return "the gateway has too many open connections"
        source = protocol.connection.peer.host
        count = self._per_source.get(source, 0)
        if count >= self.max_connections_per_source:
            self._source_refused(source)
            return "too many open connections from this address"
        self._per_source[source] = count + 1
        self.open_connections += 1
        self._connections.add(protocol)
        return None

    def _source_refused(self, source: str) -> None:
        """
        Count a refusal over the per-source cap; log the count, at most once a
        minute.
        """
        self._source_refusals += 1
        now = self.clock.seconds()
        if now - self._source_logged < _SOURCE_LOG_SECONDS:
            return
        _log.warn(
            "Refused {count} connection(s) over max_connections_per_source "
            "({limit}) since the last such line, the latest from {source}",
            count=self._source_refusals,
            limit=self.max_connections_per_source,
            source=source,
        )
        self._source_refusals = 0
        self._source_logged = now

    def connection_ended(self, protocol: HTTPServerProtocol) -> None:
        """A connection that L{connection_opened} counted has closed."""
        self.open_connections -= 1
        self._connections.discard(protocol)
        source = protocol.connection.peer.host
        count = self._per_source.get(source, 1) - 1
        if count > 0:
            self._per_source[source] = count
        else:
            self._per_source.pop(source, None)
        if self.draining and not self._connections and self._drained:
            self._fire_drained()

    def standard_headers(self, now: float) -> bytes:
        """
        The C{Date} and C{Server} header lines for time C{now} (cached per second).
        """
        second = int(now)
        if second != self._date_second:
            date = formatdate(second, usegmt=True).encode("ascii")
            self._date_lines = b"Date: %s\r\nServer: %s\r\n" % (date, _SERVER)
            self._date_second = second
        return self._date_lines

    def iso_time(self, now: float) -> str:
        """
        C{now} as ISO 8601 UTC with milliseconds, e.g. C{2024-05-01T12:00:00.250Z}.
        """
        second = int(now)
        if second != self._iso_second:
            self._iso_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._iso_second = second
        millis = min(999, round((now - second) * 1000))
        return f"{self._iso_prefix}.{millis:03d}Z"
