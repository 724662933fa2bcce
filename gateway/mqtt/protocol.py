# -*- test-case-name: tests.test_mqtt_protocol -*-
"""
One connection to an MQTT broker: the CONNECT/CONNACK handshake, keep-alive pings and
packet dispatch.

The protocol holds no message state: in-flight QoS 1/2 messages belong to the
publisher, which outlives connections. The protocol only buffers bytes, decodes them
with L{gateway.mqtt.codec} and hands acknowledgements to its L{IPacketListener}.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.mqtt import codec


class ConnectFailed(Exception):
    """
    The broker connection ended before the session was up.

    @ivar reason_code: the CONNACK reason (or 3.1.1 return) code when the broker
        refused, else C{None}.
    @ivar refused_protocol: C{True} when the broker's answer (or its silence, or its
        closing the connection) suggests it does not speak the requested protocol
        level.
    """

    def __init__(
        self,
        message: str,
        reason_code: int | None = None,
        refused_protocol: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.refused_protocol = refused_protocol


# CONNACK codes that mean "not this protocol level": 3.1.1's return code 1 and MQTT 5's
# 0x84 Unsupported Protocol Version.
_UNSUPPORTED_PROTOCOL = {0x01, 0x84}

# Seconds a cleanly closing connection may take before it is cut.
_DISCONNECT_GRACE = 5.0


class IPacketListener(TypingProtocol):
    """What a connected L{MQTTClientProtocol} tells its owner."""

    def packet_received(self, packet: codec.Packet) -> None:
        """An acknowledgement (or DISCONNECT) arrived from the broker."""

    def connection_lost(self, protocol: MQTTClientProtocol, reason: Failure) -> None:
        """The session's connection is gone."""


