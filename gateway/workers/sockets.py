# -*- test-case-name: tests.workers.test_sockets -*-
"""
The listening sockets shared by the workers: the parent binds each listener
once (L{BoundSockets}), every worker adopts them all (L{AdoptedEndpoint}) and
the kernel hands each new connection to one of the workers that accept.

The parent binds through the same endpoint strings a single process listens
on (C{tcp:}, C{systemd:}, C{unix:}, C{haproxy:tcp:} ...) and then stops
reading from the port, so that it never accepts a connection itself. For a
C{haproxy:} endpoint the socket is the inner one; the worker serves its
factory behind the PROXY protocol as a single process does
(L{gateway.proxied.listening_factory}; outside TLS: the header comes before
the handshake).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.listeners import Endpoint, Endpoints
from gateway.proxied import listening_factory
from gateway.startup import StartupError

__all__ = [
    "AdoptedEndpoint",
    "BoundSockets",
    "Inherited",
    "SharedPort",
    "adopted_endpoints",
]

#: The worker's file descriptor of the first inherited listening socket.
FIRST_FD = 4


@attrs.frozen
class Inherited:
    """
    One listening socket as a worker inherits it.

    @ivar kind: C{"http"} or C{"tls"}: which listeners of the configuration.
    @ivar description: its endpoint string, for the logs.
    @ivar fd: its file descriptor in the worker.
    @ivar family: its address family (C{AF_INET}, C{AF_INET6}, C{AF_UNIX}).
    """

    kind: str
    description: str
    fd: int
    family: int

    def as_json(self) -> dict[str, Any]:
        """A JSON-able form (see L{from_json})."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Inherited:
        """The value L{as_json} gave."""
        return cls(**value)


class _NotServed(Protocol):
    def connectionMade(self) -> None:  # pragma: no cover - the parent never accepts
        self.transport.abortConnection()  # type: ignore[union-attr]


def _family(port: IListeningPort) -> int:
    host = port.getHost()
    if isinstance(host, IPv6Address):
        return socket.AF_INET6
    if isinstance(host, IPv4Address):
        return socket.AF_INET
    return socket.AF_UNIX


class BoundSockets(Service):
    """
    Binds every HTTP and HTTPS listener of C{endpoints} at privileged start-up
    (a port that cannot be bound stops start-up with one line) without ever
    accepting on them, and closes them when stopped.

    @ivar inherited: what each worker inherits, once bound; the worker's file
        descriptors count up from 4.
    """

    def __init__(self, endpoints: Endpoints) -> None:
        self._listeners = [("http", e) for e in endpoints.http] + [
            ("tls", e) for e in endpoints.tls
        ]
        self._ports: list[IListeningPort] = []
        self.inherited: list[Inherited] = []

    def privilegedStartService(self) -> None:
        """Bind each listener now."""
        super().privilegedStartService()
        for kind, (description, endpoint) in self._listeners:
            port = _listen_now(description, endpoint)
            port.stopReading()  # type: ignore[attr-defined]
            self._ports.append(port)
            self.inherited.append(
                Inherited(
                    kind,
                    description,
                    FIRST_FD + len(self.inherited),
                    _family(port),
                )
            )

    def child_fds(self) -> dict[int, int]:
        """The worker's file descriptors mapped to the parent's."""
        return {
            inherited.fd: port.fileno()  # type: ignore[attr-defined]
            for inherited, port in zip(self.inherited, self._ports, strict=True)
        }

    def stopService(self) -> Deferred[None]:
        """Close every socket."""
        super().stopService()
        ports, self._ports = self._ports, []
        self.inherited = []
        closing = [port.stopListening() for port in ports]
        return Deferred.fromCoroutine(_all(closing))


async def _all(deferreds: list[Any]) -> None:
    for d in deferreds:
        if isinstance(d, Deferred):
            await d


def _listen_now(description: str, endpoint: IStreamServerEndpoint) -> IListeningPort:
    results: list[IListeningPort | Failure] = []
    factory = Factory.forProtocol(_NotServed)
    factory.noisy = False
    endpoint.listen(factory).addBoth(results.append)
    if not results:
        raise StartupError(f"cannot listen on {description}: it did not bind at once")
    result = results[0]
    if isinstance(result, Failure):
        raise StartupError(f"cannot listen on {description}: {result.value}")
    return result


class SharedPort(tcp.Port):
    """
    A TCP port whose socket the other workers accept on too. It takes one
    connection per wake-up, so that a burst of connections (a client opening
    its pool) is shared out among the workers the kernel wakes, instead of
    being taken whole by the first one: Twisted's port accepts up to 100 at
    once.
    """

    def doRead(self) -> None:
        """Accept one waiting connection."""
        self.numberAccepts = 1
        super().doRead()


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """
    A server endpoint whose C{listen} adopts a listening socket this process
    inherited (and closes the inherited descriptor: the port holds a copy);
    a TCP one as a L{SharedPort}.
    """

    def __init__(
        self, reactor: Any, inherited: Inherited, header_timeout: float
    ) -> None:
        """
        @param header_timeout: seconds a connection to a C{haproxy:} endpoint
            may take to send its PROXY header.
        """
        self._reactor = reactor
        self.inherited = inherited
        self.header_timeout = header_timeout

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Serve C{protocolFactory} on the inherited socket."""
        factory = listening_factory(
            self.inherited.description,
            protocolFactory,
            self._reactor,
            self.header_timeout,
        )
        fd, family = self.inherited.fd, self.inherited.family
        if family in (socket.AF_INET, socket.AF_INET6):
            # As reactor.adoptStreamPort does, with the port class of our own.
            port = SharedPort._fromListeningDescriptor(
                self._reactor, fd, family, factory
            )
            port.startListening()
        else:
            port = self._reactor.adoptStreamPort(fd, family, factory)
        os.close(fd)
        return succeed(port)


def adopted_endpoints(
    reactor: Any, inherited: list[Inherited], header_timeout: float
) -> Endpoints:
    """
    The listeners of a worker: each inherited socket as an endpoint (see
    L{AdoptedEndpoint} for C{header_timeout}).
    """

    def of(kind: str) -> tuple[Endpoint, ...]:
        return tuple(
            (i.description, AdoptedEndpoint(reactor, i, header_timeout))
            for i in inherited
            if i.kind == kind
        )

    return Endpoints(http=of("http"), tls=of("tls"), admin=None)
