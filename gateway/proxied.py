# -*- test-case-name: tests.proxy.test_proxied -*-
"""
Listening behind a load balancer that speaks the PROXY protocol: endpoint strings
C{haproxy:ENDPOINT} (e.g. C{haproxy:tcp:8443}).

L{server_endpoint} parses a listening endpoint string; for a C{haproxy:} one it
listens on C{ENDPOINT} with the factory wrapped by L{proxied_factory}, instead of
Twisted's own C{haproxy:} wrapper. The differences are what the gateway relies on:

  - The wrapped protocol is connected only once the header has arrived whole (in
    however many pieces), so that everything it asks of its transport from
    C{connectionMade} on (the access log's C{peer}, the per-address connection
    limit, failed logins per address) sees the client's address, never the
    balancer's. Under TLS the wrapped factory is the TLS layer: the header comes
    first, then the handshake, so device certificates work end to end.
  - A connection whose first bytes are not a well-formed header, or that sends
    none within the timeout, is closed with one log line and nothing is served
    on it; no error escapes to the reactor, so other connections never notice.
  - A header that names no client (version 2 C{LOCAL}, as HAProxy's health
    checks send, or C{UNKNOWN}) leaves the connection the balancer's own.

L{listening_factory} is the one place that decides, from an endpoint string,
whether a factory is served behind the PROXY protocol.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from gateway.model import peer_of
from gateway.proxyheader import BadHeader, parse_header

__all__ = [
    "PREFIX",
    "ProxiedEndpoint",
    "inner_description",
    "listening_factory",
    "proxied_factory",
    "server_endpoint",
]

#: How an endpoint string served behind the PROXY protocol begins.
PREFIX = "haproxy:"

#: Seconds a connection may take to send its PROXY header when no timeout is given.
HEADER_TIMEOUT = 60.0

_log = Logger()


def inner_description(description: str) -> str | None:
    """
    The endpoint string that C{description} listens on behind the PROXY protocol
    (C{"tcp:8443"} for C{"haproxy:tcp:8443"}), or C{None} when it is not a
    C{haproxy:} one.

    @raise ValueError: for C{haproxy:} twice over.
    """
    if not description.startswith(PREFIX):
        return None
    inner = description[len(PREFIX) :]
    if inner.startswith(PREFIX):
        raise ValueError("the PROXY protocol is named twice")
    return inner


def server_endpoint(
    reactor: Any, description: str, header_timeout: float = HEADER_TIMEOUT
) -> IStreamServerEndpoint:
    """
    The endpoint C{description} names for C{reactor}; for a C{haproxy:} one, a
    L{ProxiedEndpoint} whose connections send their header within
    C{header_timeout} seconds.

    @raise ValueError: (or whatever Twisted's parser raises) for a bad string.
    """
    inner = inner_description(description)
    if inner is None:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
        return endpoint
    return ProxiedEndpoint(
        serverFromString(reactor, inner), description, reactor, header_timeout
    )


def listening_factory(
    description: str,
    factory: IProtocolFactory,
    clock: IReactorTime,
    header_timeout: float = HEADER_TIMEOUT,
) -> IProtocolFactory:
    """
    The factory to serve C{factory} with on a port listening for the endpoint
    string C{description}: L{proxied_factory} for a C{haproxy:} one, else
    C{factory} itself.
    """
    if inner_description(description) is None:
        return factory
    return proxied_factory(factory, clock, header_timeout, description)


def proxied_factory(
    factory: IProtocolFactory,
    clock: IReactorTime,
    header_timeout: float = HEADER_TIMEOUT,
    description: str = "",
) -> IProtocolFactory:
    """
    C{factory} behind the PROXY protocol (see the module's docstring): each
    connection's transport reports the client the header names as its peer.

    @param clock: schedules the header timeout.
    @param header_timeout: seconds a connection may take to send its header.
    @param description: the listening endpoint, for log lines.
    """
    return _ProxiedFactory(factory, clock, header_timeout, description)


@implementer(IStreamServerEndpoint)
class ProxiedEndpoint:
    """
    Listens on an endpoint with each factory wrapped by L{proxied_factory}.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        description: str,
        clock: IReactorTime,
        header_timeout: float = HEADER_TIMEOUT,
    ) -> None:
        """
        @param endpoint: where to listen.
        @param description: the C{haproxy:} endpoint string, for log lines.
        @param clock: schedules the header timeouts.
        @param header_timeout: seconds a connection may take to send its header.
        """
        self.endpoint = endpoint
        self.description = description
        self.clock = clock
        self.header_timeout = header_timeout

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen on the wrapped endpoint with C{protocolFactory} behind the
        PROXY protocol."""
        return self.endpoint.listen(
            proxied_factory(
                protocolFactory, self.clock, self.header_timeout, self.description
            )
        )


class _ProxiedFactory(WrappingFactory["_ProxiedProtocol"]):
    # The listener logs one line of its own.
    noisy = False

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime,
        header_timeout: float,
        description: str,
    ) -> None:
        super().__init__(wrappedFactory)
        self.clock = clock
        self.header_timeout = header_timeout
        self.description = description

    # A wrapped factory may refuse a connection (return None); so may this one.
    def buildProtocol(self, addr: IAddress | None) -> _ProxiedProtocol | None:  # type: ignore[override]
        wrapped = self.wrappedFactory.buildProtocol(addr)
        return None if wrapped is None else _ProxiedProtocol(self, wrapped)


class _ProxiedProtocol(ProtocolWrapper):
    """
    Reads the PROXY header, then connects the wrapped protocol with itself as
    the transport, reporting the header's addresses.
    """

    factory: _ProxiedFactory

    def __init__(self, factory: _ProxiedFactory, wrappedProtocol: IProtocol) -> None:
        super().__init__(factory, wrappedProtocol)
        self._buffer = b""
        self._proxied = False  # the header was read; the wrapped protocol is on
        self._refused = False
        self._source: IPv4Address | IPv6Address | None = None
        self._destination: IPv4Address | IPv6Address | None = None
        self._timer: IDelayedCall | None = None

    def makeConnection(self, transport: ITransport) -> None:
        """Take the connection; the wrapped protocol waits for the header."""
        # What the transport provides, as ProtocolWrapper does; and half-closes
        # reach the wrapped protocol only if it takes them.
        halves = (
            [IHalfCloseableProtocol]
            if IHalfCloseableProtocol.providedBy(self.wrappedProtocol)
            else []
        )
        directlyProvides(self, providedBy(transport), *halves)
        self.connected = 1
        self.transport = transport
        self.factory.registerProtocol(self)
        self._timer = self.factory.clock.callLater(
            self.factory.header_timeout, self._refuse, "no PROXY protocol header"
        )

    def dataReceived(self, data: bytes) -> None:
        """The header first, then everything to the wrapped protocol."""
        if self._proxied:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._refused:
            return
        self._buffer += data
        try:
            header = parse_header(self._buffer)
        except BadHeader as e:
            self._refuse(str(e))
            return
        if header is None:
            return
        rest, self._buffer = self._buffer[header.length :], b""
        self._source, self._destination = header.source, header.destination
        self._cancel_timer()
        self._proxied = True
        self.wrappedProtocol.makeConnection(cast(ITransport, self))
        if rest:
            self.wrappedProtocol.dataReceived(rest)

    def _refuse(self, why: str) -> None:
        assert self.transport is not None
        self._cancel_timer()
        self._refused = True
        self._buffer = b""
        _log.warn(
            "Closed a connection from {peer} on {endpoint}: {why}",
            peer=str(peer_of(self.transport.getPeer())),
            endpoint=self.factory.description or "a PROXY protocol port",
            why=why,
        )
        self.transport.loseConnection()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def readConnectionLost(self) -> None:
        """A half-close before the header ends the connection; after it, the
        wrapped protocol hears of it as it would without the header."""
        if self._proxied:
            IHalfCloseableProtocol(self.wrappedProtocol).readConnectionLost()
        else:
            assert self.transport is not None
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Passed on to the wrapped protocol once it is connected."""
        if self._proxied:
            IHalfCloseableProtocol(self.wrappedProtocol).writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Passed on to the wrapped protocol if it was connected."""
        self._cancel_timer()
        self.connected = 0
        if self._proxied:
            super().connectionLost(reason)
        else:
            self.factory.unregisterProtocol(self)

    def getPeer(self) -> IAddress:
        """The client the header names, or the connection's own peer."""
        assert self.transport is not None
        return self._source or self.transport.getPeer()

    def getHost(self) -> IAddress:
        """The address the client connected to, or the connection's own."""
        assert self.transport is not None
        return self._destination or self.transport.getHost()
