# -*- test-case-name: tests.test_web_server -*-
"""
A small HTTP/1.0 and HTTP/1.1 server protocol on llhttp (C{httptools}).

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

import os
import resource
import time
import typing
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, NoReturn, cast

import httptools
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocolNegotiationFactory,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.clock import default_clock
from gateway.errors import Code, GatewayError
from gateway.web.framing import framing_error
from gateway.web.messages import HTTPRequest, HTTPResponse
from gateway.web.numbers import bounded_integer

__all__ = [
    "HTTPServerFactory",
    "HTTPServerProtocol",
    "RequestHandler",
    "connection_limit",
    "limited_by_open_files",
    "open_file_limit",
]

_log = Logger()

_STATUS_LINES: dict[int, bytes] = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii"))
    for status in HTTPStatus
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_SERVER = b"mqtt-http-gateway"

# Headers the server writes itself; a handler's own would break the framing or
# duplicate ours.
_RESERVED_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "date", "server"}
)
_NO_CRLF = str.maketrans("\r\n", "  ")

_METHODS = {
    method.encode("ascii"): method
    for method in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")
}

# How long the connection keeps reading (and discarding) after an error response
# before it closes: closing a socket with unread input makes the kernel send a
# RST, which can destroy the response before the client has read it.
_LINGER_SECONDS = 2.0

# Slack for the request line and the ": " and CRLFs around the counted bytes,
# used only by the guard against one huge header that llhttp buffers.
_HEAD_SLACK = 4096

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

    def connection_closed(self, connection_id: str) -> None:
        """
        The HTTP connection C{connection_id} has closed (sessions tied to it may
        end).
        """


class _Abort(Exception):
    """
    Raised in a parser callback to stop llhttp; the reason is already handled.
    """


class _Slot:
    """
    One request waiting for (or holding) its response, in request order.
    """

    __slots__ = ("close", "linger", "request", "response", "start")

    def __init__(
        self, request: HTTPRequest, start: float, close: bool, linger: bool
    ) -> None:
        self.request = request
        self.start = start
        self.close = close
        self.linger = linger
        self.response: HTTPResponse | None = None


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
        access_log: Callable[[dict[str, object]], None] | None = None,
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
        @param access_log: called with one dict per response written (the keys of
            SPEC section 10), or C{None}.
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
        source = protocol.source
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
        source = protocol.source
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


@implementer(IPushProducer, IHalfCloseableProtocol)
class HTTPServerProtocol(Protocol):
    """
    One HTTP/1.x connection.

    Requests are dispatched as soon as they are complete, responses written in
    request order with one C{write} each. The parser callbacks (C{on_*}) are
    called by llhttp only. The protocol is its transport's producer: when the
    transport's write buffer is full it pauses reading (L{pauseProducing}). A
    client that half-closes after its requests still gets their answers.
    """

    def __init__(self, factory: HTTPServerFactory) -> None:
        """
        @param factory: the factory holding the handler, limits and clock.
        """
        self.factory = factory
        self._factory = factory
        self._handler = factory.handler
        self._clock = factory.clock
        self._max_body = factory.max_body
        self._max_header_bytes = factory.max_header_bytes
        self._max_target_bytes = factory.max_target_bytes
        self._max_pipeline = factory.max_pipeline
        self._request_timeout = factory.request_timeout
        self._head_limit = (
            factory.max_header_bytes + factory.max_target_bytes + _HEAD_SLACK
        )
        self._parser = httptools.HttpRequestParser(self)
        self._transport: ITransport | None = None
        self._queue: deque[_Slot] = deque()
        self.connection_id = os.urandom(8).hex()
        self.peer = ""
        self.source = ""  # the client's address without the port
        self._connected = False
        self._reading = True  # False once no further request will be parsed
        self._closing = False  # loseConnection called
        self._refused = False  # over the connection cap or draining
        self._draining = False
        self._paused = False  # the transport is paused (by us)
        self._write_blocked = False  # the transport asked us to pause
        self._lingering = False
        self._producing = False  # registered as the transport's producer
        self._continue_owed = False
        self._tls = False
        self._certificate_fetched = False
        self._certificate: object = None
        self._now = 0.0
        self._last_activity = 0.0
        # When the request being received (or the bytes before it) began to
        # arrive; None between requests.
        self._receive_start: float | None = None
        self._idle_call: IDelayedCall | None = None
        self._linger_call: IDelayedCall | None = None
        # The message being parsed.
        self._seq = 0
        self._started = False
        self._in_head = False
        self._head_spill = 0
        self._start = 0.0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_length = 0
        self._content_length: bytes | None = None
        self._expect_continue = False
        self._version = "1.1"
        self._keep_alive = True

    # Connection events

    def connectionMade(self) -> None:
        """
        Count the connection (or refuse it), note the peer and start the idle
        timer.
        """
        transport = self.transport
        assert transport is not None
        self._transport = transport
        self._connected = True
        # Responses are written whole: Nagle's algorithm would hold a small one
        # back until the client acknowledges what came before (on a new TLS
        # connection, the session tickets), which costs a delayed ACK (~40 ms).
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        address = transport.getPeer()
        self.peer = _format_peer(address)
        self.source = _source(address)
        self._tls = ISSLTransport.providedBy(transport)
        self._now = self._last_activity = self._clock.seconds()
        factory = self._factory
        refusal = factory.connection_opened(self)
        if refusal is not None:
            self._refuse(refusal)
            return
        cast(IConsumer, transport).registerProducer(self, True)
        self._producing = True
        self._idle_call = self._clock.callLater(factory.idle_timeout, self._check_idle)

    def _refuse(self, why: str) -> None:
        factory = self._factory
        self._refused = True
        self._certificate_fetched = True  # no handshake is waited for
        factory.refused_connections += 1
        factory.refusing += 1
        self._fail(
            GatewayError(Code.RateLimited, why, status=503, retry_after=1),
            linger=factory.refusing <= factory.max_connections,
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Stop: responses still to come are dropped, their Deferreds not cancelled.
        """
        if not self._connected:
            return
        self._connected = False
        self._reading = False
        self._queue.clear()
        self._cancel_timers()
        if self._refused:
            self._factory.refusing -= 1
            return
        self._factory.connection_ended(self)
        try:
            self._handler.connection_closed(self.connection_id)
        except Exception:
            _log.failure("Request handler failed on a closed connection")

    # IPushProducer, for the transport

    def pauseProducing(self) -> None:
        """The transport's write buffer is full: stop reading requests."""
        self._write_blocked = True
        self._update_pause()

    def resumeProducing(self) -> None:
        """The transport's write buffer has drained: read again."""
        self._write_blocked = False
        self._update_pause()

    def stopProducing(self) -> None:
        """The transport is closing: nothing to do."""

    # IHalfCloseableProtocol

    def readConnectionLost(self) -> None:
        """
        The client will send no more: answer the requests received (a request
        cut short cannot be), then close.
        """
        self._reading = False
        if self._closing or self._linger_call is not None or not self._queue:
            self._close()
        else:
            last = self._queue[-1]
            last.close = True
            last.linger = False  # nothing more will arrive to cause a reset

    def writeConnectionLost(self) -> None:
        """Not used: the server never half-closes."""

    # Shutdown

    def drain(self) -> None:
        """
        Take no new request: close now if idle, else after answering the
        requests received and the one being received (L{HTTPServerFactory.drain}).
        """
        if self._draining or not self._connected or self._closing:
            return
        self._draining = True
        if self._started or self._linger_call is not None:
            return  # on_message_complete makes it the last request; or closing
        self._reading = False
        if self._queue:
            self._queue[-1].close = True
        else:
            self._close()

    def abort(self) -> None:
        """Drop the connection now, whatever it still has to send."""
        if not self._connected:
            return
        self._reading = False
        self._closing = True
        self._cancel_timers()
        transport: Any = self._transport
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """
        Parse C{data}; dispatch the requests it completes, answer errors in it.
        """
        if not self._reading:
            return  # closing, lingering after an error, or stopped
        now = self._clock.seconds()
        self._now = now
        self._last_activity = now
        if self._receive_start is None:
            self._receive_start = now
            self._check_by(now + self._request_timeout)
        seq = self._seq
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._reading:
                self._fail(
                    GatewayError(Code.BadRequest, "protocol upgrades are not supported")
                )
        except httptools.HttpParserError as error:
            if self._reading:
                cause = error.__context__
                if cause is None or isinstance(cause, _Abort):
                    # llhttp's reasons are fixed sentences naming the part at
                    # fault, e.g. "Content-Length overflow".
                    self._fail(
                        GatewayError(
                            Code.BadRequest, f"malformed HTTP request: {error}"
                        )
                    )
                else:
                    _log.failure(
                        "HTTP server bug while parsing a request",
                        Failure(cause),  # type: ignore[no-untyped-call]
                    )
                    self._fail(GatewayError(Code.InternalError, "internal error"))
        else:
            # llhttp buffers a header until the next one starts, so one huge header
            # is invisible to on_header: bound the head by the bytes fed while in it.
            if self._in_head and seq == self._seq:
                self._head_spill += len(data)
                if self._head_spill > self._head_limit:
                    self._fail(
                        GatewayError(Code.HeadersTooLarge, "the headers are too large")
                    )

    # llhttp callbacks

    def on_message_begin(self) -> None:
        """
        A request starts: reset the per-request state.
        """
        self._seq += 1
        self._started = True
        if self._receive_start is None:
            self._receive_start = self._now
        self._in_head = True
        self._head_spill = 0
        self._start = self._now
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_length = 0
        self._content_length = None
        self._expect_continue = False

    def on_url(self, fragment: bytes) -> None:
        """
        A piece of the request target (llhttp reports partial targets too).
        """
        url = self._url + fragment if self._url else fragment
        if len(url) > self._max_target_bytes:
            self._url = url[: self._max_target_bytes]
            self._abort(GatewayError(Code.UriTooLong, "the request target is too long"))
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        """
        One complete header.
        """
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self._max_header_bytes:
            self._abort(GatewayError(Code.HeadersTooLarge, "the headers are too large"))
        name = name.lower()
        self._headers.append((name, value))
        if name == b"content-length":
            self._content_length = value
        elif name == b"expect":
            self._expect_continue = value.strip().lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        """
        The head is complete: check the version, body size and expectations.
        """
        self._in_head = False
        parser = self._parser
        version = parser.get_http_version()
        if version == "1.1":
            self._version = version
            self._keep_alive = parser.should_keep_alive()
        elif version == "1.0":
            self._version = version
            self._keep_alive = False
        else:
            self._version = "1.1"
            self._abort(
                GatewayError(Code.BadRequest, "HTTP version not supported", status=505)
            )
        if parser.should_upgrade():
            self._abort(
                GatewayError(Code.BadRequest, "protocol upgrades are not supported")
            )
        problem = framing_error(self._version, self._headers)
        if problem is not None:
            self._abort(problem)
        length = self._content_length
        if length is not None:
            # llhttp has checked the digits; a number of any length is bounded.
            length = length.strip()
            if length.isdigit() and bounded_integer(length, 0, self._max_body) is None:
                self._abort(self._too_large())
        if self._expect_continue and version == "1.1":
            if self._queue:
                self._continue_owed = True  # after the earlier responses
            else:
                self._write(_CONTINUE)
                self._receive_start = self._now

    def on_body(self, chunk: bytes) -> None:
        """
        A piece of the (de-chunked) body.
        """
        self._continue_owed = False
        self._body_length += len(chunk)
        if self._body_length > self._max_body:
            self._abort(self._too_large())
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        """
        The request is complete: hand it to the handler.
        """
        self._continue_owed = False
        self._started = False
        self._receive_start = None
        if self._draining:
            self._keep_alive = False
        body = self._body
        url = self._url
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
        else:
            path, query = _split_target(url)
        request = HTTPRequest(
            method=self._method(),
            path=path,
            query=query,
            headers=tuple(self._headers),
            body=(body[0] if len(body) == 1 else b"".join(body)),
            http_version=self._version,
            connection_id=self.connection_id,
            peer=self.peer,
            peer_certificate=self._peer_certificate(),
            keep_alive=self._keep_alive,
        )
        if not self._keep_alive:
            self._reading = False
        self._dispatch(request, self._start)
        if not self._keep_alive:
            raise _Abort()  # stop llhttp: nothing after this request is read

    # Dispatching and answering

    def _dispatch(self, request: HTTPRequest, start: float) -> None:
        """
        Queue a slot for C{request} and run the handler.
        """
        slot = _Slot(request, start, not request.keep_alive, False)
        queue = self._queue
        queue.append(slot)
        if len(queue) >= self._max_pipeline and not self._paused:
            self._update_pause()
        try:
            result = self._handler.handle(request)
        except GatewayError as error:
            self._complete(slot, self._render_error(request, error))
            return
        except Exception:
            _log.failure(
                "Request handler failed on {method} {path!r}",
                method=request.method,
                path=request.path,
            )
            self._complete(slot, self._render_error(request, _internal_error()))
            return
        if isinstance(result, HTTPResponse):
            self._complete(slot, result)
        elif isinstance(result, Deferred):
            result.addCallbacks(
                self._on_result,
                self._on_failure,
                callbackArgs=(slot,),
                errbackArgs=(slot,),
            )
        else:
            _log.error(
                "Request handler returned {result!r}, not a response", result=result
            )
            self._complete(slot, self._render_error(request, _internal_error()))

    def _on_result(self, result: object, slot: _Slot) -> None:
        """
        A handler's Deferred fired.
        """
        if isinstance(result, HTTPResponse):
            self._complete(slot, result)
        else:
            _log.error(
                "Request handler returned {result!r}, not a response", result=result
            )
            self._complete(slot, self._render_error(slot.request, _internal_error()))

    def _on_failure(self, failure: Failure, slot: _Slot) -> None:
        """
        A handler's Deferred failed.
        """
        error = failure.value
        if not isinstance(error, GatewayError):
            _log.failure(
                "Request handler failed on {method} {path!r}",
                failure,
                method=slot.request.method,
                path=slot.request.path,
            )
            error = _internal_error()
        if self._connected:
            self._complete(slot, self._render_error(slot.request, error))

    def _render_error(self, request: HTTPRequest, error: GatewayError) -> HTTPResponse:
        """
        The handler's rendering of C{error}, or a plain one if that fails.
        """
        try:
            return self._handler.render_error(request, error)
        except Exception:
            _log.failure("render_error failed for {error!r}", error=error)
            return HTTPResponse(
                status=error.status,
                headers=(("Content-Type", "text/plain; charset=utf-8"),),
                body=error.message.encode("utf-8") + b"\n",
            )

    def _fail(self, error: GatewayError, linger: bool = True) -> None:
        """
        Answer an error the server found itself (in order), stop reading, close.
        """
        self._reading = False
        self._continue_owed = False
        request = self._partial_request()
        slot = _Slot(request, self._start if self._started else self._now, True, linger)
        self._queue.append(slot)
        self._complete(slot, self._render_error(request, error))

    def _abort(self, error: GatewayError) -> NoReturn:
        """
        L{_fail} from inside a parser callback, then stop llhttp.
        """
        self._fail(error)
        raise _Abort()

    def _complete(self, slot: _Slot, response: HTTPResponse) -> None:
        """
        C{slot} has its response: write it and any ready ones after it in order.
        """
        if not self._connected:
            return
        slot.response = response
        queue = self._queue
        if queue[0] is not slot:
            return
        while queue:
            slot = queue[0]
            if slot.response is None:
                break
            queue.popleft()
            self._send(slot, slot.response)
            if slot.close:
                self._finish(slot.linger)
                return
        if self._paused and len(queue) < self._max_pipeline:
            self._update_pause()
        if self._continue_owed and not queue:
            self._continue_owed = False
            self._write(_CONTINUE)
            self._receive_start = self._clock.seconds()

    def _send(self, slot: _Slot, response: HTTPResponse) -> None:
        """
        Write C{response} to C{slot}'s request with one write, then log it.
        """
        now = self._clock.seconds()
        self._last_activity = now
        request = slot.request
        status = response.status
        body = response.body
        parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
        for name, value in response.headers:
            if name.lower() not in _RESERVED_HEADERS:
                parts.append(_header_line(name, value))
        if status < 200 or status in (204, 304):
            body = b""
        else:
            parts.append(b"Content-Length: %d\r\n" % len(body))
            if request.method == "HEAD":
                body = b""
        parts.append(self._factory.standard_headers(now))
        parts.append(b"Connection: close\r\n\r\n" if slot.close else b"\r\n")
        parts.append(body)
        self._write(b"".join(parts))
        access_log = self._factory.access_log
        if access_log is not None:
            log = response.log
            entry: dict[str, object] = {
                "time": self._factory.iso_time(now),
                "peer": request.peer,
                "method": request.method,
                "path": request.path.decode("latin-1"),
                "http_version": request.http_version,
                "status": status,
                "bytes": len(body),
                "duration_ms": round((now - slot.start) * 1000, 3),
                "client_id": log.client_id,
                "user": log.user,
                "message_id": log.message_id,
            }
            try:
                access_log(entry)
            except Exception:
                _log.failure("Access log failed")

    def _write(self, data: bytes) -> None:
        """
        Write C{data} unless the connection is closing.
        """
        if self._connected and not self._closing:
            assert self._transport is not None
            self._transport.write(data)

    def _finish(self, linger: bool) -> None:
        """
        The last response is written: close now or after lingering.
        """
        self._reading = False
        if not linger:
            self._close()
            return
        # Keep reading (and discarding) so unread input cannot turn the close into
        # a RST that destroys the response; the client closes first, or we do.
        self._lingering = True
        self._update_pause()
        if self._linger_call is None:
            self._linger_call = self._clock.callLater(
                min(_LINGER_SECONDS, self._factory.idle_timeout), self._close
            )

    def _close(self) -> None:
        """
        Close the connection (once).
        """
        self._reading = False
        self._cancel_timers()  # also the linger timer, if it is not what runs
        if self._connected and not self._closing:
            self._closing = True
            assert self._transport is not None
            if self._producing:
                # A registered producer would keep the connection open.
                self._producing = False
                cast(IConsumer, self._transport).unregisterProducer()
            self._transport.loseConnection()

    def _update_pause(self) -> None:
        """
        Pause reading while C{max_pipeline} requests are outstanding or the
        transport cannot take more output; resume otherwise (and always while
        lingering, when input is only discarded).
        """
        pause = not self._lingering and (
            self._write_blocked or len(self._queue) >= self._max_pipeline
        )
        if pause == self._paused or not self._connected or self._closing:
            return
        self._paused = pause
        transport = cast(IPushProducer, self._transport)
        if pause:
            transport.pauseProducing()
        else:
            transport.resumeProducing()
            if self._receive_start is not None:
                # Time spent paused was not the client's.
                self._receive_start = self._clock.seconds()

    def _check_by(self, deadline: float) -> None:
        """Make sure L{_check_idle} runs no later than C{deadline}."""
        call = self._idle_call
        if call is not None and call.active() and call.getTime() > deadline:
            call.reset(max(0.0, deadline - self._clock.seconds()))

    def _check_idle(self) -> None:
        """
        Close the connection if it has waited for input for C{idle_timeout}
        (waiting for a handler is not waiting for input), or if the request being
        received started more than C{request_timeout} ago.
        """
        self._idle_call = None
        if not self._connected or self._closing or self._linger_call is not None:
            return
        now = self._clock.seconds()
        deadline: float | None = None
        start = self._receive_start
        if start is not None and not self._paused and not self._continue_owed:
            deadline = start + self._request_timeout
        if not self._queue:
            idle_deadline = self._last_activity + self._factory.idle_timeout
            if deadline is None or idle_deadline < deadline:
                deadline = idle_deadline
        if deadline is None:
            delay = self._factory.idle_timeout
        elif now >= deadline:
            self._close()
            return
        else:
            delay = deadline - now
        self._idle_call = self._clock.callLater(delay, self._check_idle)

    def _cancel_timers(self) -> None:
        for name in ("_idle_call", "_linger_call"):
            call: IDelayedCall | None = getattr(self, name)
            if call is not None:
                setattr(self, name, None)
                if call.active():
                    call.cancel()

    # Request values

    def _method(self) -> str:
        method: bytes = self._parser.get_method()
        return _METHODS.get(method) or method.decode("ascii", "replace")

    def _too_large(self) -> GatewayError:
        return GatewayError(
            Code.PayloadTooLarge,
            f"the body is larger than {self._max_body} bytes",
        )

    def _partial_request(self) -> HTTPRequest:
        """
        What is known of the request being parsed, for an error response.
        """
        if not self._started:
            return HTTPRequest(
                method="",
                path=b"",
                connection_id=self.connection_id,
                peer=self.peer,
                peer_certificate=self._peer_certificate(),
                keep_alive=False,
            )
        # The method is parsed before the target, the version before the headers.
        method = self._method() if self._url else ""
        version = self._version
        if self._in_head:
            version = self._parser.get_http_version() if self._headers else "1.1"
            if version not in ("1.0", "1.1"):
                version = "1.1"
        path, query = _split_target(self._url)
        return HTTPRequest(
            method=method,
            path=path,
            query=query,
            headers=tuple(self._headers),
            http_version=version,
            connection_id=self.connection_id,
            peer=self.peer,
            peer_certificate=self._peer_certificate(),
            keep_alive=False,
        )

    def _peer_certificate(self) -> object:
        """
        The TLS client certificate as a C{cryptography} certificate, fetched once.
        """
        if not self._tls:
            return None
        if not self._certificate_fetched:
            self._certificate_fetched = True
            try:
                certificate = cast(Any, self._transport).getPeerCertificate()
                if certificate is not None:
                    self._certificate = certificate.to_cryptography()
            except Exception:
                _log.failure("Could not read the peer certificate")
        return self._certificate


