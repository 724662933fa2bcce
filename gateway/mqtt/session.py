# -*- test-case-name: tests.test_mqtt_session -*-
"""
A broker session that survives its connections.

L{BrokerSession} keeps one MQTT session to the first broker of a list that answers
(L{gateway.mqtt.connector} makes each connection), reconnects with exponential
back-off and jitter, and owns the in-flight window: messages beyond the broker's
Receive Maximum wait in a queue bounded in length, in bytes and in waiting time (a
broker slower than the traffic gets 503s at once rather than a queue that makes
every request wait for the publish timeout), and every caller hears back within
the publish timeout.

What a 200 promises holds across connection losses:

 - Unacknowledged QoS 1/2 messages are sent again after a reconnect, DUP when
   the broker kept the session. When the broker lost the session, a QoS 1
   message goes out again as new, but a QoS 2 message fails (503): the broker
   may or may not have delivered it, and only a kept session can tell.
 - A QoS 0 message is answered once the broker has read it: a PINGREQ follows it
   and the PINGRESP proves that the broker read everything before it.
 - No packet can wedge the session. After a connection loss, the messages that
   were on the wire unconfirmed are suspects: they are sent again in smaller and
   smaller groups (half as many at each further loss), nothing new meanwhile. A
   message on the wire alone at a loss it has been part of twice (a QoS 0 one:
   once, as it is never sent again) is the packet the broker closes the
   connection on: it fails (the broker's DISCONNECT reason when it gave one; 413
   when it is larger than anything the broker ever took, and larger ones are
   then refused at once; else 502) and is never sent again.
 - A broker that answers a QoS 2 PUBLISH with PUBACK (QoS 1 only) is not taken
   to have delivered exactly once: that message gets 400 C{InvalidQoS}, and
   later QoS 2 messages are refused as by an MQTT 5 Maximum QoS of 1.

Made with C{reconnect=False} it is one sender's session in broker mode: a single
connection (the next broker tried only while none answers), whose refusal or loss
fails every waiting message and ends the session.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
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
from gateway.mqtt.connector import Broker, SessionSettings, connect
from gateway.mqtt.protocol import ConnectFailed, MQTTClientProtocol
from gateway.status import PublisherStatus, StatusObserver, StatusObservers

__all__ = ["Broker", "BrokerLimits", "BrokerSession", "SessionSettings"]

_NOT_KEEPING_UP = "the broker is not keeping up"

# PUBCOMP 0x92 (Packet Identifier not found) after our PUBREL: the broker had the
# message (it sent PUBREC) and has since finished with it.
_PACKET_ID_NOT_FOUND = 0x92


@attrs.frozen
class BrokerLimits:
    """
    What the broker allows: what its MQTT 5 CONNACK announces (3.1.1 brokers
    announce nothing), narrowed by what the session has seen it do.
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

    def narrowed(self, learned: _Learned) -> BrokerLimits:
        """These limits, with what the broker showed by its behaviour."""
        size = self.maximum_packet_size
        if learned.packet_size is not None:
            size = (
                learned.packet_size if size is None else min(size, learned.packet_size)
            )
        return attrs.evolve(
            self,
            maximum_packet_size=size,
            maximum_qos=min(self.maximum_qos, learned.qos),
        )


@attrs.define
class _Learned:
    """What one broker showed of itself, kept across connections."""

    qos: int = 2  # the highest QoS it honours (RabbitMQ: 1)
    packet_size: int | None = None  # it closed the connection on a larger packet
    largest_taken: int = 0  # the largest packet it confirmed
    # Sizes of the packets it closed the connection on that were larger than any
    # it took: two of them make a packet size limit (one may have failed for its
    # content, a topic too deep for it, say).
    too_large: list[int] = attrs.Factory(list)


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
    data: bytes = b""  # the packet, encoded at the connection's level
    released: bool = False  # QoS 2: PUBREC received, PUBREL sent
    on_wire: bool = False  # sent on the current connection, not yet confirmed
    strikes: int = 0  # connection losses it was on the wire unconfirmed for
    first_sent: float | None = None

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


def reconnect_delay(attempt: int) -> float:
    """
    Seconds to wait before connection attempt C{attempt + 1}: 0.1 s doubling up
    to 30 s, each spread by half either way so that gateways that lost the same
    broker do not come back all at once. The first attempt after a loss comes
    within 0.15 s: a connection the broker closed on one message is back before
    the next request notices.
    """
    return min(0.1 * 2.0**attempt, 30.0) * (0.5 + random.random())


