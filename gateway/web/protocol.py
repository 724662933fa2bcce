# -*- test-case-name: tests.web.test_server -*-
"""
The thin Twisted half of the HTTP server: one L{HTTPServerProtocol} per
connection.

It owns what needs a transport or a clock: the idle, request and linger timers,
flow control (pausing reading while C{max_pipeline} requests are outstanding or
the transport's buffer is full), draining, the TLS peer certificate, the
connection caps of its factory and the access log. Parsing and the limits are
the L{RequestAssembler}'s (sans-I/O), response order is the
L{ResponsePipeline}'s.

It is longer than the other modules (~580 lines) because the timers, pausing,
lingering and draining all act on the same few flags of one connection and
are only correct together; splitting them would spread that state over
classes that must then reach into each other.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.errors import Code, GatewayError
from gateway.model import Connection, peer_of
from gateway.web.assembler import RequestAssembler
from gateway.web.messages import AccessRecord, HTTPRequest, HTTPResponse
from gateway.web.pipeline import ResponsePipeline, Slot, encode_response

if TYPE_CHECKING:
    from gateway.web.server import HTTPServerFactory

__all__ = ["HTTPServerProtocol"]

_log = Logger()

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# How long the connection keeps reading (and discarding) after an error response
# before it closes: closing a socket with unread input makes the kernel send a
# RST, which can destroy the response before the client has read it.
_LINGER_SECONDS = 2.0


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
        self.connection = Connection(os.urandom(8).hex())
        self._peer_text = ""  # the peer as the access log writes it, made once
        self._max_pipeline = factory.max_pipeline
        self._request_timeout = factory.request_timeout
        self._assembler = RequestAssembler(
            self,
            max_body=factory.max_body,
            max_header_bytes=factory.max_header_bytes,
            max_target_bytes=factory.max_target_bytes,
            connection=self.connection,
            peer_certificate=self._peer_certificate,
        )
        self._transport: ITransport | None = None
        self._pipeline = ResponsePipeline()
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
        self.connection.peer = peer_of(transport.getPeer())
        self._peer_text = str(self.connection.peer)
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
        self._pipeline.clear()
        self._cancel_timers()
        self.connection.close()
        if self._refused:
            self._factory.refusing -= 1
            return
        self._factory.connection_ended(self)

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
        if self._closing or self._linger_call is not None or not self._pipeline:
            self._close()
        else:
            last = self._pipeline.last()
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
        self._assembler.draining = True
        if self._assembler.started or self._linger_call is not None:
            return  # on_message_complete makes it the last request; or closing
        self._reading = False
        if self._pipeline:
            self._pipeline.last().close = True
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
        Feed C{data} to the assembler; it reports requests and errors back.
        """
        if not self._reading:
            return  # closing, lingering after an error, or stopped
        now = self._clock.seconds()
        self._now = now
        self._last_activity = now
        if self._receive_start is None:
            self._receive_start = now
            self._check_by(now + self._request_timeout)
        try:
            self._assembler.feed(data, now)
        except Exception:
            _log.failure("HTTP server bug while parsing a request")
            if self._reading:
                self._assembler.stop()
                self._fail(_internal_error())

    # The assembler's events (RequestEvents)

    def request_started(self) -> None:
        """A request's first byte arrived."""
        if self._receive_start is None:
            self._receive_start = self._now

    def continue_expected(self) -> None:
        """Send C{100 Continue} now, or after the earlier responses."""
        if self._pipeline:
            self._continue_owed = True
        else:
            self._write(_CONTINUE)
            self._receive_start = self._now

    def body_received(self) -> None:
        """The client sends its body: no C{100 Continue} is owed any more."""
        self._continue_owed = False

    def request_received(self, request: HTTPRequest, start: float) -> None:
        """A request is complete: hand it to the handler."""
        self._continue_owed = False
        self._receive_start = None
        if not request.keep_alive:
            self._reading = False
            self.connection.keep_alive = False
        self._dispatch(request, start)

    def request_failed(self, error: GatewayError) -> None:
        """The assembler refused the input: answer, stop reading, close."""
        self._fail(error)

    # Dispatching and answering

    def _dispatch(self, request: HTTPRequest, start: float) -> None:
        """
        Queue a slot for C{request} and run the handler.
        """
        slot = self._pipeline.add(request, start, not request.keep_alive)
        if len(self._pipeline) >= self._max_pipeline and not self._paused:
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

    def _on_result(self, result: object, slot: Slot) -> None:
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

    def _on_failure(self, failure: Failure, slot: Slot) -> None:
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
        assembler = self._assembler
        assembler.stop()
        request = assembler.partial_request()
        start = assembler.start if assembler.started else self._now
        slot = self._pipeline.add(request, start, True, linger)
        self._complete(slot, self._render_error(request, error))

    def _complete(self, slot: Slot, response: HTTPResponse) -> None:
        """
        C{slot} has its response: write it and any ready ones after it in order.
        """
        if not self._connected:
            return
        pipeline = self._pipeline
        for ready in pipeline.complete(slot, response):
            assert ready.response is not None
            self._send(ready, ready.response)
            if ready.close:
                self._finish(ready.linger)
                return
        if self._paused and len(pipeline) < self._max_pipeline:
            self._update_pause()
        if self._continue_owed and not pipeline:
            self._continue_owed = False
            self._write(_CONTINUE)
            self._receive_start = self._clock.seconds()

    def _send(self, slot: Slot, response: HTTPResponse) -> None:
        """
        Write C{response} to C{slot}'s request with one write, then log it.
        """
        now = self._clock.seconds()
        self._last_activity = now
        request = slot.request
        data, sent = encode_response(
            request, response, slot.close, self._factory.standard_headers(now)
        )
        self._write(data)
        access_log = self._factory.access_log
        if access_log is not None:
            log = response.log
            record = AccessRecord(
                self._factory.iso_time(now),
                self._peer_text,
                request.method,
                request.path.decode("latin-1"),
                request.http_version,
                response.status,
                sent,
                round((now - slot.start) * 1000, 3),
                log.client_id,
                log.user,
                log.message_id,
                log.api,
            )
            try:
                access_log(record)
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
            self._write_blocked or len(self._pipeline) >= self._max_pipeline
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
        if not self._pipeline:
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
