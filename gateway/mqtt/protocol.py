# -*- test-case-name: tests.mqtt.test_session,tests.mqtt.test_outcomes -*-
"""
One connection to an MQTT broker: the CONNECT/CONNACK handshake, keep-alive pings and
packet dispatch.

The protocol holds no message state: in-flight QoS 1/2 messages belong to the
publisher, which outlives connections. The protocol only buffers bytes, decodes them
with L{gateway.mqtt.codec} and hands acknowledgements to its L{IPacketListener}.
"""

from __future__ import annotations

from collections import deque
from typing import Any
from typing import Protocol as TypingProtocol

from OpenSSL import SSL
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
    @ivar refused_protocol: C{True} when the broker's answer (or its closing the
        connection) suggests it does not speak the requested protocol level.
    @ivar definitive: C{True} when the broker said so in its answer (a CONNACK
        refusing the protocol version, or a CONNACK of the other level), rather
        than by closing the connection, which may be transient.
    @ivar silent: C{True} when no CONNACK came within the timeout.
    @ivar protocol_level: the level of the CONNECT that failed.
    """

    def __init__(
        self,
        message: str,
        reason_code: int | None = None,
        refused_protocol: bool = False,
        *,
        definitive: bool = False,
        silent: bool = False,
        protocol_level: int = codec.MQTT_5,
    ) -> None:
        super().__init__(message)
        self.protocol_level = protocol_level
        self.reason_code = reason_code
        self.refused_protocol = refused_protocol
        self.definitive = definitive
        self.silent = silent


# CONNACK codes that mean "not this protocol level": 3.1.1's return code 1 and MQTT 5's
# 0x84 Unsupported Protocol Version.
_UNSUPPORTED_PROTOCOL = {0x01, 0x84}

# Seconds a cleanly closing connection may take before it is cut.
_DISCONNECT_GRACE = 5.0


def _closed_before_connack(reason: Failure, level: int) -> ConnectFailed:
    """
    Why a connection ended before its CONNACK: a TLS failure (a certificate the
    CA does not vouch for, a wrong server name) is said as such, and is no sign
    of the broker's protocol level; a plain close is.
    """
    if reason.check(SSL.Error):
        return ConnectFailed(f"TLS failed: {_tls_reason(reason.value)}")
    return ConnectFailed(
        "the broker closed the connection before CONNACK",
        refused_protocol=level == codec.MQTT_5,
    )


def _tls_reason(error: BaseException | None) -> str:
    # pyOpenSSL errors carry [(library, function, reason), ...].
    details = error.args[0] if error is not None and error.args else None
    if isinstance(details, list) and details and isinstance(details[0], tuple):
        return "; ".join(str(entry[-1]) for entry in details)
    return str(error) or type(error).__name__


def _unreadable_connack(message: str, data: bytes, level: int) -> ConnectFailed:
    """
    The broker's first answer did not parse. A 3.1.1 broker answers an MQTT 5
    CONNECT with a 3.1.1 CONNACK (C{20 02 flags code}), which does not parse as
    MQTT 5: said as what it is.
    """
    if level == codec.MQTT_5 and len(data) >= 4 and data[:2] == b"\x20\x02":
        code = data[3]
        return ConnectFailed(
            f"the broker answered in MQTT 3.1.1 (CONNACK return code {code}): "
            "it does not speak MQTT 5",
            refused_protocol=True,
            definitive=True,
        )
    return ConnectFailed(
        f"unreadable CONNACK: {message}", refused_protocol=level == codec.MQTT_5
    )


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
        #: The broker's CONNACK, once the session is up.
        self.connack = codec.Connack()
        self._clock = clock
        self._connack_timeout = connack_timeout
        self._decoder = codec.Decoder(self.protocol_level)
        self._listener: IPacketListener | None = None
        self._timer: IDelayedCall | None = None
        self._keepalive = connect.keepalive
        self._last_sent = 0.0
        self._last_received = 0.0
        # One entry per PINGREQ not yet answered, in order: a barrier's waiter,
        # or None for a keep-alive ping.
        self._pings: deque[Deferred[None] | None] = deque()
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
        self.write(codec.encode(packet, self.protocol_level))

    def write(self, data: bytes) -> None:
        """
        Write packets already encoded at this connection's level (nothing when
        the connection is closing).
        """
        if self._closed:
            return
        assert self.transport is not None
        self.transport.write(data)
        self._last_sent = self._clock.seconds()

    def barrier(self) -> Deferred[None]:
        """
        Send a PINGREQ; fires when its PINGRESP arrives, which proves that the
        broker read every packet written before it without closing the
        connection (a broker handles a connection's packets in order). Never
        fires when the connection ends first.
        """
        waiter: Deferred[None] = Deferred()
        if not self._closed:
            self.send(codec.PingReq())
            self._pings.append(waiter)
        return waiter

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

    def abort(self) -> None:
        """Cut the connection at once, without DISCONNECT."""
        self._close(abort=True)

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
            self._protocol_error(str(e), e.reason_code, data)
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
            self.handshake.errback(_closed_before_connack(reason, self.protocol_level))
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
            if self._pings:
                waiter = self._pings.popleft()
                if waiter is not None:
                    waiter.callback(None)
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
                    definitive=packet.reason_code in _UNSUPPORTED_PROTOCOL,
                    protocol_level=self.protocol_level,
                )
            )
            return
        if packet.properties.server_keep_alive is not None:
            self._keepalive = packet.properties.server_keep_alive
        self._schedule_keepalive()
        self.connack = packet
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
                silent=True,
            )
        )

    def _protocol_error(
        self, message: str, reason_code: int, data: bytes = b""
    ) -> None:
        if not self.handshake.called:
            self._fail_handshake(
                _unreadable_connack(message, data, self.protocol_level)
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
        if self._pings and now - self._last_received >= 1.5 * self._keepalive:
            self._log.warn("Broker did not answer PINGREQ; closing the connection")
            self._close(abort=True)
            return
        if now - self._last_sent >= self._keepalive / 2 and not self._pings:
            self.send(codec.PingReq())
            self._pings.append(None)
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
