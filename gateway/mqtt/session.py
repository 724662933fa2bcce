# -*- test-case-name: tests.test_mqtt_session -*-
"""
A broker session that survives its connections.

L{BrokerSession} keeps one MQTT session to the first broker of a list that answers,
reconnects with exponential back-off and jitter, falls back from MQTT 5 to 3.1.1 when
asked to, and owns the in-flight window: messages beyond the broker's Receive
Maximum wait in a queue bounded in length, in bytes and in waiting time (a broker
slower than the traffic gets 503s at once rather than a queue that makes every
request wait for the publish timeout), unacknowledged QoS 1/2 messages are sent
again (DUP) after a reconnect, and every caller hears back within the publish
timeout.

Made with C{reconnect=False} it is one sender's session in broker mode: a single
connection (the next broker tried only while none answers), whose refusal or loss
fails every waiting message and ends the session.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Callable, Sequence

import attrs
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from gateway.clock import default_clock
from gateway.errors import (
    Code,
    GatewayError,
    broker_unavailable,
    from_connack_code,
    from_reason_code,
)
from gateway.limits import DrainRate
from gateway.model import Message, PublishResult, new_message_id
from gateway.mqtt import codec
from gateway.mqtt.protocol import ConnectFailed, MQTTClientProtocol

_NOT_KEEPING_UP = "the broker is not keeping up"

# PUBCOMP 0x92 (Packet Identifier not found) after our PUBREL: the broker had the
# message (it sent PUBREC) and has since finished with it.
_PACKET_ID_NOT_FOUND = 0x92


@attrs.frozen
class Broker:
    """
    A broker to connect to.

    @ivar name: how logs name it (its URI).
    @ivar endpoint: how to reach it (TCP, or TLS with the server name verified).
    """

    name: str
    endpoint: IStreamClientEndpoint


@attrs.frozen
class SessionSettings:
    """
    The MQTT side of a session.

    @ivar protocol: C{"5"}, C{"3.1.1"} or C{"auto"} (5, and 3.1.1 for a broker that
        refuses 5, closes the connection or stays silent).
    @ivar session_expiry: seconds the broker keeps the MQTT 5 session after a
        connection loss, so that unacknowledged messages can be resumed; C{0} (sent
        as no Session Expiry Interval) ends it with the connection.
    """

    client_id: str
    username: str | None = None
    password: bytes | None = attrs.field(default=None, repr=False)
    protocol: str = "auto"
    keepalive: int = 60
    session_expiry: int = 300
    connack_timeout: float = 5.0


@attrs.frozen
class BrokerLimits:
    """
    What the broker's CONNACK allows (MQTT 5; 3.1.1 brokers announce nothing).
    """

    receive_maximum: int = 65535
    maximum_packet_size: int | None = None
    maximum_qos: int = 2
    retain_available: bool = True

    @classmethod
    def from_connack(cls, connack: codec.Connack) -> BrokerLimits:
        """The limits a CONNACK announces, defaults for what it leaves out."""
        p = connack.properties
        return cls(
            receive_maximum=p.receive_maximum or 65535,
            maximum_packet_size=p.maximum_packet_size,
            maximum_qos=2 if p.maximum_qos is None else p.maximum_qos,
            retain_available=p.retain_available != 0,
        )


@attrs.define(eq=False)
class _Pending:
    """A message some caller is waiting for (or was, before it gave up)."""

    message: Message
    extra_properties: tuple[tuple[str, str], ...]
    message_id: str
    deferred: Deferred[PublishResult]
    timer: IDelayedCall | None = None
    queued_at: float = 0.0
    packet: codec.Publish | None = None
    released: bool = False  # QoS 2: PUBREC received, PUBREL sent

    @property
    def waiting(self) -> bool:
        return not self.deferred.called

    def succeed(self, reason_code: int = 0) -> None:
        if self.waiting:
            self._stop_timer()
            self.deferred.callback(PublishResult(self.message_id, reason_code))

    def fail(self, error: GatewayError) -> None:
        if self.waiting:
            self._stop_timer()
            self.deferred.errback(error)

    def _stop_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


def publish_packet(
    pending: _Pending, level: int, packet_id: int | None
) -> codec.Publish:
    """
    The PUBLISH packet for a message at a protocol level.

    @raise GatewayError: C{UnsupportedProperty} when the message carries MQTT 5
        properties and the broker speaks 3.1.1.
    """
    message = pending.message
    if level == codec.MQTT_3_1_1:
        if message.has_mqtt5_properties():
            raise GatewayError(
                Code.UnsupportedProperty,
                "the broker speaks MQTT 3.1.1, which cannot carry MQTT 5 properties",
            )
        properties = codec.NO_PROPERTIES
    else:
        properties = codec.Properties(
            payload_format_indicator=message.payload_format_indicator,
            message_expiry_interval=message.message_expiry_interval,
            content_type=message.content_type,
            response_topic=message.response_topic,
            correlation_data=message.correlation_data,
            user_properties=message.user_properties + pending.extra_properties,
        )
    return codec.Publish(
        topic=message.topic,
        payload=message.payload,
        qos=message.qos,
        retain=message.retain,
        packet_id=packet_id,
        properties=properties,
    )


class _ProtocolFactory(Factory):
    noisy = False

    def __init__(self, build: Callable[[], MQTTClientProtocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> MQTTClientProtocol:
        protocol = self._build()
        protocol.factory = self
        return protocol


class BrokerSession(Service):
    """
    One MQTT session, kept up across connection losses while the service runs.

    L{publish} answers every message exactly once: with a L{PublishResult} after the
    broker's PUBACK (QoS 1), PUBCOMP (QoS 2) or the write to a connected session
    (QoS 0); or with a L{GatewayError}: 503 when no broker is reachable, the queue is
    full or no acknowledgement came within C{publish_timeout}, the mapped status for
    a broker reason code, 400/413 for what the broker's limits forbid.

    The queue is full with C{max_queue} messages waiting or in flight, with
    C{max_queue_bytes} of payload queued, or when a new message would wait in it
    longer than C{max_queue_delay} seconds: the queue's length over the rate at
    which it drains while backlogged (L{DrainRate}), or the time the message at
    its head has waited already. The broker (or the way to it) is then slower
    than the traffic, and the message is refused at once (503, C{Retry-After:
    1}) rather than accepted to wait for the publish timeout. A message that
    was taken all the same (before the drain rate was known, or just before the
    broker slowed down) and has waited longer than C{max_queue_delay} when its
    turn comes is refused then (503) rather than sent: no message waits in the
    queue longer than that, so accepted messages are answered within
    C{max_queue_delay} plus the broker's own acknowledgement time under any
    overload.
    """

    _log = Logger()

    def __init__(
        self,
        brokers: Sequence[Broker],
        settings: SessionSettings,
        *,
        publish_timeout: float = 10.0,
        max_queue: int = 10000,
        max_queue_bytes: int = 64 * 1024 * 1024,
        max_queue_delay: float = 2.0,
        max_inflight: int = 1000,
        clock: IReactorTime | None = None,
        retry_policy: Callable[[int], float] | None = None,
        reconnect: bool = True,
        levels: dict[str, int] | None = None,
    ) -> None:
        """
        @param reconnect: C{False} for a session that ends rather than reconnects
            (see L{when_ended}); it logs its routine events at debug level only.
        @param levels: the protocol level to try first per broker name, updated
            when a broker turns out to speak only 3.1.1; pass the same dict to many
            sessions so that they learn it once.
        """
        if not brokers:
            raise ValueError("at least one broker is needed")
        clock = default_clock(clock)
        self.brokers = tuple(brokers)
        self.settings = settings
        self.publish_timeout = publish_timeout
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.max_queue_delay = max_queue_delay
        self.max_inflight = max_inflight
        self._clock = clock
        self._retry_policy = retry_policy or backoffPolicy(
            initialDelay=0.25, maxDelay=30.0, factor=2.0
        )
        self.reconnect = reconnect
        self._levels = {} if levels is None else levels
        for broker in self.brokers:
            self._levels.setdefault(
                broker.name,
                codec.MQTT_3_1_1 if settings.protocol == "3.1.1" else codec.MQTT_5,
            )
        self._attempt_level = codec.MQTT_5
        self._tried = 0
        self._ended = False
        self._end_reason: GatewayError | None = None
        self._end_waiters: list[Deferred[GatewayError | None]] = []
        self._index = 0
        self._failures = 0
        self._ever_connected = False
        self._protocol: MQTTClientProtocol | None = None
        self._limits = BrokerLimits()
        self._connecting: Deferred[None] | None = None
        self._retry: IDelayedCall | None = None
        self._retry_at: float | None = None
        self._queue: deque[_Pending] = deque()
        self._queued_bytes = 0
        self._drain = DrainRate()
        self._inflight: dict[int, _Pending] = {}
        self._next_packet_id = 1
        self._stopped: Deferred[None] | None = None

    # -- what callers see

    @property
    def connected(self) -> bool:
        """C{True} while a broker session is up."""
        return self._protocol is not None and not self._protocol.closed

    @property
    def protocol_level(self) -> int | None:
        """The protocol level of the current session, C{None} when down."""
        return self._protocol.protocol_level if self._protocol else None

    @property
    def current_broker(self) -> str | None:
        """The name of the broker of the current session, C{None} when down."""
        return self.brokers[self._index].name if self._protocol else None

    @property
    def was_connected(self) -> bool:
        """Whether a broker has accepted this session at least once."""
        return self._ever_connected

    @property
    def ended(self) -> bool:
        """Whether the session is over for good (see L{when_ended})."""
        return self._ended

    def when_ended(self) -> Deferred[GatewayError | None]:
        """
        Fires once the session is over for good and will not connect again: with
        C{None} when L{stopService} ended it; with the L{GatewayError} every waiting
        message failed with when a session made with C{reconnect=False} was refused
        (the CONNACK code mapped by L{from_connack_code}), found no broker (503) or
        lost its connection (503).
        """
        if self._ended:
            return succeed(self._end_reason)
        d: Deferred[GatewayError | None] = Deferred()
        self._end_waiters.append(d)
        return d

    @property
    def inflight_count(self) -> int:
        """QoS 1/2 messages sent and not yet acknowledged."""
        return len(self._inflight)

    @property
    def queued_count(self) -> int:
        """Messages waiting for a session or for room in the in-flight window."""
        return len(self._queue)

    def publish(
        self, message: Message, extra_properties: tuple[tuple[str, str], ...] = ()
    ) -> Deferred[PublishResult]:
        """
        Send C{message}, with C{extra_properties} appended to its user properties
        when the session speaks MQTT 5.
        """
        pending = _Pending(message, extra_properties, new_message_id(), Deferred())
        if self._ended:
            pending.fail(broker_unavailable("the broker session has ended"))
        elif self._retry_at is not None and self._protocol is None:
            pending.fail(self._unreachable())
        elif (full := self._full(message)) is not None:
            pending.fail(broker_unavailable(full))
        else:
            pending.timer = self._clock.callLater(
                self.publish_timeout, self._timed_out, pending
            )
            pending.queued_at = self._clock.seconds()
            self._queue.append(pending)
            self._queued_bytes += len(message.payload)
            self._pump()
        return pending.deferred

    def _full(self, message: Message) -> str | None:
        """Why the queue cannot take C{message}, or C{None} when it can."""
        queue = self._queue
        if len(queue) + len(self._inflight) >= self.max_queue:
            return "too many messages are waiting for the broker"
        if not queue:
            return None
        if self._queued_bytes + len(message.payload) > self.max_queue_bytes:
            return "too many bytes are waiting for the broker"
        now = self._clock.seconds()
        wait = self._drain.wait(len(queue), now)
        if wait is None or wait < now - queue[0].queued_at:
            wait = now - queue[0].queued_at
        if wait > self.max_queue_delay:
            if math.isinf(wait):
                return "the broker is not taking messages"
            return f"{_NOT_KEEPING_UP} (messages wait {wait:.1f} s)"
        return None

    # -- service

    def startService(self) -> None:
        """Start connecting to the brokers."""
        super().startService()
        self._attempt()

    def stopService(self) -> Deferred[None]:
        """
        Fail what still waits, DISCONNECT and close; fires once closed.
        """
        super().stopService()
        self._cancel_retry()
        if self._connecting is not None:
            self._connecting.cancel()
        self._fail_waiting(broker_unavailable("the gateway is shutting down"))
        if self._protocol is None:
            self._end(None)
            return succeed(None)
        stopped: Deferred[None] = Deferred()
        self._stopped = stopped
        stopped.addCallback(lambda _: self._end(None))
        self._protocol.disconnect()
        return stopped

    def _end(self, error: GatewayError | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._end_reason = error
        if error is not None:
            self._fail_waiting(error)
        waiters, self._end_waiters = self._end_waiters, []
        for d in waiters:
            d.callback(error)

    def _say(self, level: LogLevel, format: str, **kw: object) -> None:
        # Sessions per sender (reconnect=False) come and go with every HTTP/1.0
        # request; their outcome is in the HTTP answer and the access log.
        if self.reconnect:
            self._log.emit(level, format, client_id=self.settings.client_id, **kw)

    # -- connecting

    def _attempt(self) -> None:
        self._retry = None
        broker = self.brokers[self._index]
        connecting = self._connect(broker, self._levels[broker.name])
        self._connecting = connecting
        connecting.addErrback(self._attempt_failed, broker)

    def _connect(self, broker: Broker, level: int) -> Deferred[None]:
        settings = self.settings
        self._attempt_level = level
        clean = not self._ever_connected
        connect = codec.Connect(
            client_id=settings.client_id,
            protocol_level=level,
            clean_start=clean,
            keepalive=settings.keepalive,
            username=settings.username,
            password=settings.password,
            properties=(
                codec.Properties(session_expiry_interval=settings.session_expiry)
                if level == codec.MQTT_5 and settings.session_expiry
                else codec.NO_PROPERTIES
            ),
        )
        factory = _ProtocolFactory(
            lambda: MQTTClientProtocol(connect, self._clock, settings.connack_timeout)
        )
        d: Deferred[MQTTClientProtocol] = broker.endpoint.connect(factory)  # type: ignore[assignment]

        def handshake(protocol: MQTTClientProtocol) -> Deferred[None]:
            return protocol.handshake.addCallback(
                lambda connack: self._session_up(broker, protocol, connack)
            )

        def fall_back(failure: Failure) -> Deferred[None]:
            error = failure.value
            if (
                isinstance(error, ConnectFailed)
                and error.refused_protocol
                and level == codec.MQTT_5
                and settings.protocol == "auto"
            ):
                self._say(
                    LogLevel.info,
                    "{broker} does not speak MQTT 5 ({why}); trying MQTT 3.1.1",
                    broker=broker.name,
                    why=str(error),
                )
                self._levels[broker.name] = codec.MQTT_3_1_1

                def undo(failure: Failure) -> Failure:
                    # Neither level worked: the broker may just be starting up.
                    # (A 3.1.1 refusal such as bad credentials shows it speaks 3.1.1.)
                    refused = failure.value
                    if not (
                        isinstance(refused, ConnectFailed)
                        and refused.reason_code not in (None, 0x01)
                    ):
                        self._levels[broker.name] = codec.MQTT_5
                    return failure

                return self._connect(broker, codec.MQTT_3_1_1).addErrback(undo)
            failure.raiseException()

        return d.addCallback(handshake).addErrback(fall_back)

    def _session_up(
        self, broker: Broker, protocol: MQTTClientProtocol, connack: codec.Connack
    ) -> None:
        self._connecting = None
        if not self.running:
            protocol.disconnect()
            return
        self._failures = 0
        self._retry_at = None
        self._ever_connected = True
        self._protocol = protocol
        self._limits = (
            BrokerLimits.from_connack(connack)
            if protocol.protocol_level == codec.MQTT_5
            else BrokerLimits()
        )
        protocol.attach(self)
        self._say(
            LogLevel.info,
            "Connected to {broker} (MQTT {version}, session {session})",
            broker=broker.name,
            version="5" if protocol.protocol_level == codec.MQTT_5 else "3.1.1",
            session="resumed" if connack.session_present else "new",
        )
        self._resume(connack.session_present)
        self._pump()

    def _attempt_failed(self, failure: Failure, broker: Broker) -> None:
        self._connecting = None
        if not self.running:
            return
        if not self.reconnect:
            self._give_up_or_next(failure, broker)
            return
        self._failures += 1
        delay = self._retry_policy(self._failures)
        self._log.warn(
            "Cannot connect to {broker}: {why}; next attempt in {delay:.1f} s",
            broker=broker.name,
            why=failure.getErrorMessage(),
            delay=delay,
        )
        self._index = (self._index + 1) % len(self.brokers)
        self._schedule(delay)
        # Nobody is taking messages: say so now rather than at the timeout.
        self._fail_waiting(self._unreachable())

    def _give_up_or_next(self, failure: Failure, broker: Broker) -> None:
        """
        Without reconnecting: a broker that could not be reached (or says it is
        unavailable) passes the session to the next one not yet tried; any other
        refusal, or the last broker's failure, ends the session.
        """
        self._tried += 1
        why = failure.value
        if isinstance(why, ConnectFailed) and why.reason_code is not None:
            error = from_connack_code(why.reason_code, self._attempt_level)
        else:
            error = broker_unavailable("no MQTT broker is reachable")
        self._say(
            LogLevel.warn,
            "Cannot connect to {broker} as {client_id}: {why}",
            broker=broker.name,
            why=failure.getErrorMessage(),
        )
        if error.code is Code.BrokerUnavailable and self._tried < len(self.brokers):
            self._index = (self._index + 1) % len(self.brokers)
            self._attempt()
        else:
            self._end(error)

    def _schedule(self, delay: float) -> None:
        self._retry_at = self._clock.seconds() + delay
        self._retry = self._clock.callLater(delay, self._attempt)

    def _cancel_retry(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _unreachable(self) -> GatewayError:
        wait = 1.0
        if self._retry_at is not None:
            wait = self._retry_at - self._clock.seconds()
        return broker_unavailable(
            "no MQTT broker is reachable", retry_after=max(1, math.ceil(wait))
        )

    # -- IPacketListener

    def connection_lost(self, protocol: MQTTClientProtocol, reason: Failure) -> None:
        """The session's connection ended: reconnect unless stopping."""
        if protocol is not self._protocol:
            return
        self._protocol = None
        if self._stopped is not None:
            stopped, self._stopped = self._stopped, None
            stopped.callback(None)
            return
        if not self.running:
            return
        self._say(
            LogLevel.warn,
            "Lost the connection to {broker}: {why}",
            broker=self.brokers[self._index].name,
            why=reason.getErrorMessage(),
        )
        if not self.reconnect:
            self._end(broker_unavailable("the connection to the broker was lost"))
            return
        # Reconnect soon but not at once, and tell callers to wait meanwhile.
        self._retry_at = None
        self._retry = self._clock.callLater(self._retry_policy(0), self._attempt)

    def packet_received(self, packet: codec.Packet) -> None:
        """An acknowledgement arrived: answer its caller, fill the window."""
        if isinstance(packet, codec.PubAck):
            self._finish(packet.packet_id, packet.reason_code)
        elif isinstance(packet, codec.PubRec):
            self._received(packet)
        elif isinstance(packet, codec.PubComp):
            code = packet.reason_code
            self._finish(packet.packet_id, 0 if code == _PACKET_ID_NOT_FOUND else code)
        elif isinstance(packet, codec.Disconnect):
            self._say(
                LogLevel.warn,
                "The broker disconnected us (reason 0x{code:02X} {why})",
                code=packet.reason_code,
                why=packet.properties.reason_string or "",
            )
        else:
            self._log.debug("Ignoring {packet!r}", packet=packet)

    def _finish(self, packet_id: int, reason_code: int) -> None:
        pending = self._inflight.pop(packet_id, None)
        if pending is None:
            return
        if reason_code >= 0x80:
            pending.fail(from_reason_code(reason_code))
        else:
            pending.succeed(reason_code)
        self._pump()

    def _received(self, packet: codec.PubRec) -> None:
        pending = self._inflight.get(packet.packet_id)
        if pending is None:
            return
        if packet.reason_code >= 0x80:
            self._finish(packet.packet_id, packet.reason_code)
            return
        pending.released = True
        self._send(codec.PubRel(packet.packet_id))

    # -- the window

    def _pump(self) -> None:
        """Send queued messages while there is a session and room in the window."""
        self._send_queued()
        self._drain.waiting(bool(self._queue), self._clock.seconds())

    def _send_queued(self) -> None:
        protocol = self._protocol
        # A closing connection writes nothing: QoS 0 messages must wait too.
        if protocol is None or protocol.closed:
            return
        window = min(self._limits.receive_maximum, self.max_inflight)
        queue = self._queue
        stale = self._clock.seconds() - self.max_queue_delay
        while queue and protocol is self._protocol:
            pending = queue[0]
            qos = pending.message.qos
            if qos and len(self._inflight) >= window:
                return
            queue.popleft()
            self._queued_bytes -= len(pending.message.payload)
            if not pending.waiting:
                continue
            if pending.queued_at < stale:
                # Admitted before the slowness showed: it would be answered far
                # later than the bound promises. Not sent yet, so safe to refuse.
                pending.fail(broker_unavailable(_NOT_KEEPING_UP))
                continue
            self._drain.departed()
            try:
                self._check_limits(pending.message)
                packet = publish_packet(
                    pending,
                    protocol.protocol_level,
                    self._allocate_packet_id() if qos else None,
                )
                self._check_size(packet, protocol.protocol_level)
            except GatewayError as e:
                pending.fail(e)
                continue
            pending.packet = packet
            if qos:
                assert packet.packet_id is not None
                self._inflight[packet.packet_id] = pending
                self._send(packet)
            else:
                self._send(packet)
                pending.succeed()

    def _check_limits(self, message: Message) -> None:
        limits = self._limits
        if message.qos > limits.maximum_qos:
            raise GatewayError(
                Code.InvalidQoS,
                f"the broker accepts QoS {limits.maximum_qos} at most",
                parameter="qos",
            )
        if message.retain and not limits.retain_available:
            raise GatewayError(
                Code.InvalidRetained,
                "the broker does not support retained messages",
                parameter="retained",
            )

    def _check_size(self, packet: codec.Publish, level: int) -> None:
        limit = self._limits.maximum_packet_size
        if limit is not None and len(codec.encode(packet, level)) > limit:
            raise GatewayError(
                Code.PayloadTooLarge,
                f"the message is larger than the broker's limit of {limit} bytes",
            )

    def _allocate_packet_id(self) -> int:
        packet_id = self._next_packet_id
        while packet_id in self._inflight:
            packet_id = packet_id % 65535 + 1
        self._next_packet_id = packet_id % 65535 + 1
        return packet_id

    def _send(self, packet: codec.Packet) -> None:
        if self._protocol is not None:
            self._protocol.send(packet)

    def _resume(self, session_present: bool) -> None:
        """
        After a reconnect: send unacknowledged messages again, DUP when the broker
        kept the session, as new messages when it did not.
        """
        level = self._protocol.protocol_level if self._protocol else None
        for packet_id, pending in list(self._inflight.items()):
            assert pending.packet is not None
            if level is not None and not pending.released:
                try:
                    # The session may now speak another protocol level.
                    pending.packet = attrs.evolve(
                        publish_packet(pending, level, packet_id),
                        dup=pending.packet.dup,
                    )
                except GatewayError as e:
                    del self._inflight[packet_id]
                    pending.fail(e)
                    continue
            if pending.released:
                if session_present:
                    self._send(codec.PubRel(packet_id))
                else:
                    # The broker took the message when it sent PUBREC.
                    del self._inflight[packet_id]
                    pending.succeed()
            elif session_present:
                self._send(attrs.evolve(pending.packet, dup=True))
            elif pending.waiting:
                self._send(pending.packet)
            else:
                del self._inflight[packet_id]

    def _timed_out(self, pending: _Pending) -> None:
        pending.timer = None
        # In flight, it keeps its packet id until the broker answers.
        with contextlib.suppress(ValueError):
            self._queue.remove(pending)
            self._queued_bytes -= len(pending.message.payload)
        pending.fail(
            broker_unavailable(
                f"the broker did not acknowledge within {self.publish_timeout:g} s"
            )
        )

    def _fail_waiting(self, error: GatewayError) -> None:
        queue, self._queue = self._queue, deque()
        self._queued_bytes = 0
        self._drain.waiting(False, self._clock.seconds())
        for pending in queue:
            pending.fail(error)
        for pending in self._inflight.values():
            pending.fail(error)
