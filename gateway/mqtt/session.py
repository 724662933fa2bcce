# -*- test-case-name: tests.mqtt.test_session,tests.mqtt.test_outcomes -*-
"""
A broker session that survives its connections.

L{BrokerSession} keeps one MQTT session to the first broker of a list that answers
(L{gateway.mqtt.connector} makes each connection, at the right protocol level),
reconnects with exponential back-off and jitter, and drives the session's
in-flight window (L{gateway.mqtt.window}, a pure state machine): it writes what
the window says to write, hands it the broker's answers, and keeps the one timer
the window's deadlines need. Every caller hears back within the publish timeout.

Broker mode's one-shot sessions are in L{gateway.mqtt.oneshot}.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from gateway.clock import default_clock
from gateway.model import Message, PublishResult, new_message_id
from gateway.mqtt import codec
from gateway.mqtt.connector import Broker, SessionSettings, connect
from gateway.mqtt.outcomes import PublishFailed, unavailable
from gateway.mqtt.pending import BrokerLimits, Learned, Pending
from gateway.mqtt.protocol import MQTTClientProtocol
from gateway.mqtt.window import Window
from gateway.status import PublisherStatus, StatusObserver, StatusObservers

__all__ = [
    "Broker",
    "BrokerLimits",
    "BrokerSession",
    "SessionSettings",
]


def reconnect_delay(attempt: int) -> float:
    """
    Seconds to wait before connection attempt C{attempt + 1}: 0.1 s doubling up
    to 30 s, each spread by half either way so that gateways that lost the same
    broker do not come back all at once. The first attempt after a loss comes
    within 0.15 s: a connection the broker closed on one message is back before
    the next request notices.
    """
    return min(0.1 * 2.0**attempt, 30.0) * (0.5 + random.random())


class BrokerSession(Service):
    """
    One MQTT session, kept up across connection losses while the service runs.

    L{publish} answers every message exactly once: with a L{PublishResult} after the
    broker's PUBACK (QoS 1), PUBCOMP (QoS 2) or its having read the PUBLISH
    (QoS 0); or with a L{PublishFailed} saying what happened (see
    L{gateway.mqtt.window} for the promise across connection losses).

    The queue is full with C{max_queue} messages waiting or in flight, with
    C{max_queue_bytes} of payload queued, or when a new message would wait in it
    longer than C{max_queue_delay} seconds; the message is then refused at once
    (C{UNAVAILABLE}) rather than accepted to wait for the publish timeout.
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
        levels: dict[str, int] | None = None,
    ) -> None:
        """
        @param levels: the protocol level known per broker name, updated when a
            broker turns out to speak only 3.1.1; pass the same dict to many
            sessions so that they learn it once.
        """
        if not brokers:
            raise ValueError("at least one broker is needed")
        self.brokers = tuple(brokers)
        self.settings = settings
        self.publish_timeout = publish_timeout
        self._clock = default_clock(clock)
        self._retry_policy = retry_policy or reconnect_delay
        self._levels = {} if levels is None else levels
        self._learned = {broker.name: Learned() for broker in self.brokers}
        self.window = Window(
            publish_timeout=publish_timeout,
            max_queue=max_queue,
            max_queue_bytes=max_queue_bytes,
            max_queue_delay=max_queue_delay,
            max_inflight=max_inflight,
            say=lambda format, **kw: self._say(LogLevel.warn, format, **kw),
        )
        self._ended = False
        self._end_reason: PublishFailed | None = None
        self._end_waiters: list[Deferred[PublishFailed | None]] = []
        self._index = 0
        self._failures = 0
        self._ever_connected = False
        self._protocol: MQTTClientProtocol | None = None
        self._connecting: Deferred[MQTTClientProtocol] | None = None
        self._retry: IDelayedCall | None = None
        self._retry_at: float | None = None
        self._timer: IDelayedCall | None = None
        self._timer_at = math.inf
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

    @property
    def inflight_count(self) -> int:
        """QoS 1/2 messages sent and not yet acknowledged."""
        return len(self.window.inflight)

    @property
    def queued_count(self) -> int:
        """Messages waiting for a session or for room in the in-flight window."""
        return self.window.queued

    def status(self) -> PublisherStatus:
        """The state of the session now."""
        return PublisherStatus(
            connected=self.connected,
            broker=self.current_broker,
            protocol_level=self.protocol_level,
            reconnects=self._reconnects,
            inflight=len(self.window.inflight),
            queued=self.window.queued,
        )

    def observe(self, observer: StatusObserver) -> Callable[[], None]:
        """Call C{observer} with the new status when the session goes up or
        down; returns the way to stop."""
        return self._observers.observe(observer)

    @property
    def ended(self) -> bool:
        """Whether the session is over for good (see L{when_ended})."""
        return self._ended

    def when_ended(self) -> Deferred[PublishFailed | None]:
        """
        Fires once the session is over for good and will not connect again: with
        C{None} when L{stopService} ended it, or with what every waiting message
        failed with when the session could not go on (a one-shot session of
        L{gateway.mqtt.oneshot}).
        """
        if self._ended:
            return succeed(self._end_reason)
        d: Deferred[PublishFailed | None] = Deferred()
        self._end_waiters.append(d)
        return d

    def publish(
        self, message: Message, extra_properties: tuple[tuple[str, str], ...] = ()
    ) -> Deferred[PublishResult]:
        """
        Send C{message}, with C{extra_properties} appended to its user properties
        when the session speaks MQTT 5.
        """
        pending = Pending(message, extra_properties, new_message_id(), Deferred())
        now = self._clock.seconds()
        if self._ended:
            pending.fail(unavailable("the broker session has ended"))
        elif self._retry_at is not None and self._protocol is None:
            pending.fail(self._unreachable())
        elif (why := self.window.refusal(message, now)) is not None:
            pending.fail(unavailable(why))
        else:
            self._write(self.window.offer(pending, now))
        return pending.deferred

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
        self._cancel(self._retry)
        self._cancel(self._timer)
        self._retry = self._timer = None
        if self._connecting is not None:
            self._connecting.cancel()
        self.window.fail_waiting(
            unavailable("the gateway is shutting down"), self._clock.seconds()
        )
        if self._protocol is None:
            self._end(None)
            return succeed(None)
        stopped: Deferred[None] = Deferred()
        self._stopped = stopped
        stopped.addCallback(lambda _: self._end(None))
        self._protocol.disconnect()
        return stopped

    def _end(self, reason: PublishFailed | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._end_reason = reason
        if reason is not None:
            self.window.fail_waiting(reason, self._clock.seconds())
        self._cancel(self._timer)
        self._timer, self._timer_at = None, -math.inf  # never armed again
        waiters, self._end_waiters = self._end_waiters, []
        for d in waiters:
            d.callback(reason)

    def _say(self, level: LogLevel, format: str, **kw: object) -> None:
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
        level = protocol.protocol_level
        resumed = connack.session_present and self._ever_connected
        if self._ever_connected:
            self._reconnects += 1
        self._failures = 0
        self._retry_at = None
        self._ever_connected = True
        self._protocol = protocol
        protocol.attach(self)
        self._say(
            LogLevel.info,
            "Connected to {broker} (MQTT {version}, session {session})",
            broker=broker.name,
            version="5" if level == codec.MQTT_5 else "3.1.1",
            session="resumed" if resumed else "new",
        )
        limits = BrokerLimits.from_connack(connack, level)
        now = self._clock.seconds()
        self._write(
            self.window.connected(
                level, limits, self._learned[broker.name], resumed, now
            )
        )
        self._observers.notify(self.status())

    def _attempt_failed(self, failure: Failure, broker: Broker) -> None:
        self._connecting = None
        if not self.running:
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
        self._retry_at = self._clock.seconds() + delay
        self._retry = self._clock.callLater(delay, self._attempt)
        # Nobody is taking messages: say so now rather than at the timeout.
        self.window.fail_waiting(self._unreachable(), self._clock.seconds())

    def _unreachable(self) -> PublishFailed:
        wait = 1.0
        if self._retry_at is not None:
            wait = self._retry_at - self._clock.seconds()
        return unavailable("no MQTT broker is reachable", max(1, math.ceil(wait)))

    # -- IPacketListener

    def connection_lost(self, protocol: MQTTClientProtocol, reason: Failure) -> None:
        """The session's connection ended: reconnect unless stopping."""
        if protocol is not self._protocol:
            return
        self._protocol = None
        self.window.lost(self._clock.seconds())
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
        self._connection_gone()

    def _connection_gone(self) -> None:
        """Reconnect soon but not at once; callers wait meanwhile."""
        self._retry_at = None
        self._retry = self._clock.callLater(self._retry_policy(0), self._attempt)

    def packet_received(self, packet: codec.Packet) -> None:
        """An acknowledgement arrived: answer its caller, fill the window."""
        now = self._clock.seconds()
        window = self.window
        if isinstance(packet, codec.PubAck):
            self._write(window.puback(packet, now))
        elif isinstance(packet, codec.PubRec):
            self._write(window.pubrec(packet, now))
        elif isinstance(packet, codec.PubComp):
            self._write(window.pubcomp(packet, now))
        elif isinstance(packet, codec.Disconnect):
            window.disconnect_reason = packet.reason_code
            self._say(
                LogLevel.warn,
                "The broker disconnected us (reason 0x{code:02X} {why})",
                code=packet.reason_code,
                why=packet.properties.reason_string or "",
            )
        else:
            self._log.debug("Ignoring {packet!r}", packet=packet)

    # -- writing and time

    def _write(self, data: list[bytes]) -> None:
        """Write what the window asked for, then the PINGREQ it needs, and make
        sure the timer will look at its deadlines."""
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            for chunk in data:
                protocol.write(chunk)
            window = self.window
            if window.barrier_needed:
                count = window.barrier_sent()
                protocol.barrier().addCallback(self._barrier_answered, protocol, count)
        self._arm()

    def _barrier_answered(
        self, _: object, protocol: MQTTClientProtocol, count: int
    ) -> None:
        if protocol is self._protocol:
            self._write(self.window.qos0_read(count, self._clock.seconds()))

    def _arm(self) -> None:
        """One timer for every deadline: the earliest request timeout, and the
        watchdog of a connection that stopped acknowledging."""
        window = self.window
        due = window.next_deadline()
        watchdog = window.watchdog_deadline() if self.connected else None
        if watchdog is not None and (due is None or watchdog < due):
            due = watchdog
        if due is None or due >= self._timer_at:
            return
        self._cancel(self._timer)
        self._timer_at = due
        # Set for the earliest waiting request and left alone by later ones:
        # with answers coming, it fires about once per publish timeout.
        delay = max(0.0, due - self._clock.seconds())
        self._timer = self._clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self._clock.seconds()
        window = self.window
        window.expire(now)
        protocol = self._protocol
        if protocol is not None and not protocol.closed and window.wedged(now):
            self._say(
                LogLevel.warn,
                "{broker} acknowledged nothing for {waited:.1f} s; reconnecting",
                broker=self.brokers[self._index].name,
                waited=window.ack_timeout(),
            )
            protocol.abort()
        self._arm()

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()