class MQTTClientProtocol(Protocol):
    """
    A client connection to a broker.

    It sends C{connect} as soon as the connection is made. L{handshake} fires with
    the broker's L{codec.Connack} once the session is up, or fails with
    L{ConnectFailed} when the broker refuses, closes the connection, stays silent for
    C{connack_timeout} seconds or sends something that is not a CONNACK.
    After that, every packet from the broker goes to the listener set with
    L{attach}, and C{connection_lost} tells it when the connection ends.
    """

    _log = Logger()

    def __init__(
        self,
        connect: codec.Connect,
        clock: IReactorTime,
        connack_timeout: float = 5.0,
    ) -> None:
        self.connect = connect
        self.protocol_level = connect.protocol_level
        self.handshake: Deferred[codec.Connack] = Deferred(lambda _: self._close())
        self._clock = clock
        self._connack_timeout = connack_timeout
        self._decoder = codec.Decoder(self.protocol_level)
        self._listener: IPacketListener | None = None
        self._timer: IDelayedCall | None = None
        self._keepalive = connect.keepalive
        self._last_sent = 0.0
        self._last_received = 0.0
        self._ping_outstanding = False
        self._closed = False
        self._lost = False
        self._cut: IDelayedCall | None = None

    # -- the owner's side

    def attach(self, listener: IPacketListener) -> None:
        """
        Deliver every later packet and the connection's end to C{listener}.
        """
        self._listener = listener

    def send(self, packet: codec.Packet) -> None:
        """
        Write C{packet} to the broker (nothing when the connection is closing).
        """
        if self._closed:
            return
        assert self.transport is not None
        self.transport.write(codec.encode(packet, self.protocol_level))
        self._last_sent = self._clock.seconds()

    def disconnect(self) -> None:
        """
        End the session cleanly: DISCONNECT, then close the connection.
        """
        if not self._closed:
            self.send(codec.Disconnect())
            self._close()
            # A broker that stopped reading would keep the connection (and a
            # shutdown waiting for it) open for ever.
            self._cut = self._clock.callLater(_DISCONNECT_GRACE, self._abort_if_open)

    @property
    def closed(self) -> bool:
        """Whether the connection is closing or closed: nothing more is sent."""
        return self._closed

    # -- Twisted's side

    def connectionMade(self) -> None:
        """Send CONNECT and wait for the CONNACK."""
        self._last_received = self._clock.seconds()
        self.send(self.connect)
        self._timer = self._clock.callLater(self._connack_timeout, self._connack_late)

    def dataReceived(self, data: bytes) -> None:
        """Decode what arrived and dispatch each packet."""
        self._last_received = self._clock.seconds()
        try:
            packets = self._decoder.feed(data)
        except codec.MalformedPacket as e:
            self._protocol_error(str(e), e.reason_code)
            return
        for packet in packets:
            if self._closed:
                return
            self._dispatch(packet)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Tell whoever waits that the connection is gone."""
        self._closed = True
        self._lost = True
        if self._cut is not None and self._cut.active():
            self._cut.cancel()
        self._cancel_timer()
        if not self.handshake.called:
            self.handshake.errback(
                ConnectFailed(
                    "the broker closed the connection before CONNACK",
                    refused_protocol=self.protocol_level == codec.MQTT_5,
                )
            )
        elif self._listener is not None:
            self._listener.connection_lost(self, reason)

    # -- internals

    def _abort_if_open(self) -> None:
        self._cut = None
        if not self._lost:
            transport: Any = self.transport
            transport.abortConnection()

    def _dispatch(self, packet: codec.Packet) -> None:
        if not self.handshake.called:
            self._handshake_answer(packet)
        elif isinstance(packet, codec.PingResp):
            self._ping_outstanding = False
        elif isinstance(packet, codec.Connack):
            self._protocol_error("a second CONNACK", 0x82)
        elif self._listener is not None:
            self._listener.packet_received(packet)

    def _handshake_answer(self, packet: codec.Packet) -> None:
        self._cancel_timer()
        if not isinstance(packet, codec.Connack):
            self._fail_handshake(ConnectFailed(f"expected CONNACK, got {packet!r}"))
            return
        if packet.reason_code != 0:
            self._fail_handshake(
                ConnectFailed(
                    f"the broker refused the connection "
                    f"(code 0x{packet.reason_code:02X})",
                    reason_code=packet.reason_code,
                    refused_protocol=packet.reason_code in _UNSUPPORTED_PROTOCOL,
                )
            )
            return
        if packet.properties.server_keep_alive is not None:
            self._keepalive = packet.properties.server_keep_alive
        self._schedule_keepalive()
        self.handshake.callback(packet)

    def _fail_handshake(self, failure: ConnectFailed) -> None:
        # Close first so that connectionLost finds the handshake already failed.
        self.handshake.errback(failure)
        self._close()

    def _connack_late(self) -> None:
        self._timer = None
        self._fail_handshake(
            ConnectFailed(
                f"no CONNACK within {self._connack_timeout:g} s",
                refused_protocol=self.protocol_level == codec.MQTT_5,
            )
        )

    def _protocol_error(self, message: str, reason_code: int) -> None:
        if not self.handshake.called:
            # A 3.1.1 broker answers an MQTT 5 CONNECT with a 3.1.1 CONNACK, which
            # does not parse as MQTT 5.
            self._fail_handshake(
                ConnectFailed(
                    f"unreadable CONNACK: {message}",
                    refused_protocol=self.protocol_level == codec.MQTT_5,
                )
            )
            return
        self._log.warn(
            "Broker sent a malformed packet ({message}); closing", message=message
        )
        if self.protocol_level == codec.MQTT_5:
            self.send(codec.Disconnect(reason_code=reason_code))
        self._close()

    def _schedule_keepalive(self) -> None:
        if self._keepalive > 0 and not self._closed:
            self._timer = self._clock.callLater(self._keepalive / 2, self._check)

    def _check(self) -> None:
        """
        Every half keep-alive interval: ping when nothing was sent for a whole
        interval, and give up on a broker silent for one and a half intervals
        (MQTT lets the broker wait that long before it drops us).
        """
        self._timer = None
        now = self._clock.seconds()
        if (
            self._ping_outstanding
            and now - self._last_received >= 1.5 * self._keepalive
        ):
            self._log.warn("Broker did not answer PINGREQ; closing the connection")
            self._close(abort=True)
            return
        if now - self._last_sent >= self._keepalive / 2 and not self._ping_outstanding:
            self.send(codec.PingReq())
            self._ping_outstanding = True
        self._schedule_keepalive()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _close(self, abort: bool = False) -> None:
        self._cancel_timer()
        if self._closed:
            return
        self._closed = True
        transport: Any = self.transport
        if abort:
            transport.abortConnection()
        else:
            transport.loseConnection()
