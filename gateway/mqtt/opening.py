# -*- test-case-name: tests.mqtt.test_session -*-
"""
Opening one MQTT connection: dial an endpoint, send CONNECT, and hear when the
broker's CONNACK has accepted the session; and closing one with DISCONNECT, heard
once the connection has ended.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from gateway.mqtt import codec
from gateway.mqtt.protocol import MQTTClientProtocol

__all__ = ["disconnected", "open_connection"]


class _ProtocolFactory(Factory):
    noisy = False

    def __init__(self, build: Callable[[], MQTTClientProtocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> MQTTClientProtocol:
        protocol = self._build()
        protocol.factory = self
        return protocol


def open_connection(
    endpoint: IStreamClientEndpoint,
    connect: codec.Connect,
    clock: IReactorTime,
    connack_timeout: float,
) -> tuple[Deferred[MQTTClientProtocol], list[MQTTClientProtocol]]:
    """
    Open a connection to C{endpoint} and send C{connect}; the Deferred fires
    with the protocol once its CONNACK accepted the session. The list receives
    the protocol as soon as it exists, so that a caller can close it while it
    is pending.
    """
    built: list[MQTTClientProtocol] = []

    def build() -> MQTTClientProtocol:
        protocol = MQTTClientProtocol(connect, clock, connack_timeout)
        built.append(protocol)
        return protocol

    d: Deferred[MQTTClientProtocol] = endpoint.connect(  # type: ignore[assignment]
        _ProtocolFactory(build)
    )

    def handshake(protocol: MQTTClientProtocol) -> Deferred[MQTTClientProtocol]:
        return protocol.handshake.addCallback(lambda _: protocol)

    return d.addCallback(handshake), built


def disconnected(protocol: MQTTClientProtocol) -> Deferred[None]:
    """
    Send DISCONNECT on C{protocol}; fires once its connection has ended.
    """
    closed: Deferred[None] = Deferred()
    protocol.attach(_OnClose(closed))
    protocol.disconnect()
    return closed


class _OnClose:
    """A listener that only waits for the connection to end."""

    def __init__(self, closed: Deferred[None]) -> None:
        self._closed = closed

    def packet_received(self, packet: codec.Packet) -> None:
        """Nothing is expected on a connection being closed."""

    def connection_lost(self, protocol: MQTTClientProtocol, reason: Failure) -> None:
        if not self._closed.called:
            self._closed.callback(None)
