"""
Test support: a real HAProxy in TCP mode (TLS passes through) that speaks the
PROXY protocol to its servers, and a raw TCP client bound to a chosen source
address.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure

from tests.brokers import _BrokerProcess, _dieWithParent, _LogToFile, free_port


@attrs.frozen
class Frontend:
    """
    One HAProxy listener and the servers it balances over.

    @ivar send_proxy: C{"send-proxy-v2"} or C{"send-proxy"} (version 1).
    @ivar servers: C{host:port} of each server.
    @ivar check: whether HAProxy health-checks the servers with the PROXY
        protocol (version 2 checks say C{LOCAL}) and an HTTP request for
        C{/balancer-check}, which the gateway answers 400 (no such path).
    """

    name: str
    send_proxy: str
    servers: Sequence[str]
    check: bool = False


class HAProxy(_BrokerProcess):
    """
    HAProxy in the foreground (C{-db}) with one listener on 127.0.0.1 per
    L{Frontend}; L{ports} maps each frontend's name to its port.
    """

    _name = "haproxy"

    def __init__(self, frontends: Sequence[Frontend], reactor: Any = None) -> None:
        super().__init__(reactor=reactor)
        self.frontends = tuple(frontends)
        self.ports: dict[str, int] = {}
        self.configPath = os.path.join(self.directory, "haproxy.cfg")

    def config(self) -> str:
        """The configuration for the current ports."""
        lines = [
            "global",
            "    log stderr format raw local0 info",
            "defaults",
            "    mode tcp",
            "    log global",
            "    option tcplog",
            "    timeout connect 5s",
            "    timeout client 30s",
            "    timeout server 30s",
            "    timeout check 5s",
        ]
        for frontend in self.frontends:
            name = frontend.name
            lines += [
                f"frontend {name}",
                f"    bind 127.0.0.1:{self.ports[name]}",
                f"    default_backend {name}",
                f"backend {name}",
                "    balance roundrobin",
            ]
            if frontend.check:
                lines += [
                    "    option httpchk GET /balancer-check",
                    "    http-check expect status 400",
                ]
            for index, server in enumerate(frontend.servers):
                check = " check inter 200ms" if frontend.check else ""
                lines.append(
                    f"    server s{index} {server} {frontend.send_proxy}{check}"
                )
        return "\n".join(lines) + "\n"

    def _command(self) -> list[str]:
        # The first frontend's port is the one probed for readiness.
        self.ports = {frontend.name: free_port() for frontend in self.frontends}
        self.port = self.ports[self.frontends[0].name]
        with open(self.configPath, "w", encoding="utf-8") as f:
            f.write(self.config())
        executable = shutil.which("haproxy") or "haproxy"
        return _dieWithParent([executable, "-f", self.configPath, "-db"])

    def _ready(self, protocol: _LogToFile, log: str) -> bool:
        return True

    def _lostBindRace(self, log: str) -> bool:
        return "cannot bind socket" in log


class _Collect(Protocol):
    def __init__(self, send: bytes, done: Callable[[bytes], bool]) -> None:
        self.send = send
        self.done = done
        self.received = b""
        self.answered: Deferred[bytes] = Deferred()
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.send)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.answered.called and self.done(self.received):
            self.answered.callback(self.received)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.answered.called:
            self.answered.callback(self.received)
        self.closed.callback(self.received)


class _Factory(ClientFactory):
    noisy = False

    def __init__(self, protocol: _Collect) -> None:
        self.protocol_ = protocol

    def buildProtocol(self, addr: object) -> _Collect:
        return self.protocol_

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.protocol_.answered.errback(reason)
        self.protocol_.closed.callback(b"")


class RawClient:
    """
    A TCP connection from C{source} (an address of this host) that sends
    C{data} as soon as it is connected.

    @ivar answered: fires with the bytes received once C{done} says they are
        enough, or once the connection closes.
    @ivar closed: fires with every byte received once the connection closes.
    """

    def __init__(
        self,
        reactor: Any,
        source: str,
        port: int,
        data: bytes,
        done: Callable[[bytes], bool] = lambda received: b"\r\n\r\n" in received,
    ) -> None:
        self.protocol = _Collect(data, done)
        self.answered = self.protocol.answered
        self.closed = self.protocol.closed
        factory = _Factory(self.protocol)
        self.connector = reactor.connectTCP(
            "127.0.0.1", port, factory, timeout=5, bindAddress=(source, 0)
        )

    def close(self) -> Deferred[bytes]:
        """Close the connection; fires once it is closed."""
        if self.protocol.transport is not None:
            self.protocol.transport.loseConnection()
        else:
            self.connector.disconnect()
        return self.closed