def _internal_error() -> GatewayError:
    return GatewayError(Code.InternalError, "internal error")


def _split_target(target: bytes) -> tuple[bytes, bytes]:
    """
    The raw path and query of a request target in origin or absolute form.
    """
    if target[:1] != b"/" and b"://" in target:
        # absolute-form (RFC 9112 3.2.2): drop scheme and authority
        rest = target.partition(b"://")[2]
        slash = rest.find(b"/")
        query_mark = rest.find(b"?")
        if slash < 0 or 0 <= query_mark < slash:
            target = b"/" + rest[query_mark:] if query_mark >= 0 else b"/"
        else:
            target = rest[slash:]
    path, _, query = target.partition(b"?")
    return path, query


def _header_line(name: str, value: str) -> bytes:
    """
    C{name: value} and CRLF, with any CR or LF in them replaced by spaces.
    """
    line = f"{name}: {value}"
    if "\r" in line or "\n" in line:
        line = line.translate(_NO_CRLF)
    return (line + "\r\n").encode("utf-8")


def _source(address: IAddress) -> str:
    """
    The client address that per-source limits count: the IP address, or
    C{"unix"} for every client of a UNIX socket.
    """
    if isinstance(address, IPv4Address | IPv6Address):
        return address.host
    if isinstance(address, UNIXAddress):
        return "unix"
    return str(address)


def _format_peer(address: IAddress) -> str:
    """
    C{host:port} (C{[v6host]:port} for IPv6) for logs and connection ids.
    """
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress):
        name = address.name or b""
        return "unix:" + name.decode("utf-8", "replace")
    return str(address)