def _encode(packet: codec.Publish, level: int) -> bytes:
    """
    The packet's bytes.

    @raise GatewayError: 400 C{InvalidParameter} for what no broker would take
        (a string a strict broker disconnects on, a field too long).
    """
    try:
        return codec.encode(packet, level)
    except ValueError as e:
        raise GatewayError(
            Code.InvalidParameter, f"the message cannot be sent over MQTT: {e}"
        ) from None


class BrokerSession(Service):
    """
    One MQTT session, kept up across connection losses while the service runs.

    L{publish} answers every message exactly once: with a L{PublishResult} after the
    broker's PUBACK (QoS 1), PUBCOMP (QoS 2) or its having read the PUBLISH
    (QoS 0); or with a L{GatewayError}: 503 when no broker is reachable, the queue
    is full, no acknowledgement came within C{publish_timeout} or the broker lost
    the session of a QoS 2 message, the mapped status for a broker reason code,
    400/413 for what the broker's limits forbid, 400/413/502 for a message the
    broker closes the connection on.

    The queue is full with C{max_queue} messages waiting or in flight, with
    C{max_queue_bytes} of payload queued, or when a new message would wait in it
    longer than C{max_queue_delay} seconds: the queue's length over the rate at
    which it drains while backlogged (L{DrainRate}), or the time the message at
    its head has waited already. The broker (or the way to it) is then slower
    than the traffic, and the message is refused at once (503, C{Retry-After:
    1}) rather than accepted to wait for the publish timeout. A message that
    was taken all the same and has waited longer than C{max_queue_delay} when its
    turn comes is refused then (503) rather than sent.
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
        @param levels: the protocol level known per broker name, updated when a
            broker turns out to speak only 3.1.1; pass the same dict to many
            sessions so that they learn it once.
        """
        if not brokers:
            raise ValueError("at least one broker is needed")
        self.brokers = tuple(brokers)
        self.settings = (
            settings if reconnect else attrs.evolve(settings, resumable=False)
        )
        self.publish_timeout = publish_timeout
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.max_queue_delay = max_queue_delay
        self.max_inflight = max_inflight
        self._clock = default_clock(clock)
        self._retry_policy = retry_policy or reconnect_delay
        self.reconnect = reconnect
        self._levels = {} if levels is None else levels
        self._learned = {broker.name: _Learned() for broker in self.brokers}
        self._tried = 0
        self._ended = False
        self._end_reason: GatewayError | None = None
        self._end_waiters: list[Deferred[GatewayError | None]] = []
        self._index = 0
        self._failures = 0
        self._ever_connected = False
        self._protocol: MQTTClientProtocol | None = None
        self._limits = BrokerLimits()
        self._connecting: Deferred[MQTTClientProtocol] | None = None
        self._retry: IDelayedCall | None = None
        self._retry_at: float | None = None
        self._queue: deque[_Pending] = deque()
        self._queued_bytes = 0
        self._drain = DrainRate()
        self._inflight: dict[int, _Pending] = {}
        self._unconfirmed: list[_Pending] = []  # QoS 0 sent, not yet read
        self._covered = 0  # how many of them the PINGREQ in flight confirms
        self._careful: int | None = None  # suspects on the wire at once, or None
        self._wire = 0  # messages on the wire, not yet confirmed
        self._progress_at = 0.0  # when the broker last confirmed one (or the
        # wire filled)
        self._watchdog: IDelayedCall | None = None
        self._disconnect_reason: int | None = None
        self._next_packet_id = 1
        self._stopped: Deferred[None] | None = None
        self._observers = StatusObservers()
        self._reconnects = 0

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

    def status(self) -> PublisherStatus:
        """The state of the session now."""
        return PublisherStatus(
            connected=self.connected,
            broker=self.current_broker,
            protocol_level=self.protocol_level,
            reconnects=self._reconnects,
            inflight=len(self._inflight),
            queued=len(self._queue),
        )

    def observe(self, observer: StatusObserver) -> Callable[[], None]:
        """Call C{observer} with the new status when the session goes up or
        down; returns the way to stop."""
        return self._observers.observe(observer)

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
        self._stop_watchdog()
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
        connecting = connect(
            broker,
            self.settings,
            self._clock,
            levels=self._levels,
            fresh=not self._ever_connected,
            say=self._say,
        )
        self._connecting = connecting
        connecting.addCallbacks(
            self._session_up,
            self._attempt_failed,
            callbackArgs=(broker,),
            errbackArgs=(broker,),
        )

    def _session_up(self, protocol: MQTTClientProtocol, broker: Broker) -> None:
        self._connecting = None
        if not self.running:
            protocol.disconnect()
            return
        connack = protocol.connack
        resumed = connack.session_present and self._ever_connected
        if self._ever_connected:
            self._reconnects += 1
        self._failures = 0
        self._retry_at = None
        self._ever_connected = True
        self._protocol = protocol
        self._disconnect_reason = None
        announced = (
            BrokerLimits.from_connack(connack)
            if protocol.protocol_level == codec.MQTT_5
            else BrokerLimits()
        )
        self._limits = announced.narrowed(self._learned[broker.name])
        protocol.attach(self)
        self._say(
            LogLevel.info,
            "Connected to {broker} (MQTT {version}, session {session})",
            broker=broker.name,
            version="5" if protocol.protocol_level == codec.MQTT_5 else "3.1.1",
            session="resumed" if resumed else "new",
        )
        self._resume(resumed)
        self._pump()
        self._observers.notify(self.status())

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
            error = from_connack_code(why.reason_code, why.protocol_level)
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
        """The session's connection ended: find a culprit, reconnect unless
        stopping."""
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._stop_watchdog()
        self._observers.notify(self.status())
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
        self._suspect_what_was_on_the_wire()
        if not self.reconnect:
            self._end(broker_unavailable("the connection to the broker was lost"))
            return
        # Reconnect soon but not at once, and tell callers to wait meanwhile.
        self._retry_at = None
        self._retry = self._clock.callLater(self._retry_policy(0), self._attempt)

    def packet_received(self, packet: codec.Packet) -> None:
        """An acknowledgement arrived: answer its caller, fill the window."""
        if isinstance(packet, codec.PubAck):
            self._acknowledged(packet)
        elif isinstance(packet, codec.PubRec):
            self._received(packet)
        elif isinstance(packet, codec.PubComp):
            code = packet.reason_code
            self._finish(packet.packet_id, 0 if code == _PACKET_ID_NOT_FOUND else code)
        elif isinstance(packet, codec.Disconnect):
            self._disconnect_reason = packet.reason_code
            self._say(
                LogLevel.warn,
                "The broker disconnected us (reason 0x{code:02X} {why})",
                code=packet.reason_code,
                why=packet.properties.reason_string or "",
            )
        else:
            self._log.debug("Ignoring {packet!r}", packet=packet)

    def _acknowledged(self, packet: codec.PubAck) -> None:
        pending = self._inflight.get(packet.packet_id)
        if pending is not None and pending.message.qos == 2:
            self._qos_downgraded(pending)
            return
        self._finish(packet.packet_id, packet.reason_code)

    def _qos_downgraded(self, pending: _Pending) -> None:
        """The broker answered a QoS 2 PUBLISH with PUBACK: it honours QoS 1
        at most. The message was taken, but not with the promise asked for."""
        broker = self.brokers[self._index].name
        learned = self._learned[broker]
        if learned.qos > 1:
            learned.qos = 1
            self._limits = self._limits.narrowed(learned)
            self._say(
                LogLevel.warn,
                "{broker} answered a QoS 2 message with PUBACK: it offers QoS 1 at"
                " most; QoS 2 requests are refused from now on",
                broker=broker,
            )
        assert pending.packet is not None and pending.packet.packet_id is not None
        del self._inflight[pending.packet.packet_id]
        self._confirmed(pending)
        pending.fail(
            GatewayError(
                Code.InvalidQoS,
                "the broker took this message at QoS 1 only (it answered PUBACK):"
                " it offers QoS 1 at most, so exactly-once delivery cannot be"
                " promised",
                parameter="qos",
            )
        )
        self._pump()

    def _finish(self, packet_id: int, reason_code: int) -> None:
        pending = self._inflight.pop(packet_id, None)
        if pending is None:
            return
        self._confirmed(pending)
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
        self._confirmed(pending)
        pending.released = True
        self._send(codec.PubRel(packet.packet_id))
        self._pump()

    def _confirmed(self, pending: _Pending) -> None:
        """The broker read C{pending}'s PUBLISH without closing the connection."""
        if pending.on_wire:
            pending.on_wire = False
            self._wire -= 1
        self._progress_at = self._clock.seconds()
        pending.strikes = 0
        learned = self._learned[self.brokers[self._index].name]
        learned.largest_taken = max(learned.largest_taken, len(pending.data))

    # -- the window

    def _pump(self) -> None:
        """Send what may go now: suspects first, then the queue."""
        if self._careful is not None:
            self._send_suspects()
        if self._careful is None:
            self._send_queued()
        self._drain.waiting(bool(self._queue), self._clock.seconds())

    def _send_queued(self) -> None:
        protocol = self._protocol
        # A closing connection writes nothing: QoS 0 messages must wait too.
        if protocol is None or protocol.closed:
            return
        level = protocol.protocol_level
        window = min(self._limits.receive_maximum, self.max_inflight)
        queue = self._queue
        stale = self._clock.seconds() - self.max_queue_delay
        unconfirmed: list[_Pending] = []
        while queue and protocol is self._protocol:
            pending = queue[0]
            qos = pending.message.qos
            if qos and len(self._inflight) >= window:
                break
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
                    pending, level, self._allocate_packet_id() if qos else None
                )
                data = _encode(packet, level)
                self._check_size(data)
            except GatewayError as e:
                pending.fail(e)
                continue
            pending.packet, pending.data = packet, data
            self._put_on_wire(pending)
            if qos:
                assert packet.packet_id is not None
                self._inflight[packet.packet_id] = pending
            else:
                unconfirmed.append(pending)
            protocol.write(data)
        if unconfirmed:
            self._unconfirmed += unconfirmed
            self._confirm_qos0()

    def _confirm_qos0(self) -> None:
        """
        Follow unconfirmed QoS 0 messages with a PINGREQ; its PINGRESP confirms
        them. One PINGREQ at a time: messages sent meanwhile wait for the next,
        so QoS 0 costs one ping per round trip, not one per message.
        """
        protocol = self._protocol
        if self._covered or not self._unconfirmed or protocol is None:
            return
        covered = self._covered = len(self._unconfirmed)
        protocol.barrier().addCallback(lambda _: self._read(protocol, covered))

    def _read(self, protocol: MQTTClientProtocol, count: int) -> None:
        """The broker read the first C{count} unconfirmed QoS 0 messages."""
        if protocol is not self._protocol:
            return
        done, self._unconfirmed = self._unconfirmed[:count], self._unconfirmed[count:]
        self._covered = 0
        for pending in done:
            self._confirmed(pending)
            pending.succeed()
        self._confirm_qos0()

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

    def _check_size(self, data: bytes) -> None:
        limit = self._limits.maximum_packet_size
        if limit is not None and len(data) > limit:
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

    # -- connection loss and resumption

    def _suspect_what_was_on_the_wire(self) -> None:
        """
        The connection ended with these packets unconfirmed: each gets a strike;
        a lone one that has had enough strikes is the culprit. Unconfirmed QoS 0
        messages are never sent again (they may have been delivered).
        """
        wire = [p for p in self._inflight.values() if p.on_wire]
        wire += self._unconfirmed
        self._unconfirmed, self._covered = [], 0
        self._wire = 0
        for pending in wire:
            pending.on_wire = False
            pending.strikes += 1
        if len(wire) == 1 and (wire[0].message.qos == 0 or wire[0].strikes >= 2):
            self._blame(wire.pop())
        for pending in wire:
            if pending.message.qos == 0:
                pending.fail(
                    broker_unavailable(
                        "the connection to the broker was lost before it read"
                        " the message"
                    )
                )
        # Send them again half as many at a time, nothing else meanwhile.
        suspects = sum(1 for p in wire if p.message.qos)
        if suspects:
            self._careful = max(1, suspects // 2)

    def _blame(self, pending: _Pending) -> None:
        """C{pending} is the packet the broker closes the connection on."""
        if pending.packet is not None and pending.packet.packet_id is not None:
            self._inflight.pop(pending.packet.packet_id, None)
        learned = self._learned[self.brokers[self._index].name]
        size = len(pending.data)
        reason = self._disconnect_reason
        if reason is not None and reason >= 0x80:
            error = from_reason_code(reason)
        elif 0 < learned.largest_taken < size:
            learned.too_large = [
                n for n in learned.too_large if n > learned.largest_taken
            ] + [size]
            if len(learned.too_large) >= 2:
                learned.packet_size = min(learned.too_large) - 1
                error = GatewayError(
                    Code.PayloadTooLarge,
                    f"the broker closed the connection on this message of {size}"
                    f" bytes, as on another larger than any it has taken"
                    f" ({learned.largest_taken} bytes); messages of"
                    f" {learned.packet_size + 1} bytes or more are refused from now on",
                )
            else:
                error = GatewayError(
                    Code.BrokerRejected,
                    f"the broker closed the connection on this message of {size}"
                    f" bytes, larger than any it has taken ({learned.largest_taken}"
                    " bytes): it may be over the broker's size limit; it is not sent"
                    " again",
                )
        else:
            error = GatewayError(
                Code.BrokerRejected,
                "the broker closed the connection on this message; it is not sent"
                " again",
            )
        self._say(
            LogLevel.warn,
            "The broker closes the connection on message {message_id}"
            " ({size} bytes, topic {topic!r}); it is dropped: {why}",
            message_id=pending.message_id,
            size=size,
            topic=pending.message.topic,
            why=error.message,
        )
        pending.fail(error)

    def _resume(self, resumed: bool) -> None:
        """
        After a reconnect: what the broker kept is completed (PUBREL again),
        suspects are sent again (DUP when the session was kept); what the broker
        lost fails unless it can safely go again (QoS 1, as a new message), and
        QoS 2 packet ids are released before they are used again.
        """
        protocol = self._protocol
        assert protocol is not None
        level = protocol.protocol_level
        for packet_id, pending in list(self._inflight.items()):
            qos = pending.message.qos
            if qos == 1 and not pending.waiting and not self._still_counts(pending):
                # Nobody waits for it, and the broker keeps nothing for it.
                del self._inflight[packet_id]
                continue
            if qos == 2 and not resumed:
                pending.fail(
                    broker_unavailable(
                        "the broker lost the session with this QoS 2 message: it"
                        " may or may not have been delivered"
                    )
                )
                # Some brokers (Aedes) keep the packet ids of QoS 2 messages they
                # have seen while saying that no session is present: release the
                # id, and keep it until PUBCOMP, so that no later message under
                # the same id is taken for a duplicate and dropped.
                pending.released = True
            if pending.released:
                self._send(codec.PubRel(packet_id))
                continue
            try:
                packet = attrs.evolve(
                    publish_packet(pending, level, packet_id), dup=resumed
                )
                pending.packet, pending.data = packet, _encode(packet, level)
            except GatewayError as e:
                del self._inflight[packet_id]
                pending.fail(e)
        if self._careful is None and any(self._suspects()):
            self._careful = 1

    def _still_counts(self, pending: _Pending) -> bool:
        """
        Whether a QoS 1 message whose request has timed out is sent again: only
        as a suspect of a connection loss, within three publish timeouts of its
        first sending, so that the message a broker keeps failing on is still
        found (and its size learned) when its request could not wait for it.
        """
        first = pending.first_sent
        return (
            pending.strikes > 0
            and first is not None
            and self._clock.seconds() - first < 3 * self.publish_timeout
        )

    def _suspects(self) -> Iterable[_Pending]:
        """In-flight messages not yet confirmed, not on the wire, in order."""
        return (p for p in self._inflight.values() if not p.released and not p.on_wire)

    def _send_suspects(self) -> None:
        """In careful mode: put suspects on the wire, at most C{_careful} at once;
        back to normal once every one is confirmed."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            return
        assert self._careful is not None
        for pending in self._suspects():
            if self._wire >= self._careful:
                return
            self._put_on_wire(pending)
            protocol.write(pending.data)
        if not self._wire:
            self._careful = None

    def _put_on_wire(self, pending: _Pending) -> None:
        pending.on_wire = True
        if pending.first_sent is None:
            pending.first_sent = self._clock.seconds()
        if not self._wire:
            self._progress_at = self._clock.seconds()
        self._wire += 1
        if self._watchdog is None:
            self._watchdog = self._clock.callLater(self._ack_timeout(), self._watch)

    def _ack_timeout(self) -> float:
        """
        Seconds the broker may leave everything on the wire unconfirmed before
        the connection is taken for wedged: RabbitMQ, given a PUBLISH over its
        max_message_size, acknowledges nothing more on that connection while it
        still answers PINGREQ. Half as long again as the publish timeout (the
        requests have had their 503s by then); at most two seconds while
        suspects are sent again one group at a time, each expected back
        promptly.
        """
        if self._careful is not None:
            return min(self.publish_timeout, 2.0)
        return 1.5 * self.publish_timeout

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _watch(self) -> None:
        self._watchdog = None
        if not self._wire or self._protocol is None:
            return
        waited = self._clock.seconds() - self._progress_at
        timeout = self._ack_timeout()
        if waited < timeout:
            self._watchdog = self._clock.callLater(timeout - waited, self._watch)
            return
        self._say(
            LogLevel.warn,
            "{broker} acknowledged none of {count} messages for {waited:.1f} s;"
            " reconnecting",
            broker=self.brokers[self._index].name,
            count=self._wire,
            waited=waited,
        )
        self._protocol.abort()

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
        for pending in self._unconfirmed:
            pending.fail(error)
