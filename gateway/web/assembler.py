# -*- test-case-name: tests.web.test_assembler,tests.web.test_server -*-
"""
The sans-I/O half of the HTTP server: bytes in, request and error events out.

L{RequestAssembler} feeds llhttp (C{httptools}) and holds every request to the
server's limits while it arrives: 414 for a long request target, 431 for a large
header block, 413 for a body over the limit (before the body is read), 505 for
versions other than 1.0 and 1.1, 400 for anything llhttp refuses (saying what)
and the strict framing rules of L{gateway.web.framing}. It knows no transport,
no clock and no Twisted: the caller passes the time with the bytes and hears
what happened through a L{RequestEvents} sink, synchronously and in order.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import NoReturn

import httptools

from gateway.errors import Code, GatewayError
from gateway.model import Connection, no_connection
from gateway.web.framing import framing_error
from gateway.web.messages import HTTPRequest
from gateway.web.numbers import bounded_integer

__all__ = ["RequestAssembler", "RequestEvents", "split_target"]

_METHODS = {
    method.encode("ascii"): method
    for method in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")
}

# Slack for the request line and the ": " and CRLFs around the counted bytes,
# used only by the guard against one huge header that llhttp buffers.
_HEAD_SLACK = 4096


class RequestEvents(typing.Protocol):
    """
    What a L{RequestAssembler} tells its owner, in the order it happens.
    """

    def request_started(self) -> None:
        """The first byte of a request arrived."""

    def continue_expected(self) -> None:
        """The head asked for C{100 Continue} (HTTP/1.1 only)."""

    def body_received(self) -> None:
        """Some bytes of the body arrived (a C{100 Continue} is owed no more)."""

    def request_received(self, request: HTTPRequest, start: float) -> None:
        """
        C{request} is complete; its first byte came at C{start}. When it does
        not keep the connection alive, nothing after it is read.
        """

    def request_failed(self, error: GatewayError) -> None:
        """
        The input broke a limit or the syntax: nothing more is read. What was
        known of the request is L{RequestAssembler.partial_request}.
        """


class _Abort(Exception):
    """
    Raised in a parser callback to stop llhttp; the reason is already handled.
    """


class RequestAssembler:
    """
    Parses the requests of one connection and checks them against the limits.

    After a request that ends the connection, or after an error, it stops: later
    bytes are ignored.

    @ivar started: whether a request is being received (its first byte came).
    @ivar start: when the request being received (or the last one) began.
    @ivar draining: set by the owner to make the next complete request the last.
    """

    def __init__(
        self,
        events: RequestEvents,
        *,
        max_body: int,
        max_header_bytes: int,
        max_target_bytes: int,
        connection: Connection | None = None,
        peer_certificate: Callable[[], object] = lambda: None,
    ) -> None:
        """
        @param events: hears what happens.
        @param max_body: the largest body accepted, in bytes.
        @param max_header_bytes: the largest header block (names and values).
        @param max_target_bytes: the longest request target.
        @param connection: the connection's handle (its id, the client's
            address), copied into every request.
        @param peer_certificate: returns the TLS client certificate (or C{None})
            for every request.
        """
        self._events = events
        self._max_body = max_body
        self._max_header_bytes = max_header_bytes
        self._max_target_bytes = max_target_bytes
        self._head_limit = max_header_bytes + max_target_bytes + _HEAD_SLACK
        self._connection = no_connection() if connection is None else connection
        self._peer_certificate = peer_certificate
        self._parser = httptools.HttpRequestParser(self)
        self._stopped = False
        self.draining = False
        self._now = 0.0
        self._seq = 0
        self.started = False
        self._in_head = False
        self._head_spill = 0
        self.start = 0.0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_length = 0
        self._content_length: bytes | None = None
        self._expect_continue = False
        self._version = "1.1"
        self._keep_alive = True

    def feed(self, data: bytes, now: float) -> None:
        """
        Parse C{data}, received at C{now}, reporting each event as it happens.
        """
        if self._stopped:
            return
        self._now = now
        seq = self._seq
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if not self._stopped:
                self._fail(
                    GatewayError(Code.BadRequest, "protocol upgrades are not supported")
                )
        except httptools.HttpParserError as error:
            if not self._stopped:
                cause = error.__context__
                if cause is not None and not isinstance(cause, _Abort):
                    raise cause from None
                # llhttp's reasons are fixed sentences naming the part at
                # fault, e.g. "Content-Length overflow".
                self._fail(
                    GatewayError(Code.BadRequest, f"malformed HTTP request: {error}")
                )
        else:
            # llhttp buffers a header until the next one starts, so one huge header
            # is invisible to on_header: bound the head by the bytes fed while in it.
            if self._in_head and seq == self._seq:
                self._head_spill += len(data)
                if self._head_spill > self._head_limit:
                    self._fail(
                        GatewayError(Code.HeadersTooLarge, "the headers are too large")
                    )

    def stop(self) -> None:
        """Read nothing more."""
        self._stopped = True

    def partial_request(self) -> HTTPRequest:
        """
        What is known of the request being parsed, for an error response.
        """
        if not self.started:
            return HTTPRequest(
                method="",
                path=b"",
                connection=self._connection,
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
        path, query = split_target(self._url)
        return HTTPRequest(
            method=method,
            path=path,
            query=query,
            headers=tuple(self._headers),
            http_version=version,
            connection=self._connection,
            peer_certificate=self._peer_certificate(),
            keep_alive=False,
        )

    def _fail(self, error: GatewayError) -> None:
        self._stopped = True
        self._events.request_failed(error)

    def _abort(self, error: GatewayError) -> NoReturn:
        """L{_fail} from inside a parser callback, then stop llhttp."""
        self._fail(error)
        raise _Abort()

    def _method(self) -> str:
        method: bytes = self._parser.get_method()
        return _METHODS.get(method) or method.decode("ascii", "replace")

    def _too_large(self) -> GatewayError:
        return GatewayError(
            Code.PayloadTooLarge,
            f"the body is larger than {self._max_body} bytes",
        )

    # llhttp callbacks

    def on_message_begin(self) -> None:
        """A request starts: reset the per-request state."""
        self._seq += 1
        self.started = True
        self._events.request_started()
        self._in_head = True
        self._head_spill = 0
        self.start = self._now
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_length = 0
        self._content_length = None
        self._expect_continue = False

    def on_url(self, fragment: bytes) -> None:
        """A piece of the request target (llhttp reports partial targets too)."""
        url = self._url + fragment if self._url else fragment
        if len(url) > self._max_target_bytes:
            self._url = url[: self._max_target_bytes]
            self._abort(GatewayError(Code.UriTooLong, "the request target is too long"))
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        """One complete header."""
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
        """The head is complete: check the version, body size and expectations."""
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
            self._events.continue_expected()

    def on_body(self, chunk: bytes) -> None:
        """A piece of the (de-chunked) body."""
        self._events.body_received()
        self._body_length += len(chunk)
        if self._body_length > self._max_body:
            self._abort(self._too_large())
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        """The request is complete: report it."""
        self.started = False
        if self.draining:
            self._keep_alive = False
        body = self._body
        url = self._url
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
        else:
            path, query = split_target(url)
        request = HTTPRequest(
            method=self._method(),
            path=path,
            query=query,
            headers=tuple(self._headers),
            body=(body[0] if len(body) == 1 else b"".join(body)),
            http_version=self._version,
            connection=self._connection,
            peer_certificate=self._peer_certificate(),
            keep_alive=self._keep_alive,
        )
        if not self._keep_alive:
            self._stopped = True
        self._events.request_received(request, self.start)
        if not self._keep_alive:
            raise _Abort()  # stop llhttp: nothing after this request is read


def split_target(target: bytes) -> tuple[bytes, bytes]:
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
