# -*- test-case-name: tests.mqtt.test_session -*-
"""
One connection attempt to one broker, at the right protocol level, with a session
the broker keeps.

L{connect} does what happens between "open a connection" and "the session is up":

 - B{Protocol level.} With C{protocol = "auto"} it asks in MQTT 5 first. A broker
   that refuses MQTT 5 in its CONNACK (or answers with an MQTT 3.1.1 CONNACK) is
   remembered as a 3.1.1 broker. A broker that closes the connection on an MQTT 5
   CONNECT is asked again in 3.1.1 at once, and remembered as a 3.1.1 broker only
   when it answers that (one that closes on both may be starting up, and is asked
   in MQTT 5 again next time). A broker that stays silent
   (amqtt waits for ever on an MQTT 5 CONNECT) is told apart from a stalled one
   by a probe: after C{probe_delay} seconds of silence a second connection asks
   in 3.1.1 under another client id; a CONNACK to it shows a live broker that
   does not speak MQTT 5, and the attempt goes on in 3.1.1 at once. When the
   probe is silent too, the broker is stalled: the attempt fails and the next
   one asks in MQTT 5 again.
 - B{A session that survives the connection.} MQTT 5 sessions start clean with a
   Session Expiry Interval. An MQTT 3.1.1 session is kept by the broker only
   when made with clean_session=0; the first one is made in two steps
   (clean_session=1 to discard whatever an earlier process left under the client
   id, then clean_session=0), so that it is both empty and resumable.
 - B{Diagnostics.} A TLS or network failure is reported as itself, never as a
   broker that does not speak MQTT 5.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from gateway.mqtt import codec
from gateway.mqtt.opening import disconnected, open_connection
from gateway.mqtt.protocol import ConnectFailed, MQTTClientProtocol

#: Seconds of silence after an MQTT 5 CONNECT before a 3.1.1 probe is sent.
PROBE_DELAY = 0.5


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

    @ivar protocol: C{"5"}, C{"3.1.1"} or C{"auto"} (see L{connect}).
    @ivar session_expiry: seconds the broker keeps the MQTT 5 session after a
        connection loss, so that unacknowledged messages can be resumed; C{0} (sent
        as no Session Expiry Interval) ends it with the connection.
    @ivar resumable: whether the session must survive connection losses (the
        gateway's own session); C{False} for one-shot sessions, which start clean
        and end with their connection.
    """

    client_id: str
    username: str | None = None
    password: bytes | None = attrs.field(default=None, repr=False)
    protocol: str = "auto"
    keepalive: int = 60
    session_expiry: int = 300
    connack_timeout: float = 5.0
    resumable: bool = True


#: How L{connect} reports what it learns and decides: C{(level, format, **fields)}.
Say = Callable[..., None]


@attrs.define(eq=False)
class _Attempt:
    """One call of L{connect}: the state of the level decision for one broker."""

    broker: Broker
    settings: SessionSettings
    clock: IReactorTime
    levels: dict[str, int]
    fresh: bool
    say: Say
    probe_delay: float
    result: Deferred[MQTTClientProtocol] = attrs.field(init=False)
    _pending: Deferred[MQTTClientProtocol] | None = attrs.field(
        init=False, default=None
    )
    _built: list[MQTTClientProtocol] = attrs.field(init=False, factory=list)
    _probe_timer: IDelayedCall | None = attrs.field(init=False, default=None)
    _probe: Deferred[MQTTClientProtocol] | None = attrs.field(init=False, default=None)
    _probe_built: list[MQTTClientProtocol] = attrs.field(init=False, factory=list)
    _probe_silent: bool = attrs.field(init=False, default=False)
    # Whether a 3.1.1 CONNACK now shows that the broker speaks 3.1.1 only.
    _learn_from_311: bool = attrs.field(init=False, default=False)
    _done: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self.result = Deferred(self._cancel)

    def start(self) -> Deferred[MQTTClientProtocol]:
        settings = self.settings
        if settings.protocol == "3.1.1":
            level = codec.MQTT_3_1_1
        elif settings.protocol == "5":
            level = codec.MQTT_5
        else:
            level = self.levels.get(self.broker.name, codec.MQTT_5)
        if level == codec.MQTT_5:
            self._mqtt5()
        else:
            self._mqtt311()
        return self.result

    # -- MQTT 5

    def _mqtt5(self) -> None:
        settings = self.settings
        connect = codec.Connect(
            client_id=settings.client_id,
            protocol_level=codec.MQTT_5,
            clean_start=self.fresh or not settings.resumable,
            keepalive=settings.keepalive,
            username=settings.username,
            password=settings.password,
            properties=(
                codec.Properties(session_expiry_interval=settings.session_expiry)
                if settings.resumable and settings.session_expiry
                else codec.NO_PROPERTIES
            ),
        )
        d, self._built = self._open(connect)
        self._pending = d
        if settings.protocol == "auto":
            self._probe_timer = self.clock.callLater(self.probe_delay, self._send_probe)
        d.addCallbacks(self._succeeded, self._mqtt5_failed, errbackArgs=(d,))

    def _mqtt5_failed(
        self, failure: Failure, attempt: Deferred[MQTTClientProtocol]
    ) -> None:
        if self._done or attempt is not self._pending:
            return  # cancelled, or given up for the 3.1.1 probe's answer
        # A probe still unanswered is as silent as the attempt itself.
        probe_silent = self._probe_silent or self._probe is not None
        self._stop_probe()
        error = failure.value
        if not (
            self.settings.protocol == "auto"
            and isinstance(error, ConnectFailed)
            and error.refused_protocol
        ):
            self._failed(failure)
            return
        if error.definitive:
            self.levels[self.broker.name] = codec.MQTT_3_1_1
            self.say(
                LogLevel.info,
                "{broker} does not speak MQTT 5 ({why}); using MQTT 3.1.1",
                broker=self.broker.name,
                why=str(error),
            )
        elif error.silent and probe_silent:
            # Silent to both levels: stalled, not a 3.1.1 broker.
            self._failed(failure)
            return
        else:
            self.say(
                LogLevel.info,
                "{broker} did not take an MQTT 5 CONNECT ({why}); trying MQTT 3.1.1",
                broker=self.broker.name,
                why=str(error),
            )
            self._learn_from_311 = True
        self._mqtt311()

    def _send_probe(self) -> None:
        self._probe_timer = None
        settings = self.settings
        connect = codec.Connect(
            client_id=f"{settings.client_id}-probe",
            protocol_level=codec.MQTT_3_1_1,
            clean_start=True,
            keepalive=settings.keepalive,
            username=settings.username,
            password=settings.password if settings.username is not None else None,
        )
        self._probe, self._probe_built = self._open(connect)
        self._probe.addCallbacks(self._probe_answered, self._probe_failed)

    def _probe_answered(self, protocol: MQTTClientProtocol) -> None:
        protocol.disconnect()
        self._probe = None
        self._heard_311()

    def _probe_failed(self, failure: Failure) -> None:
        self._probe = None
        error = failure.value
        if isinstance(error, ConnectFailed) and error.reason_code is not None:
            # Refused, but in a 3.1.1 CONNACK: a live 3.1.1 broker.
            self._heard_311()
        elif isinstance(error, ConnectFailed) and error.silent:
            self._probe_silent = True

    def _heard_311(self) -> None:
        """The broker answered in 3.1.1 while silent to MQTT 5."""
        if self._done or self._pending is None:
            return
        pending, self._pending = self._pending, None
        self.levels[self.broker.name] = codec.MQTT_3_1_1
        self.say(
            LogLevel.info,
            "{broker} answers MQTT 3.1.1 but not MQTT 5; using MQTT 3.1.1",
            broker=self.broker.name,
        )
        pending.cancel()
        self._mqtt311()

    def _stop_probe(self) -> None:
        if self._probe_timer is not None and self._probe_timer.active():
            self._probe_timer.cancel()
        self._probe_timer = None
        if self._probe is not None:
            probe, self._probe = self._probe, None
            probe.addErrback(lambda _: None)
            self._close_built(self._probe_built)
            probe.cancel()

    # -- MQTT 3.1.1

    def _mqtt311(self) -> None:
        settings = self.settings
        keep = settings.resumable

        def connect(clean: bool) -> Deferred[MQTTClientProtocol]:
            packet = codec.Connect(
                client_id=settings.client_id,
                protocol_level=codec.MQTT_3_1_1,
                clean_start=clean,
                keepalive=settings.keepalive,
                username=settings.username,
                password=settings.password,
            )
            d, self._built = self._open(packet)
            self._pending = d
            return d

        def learn(result: object) -> object:
            # It closed on MQTT 5 and answers 3.1.1: a 3.1.1 broker. (A refusal
            # of 3.1.1 as well, return code 1, shows neither; closing on both
            # may be a broker starting up.)
            error = result.value if isinstance(result, Failure) else None
            answered = error is None or (
                isinstance(error, ConnectFailed)
                and error.reason_code not in (None, 0x01)
            )
            if self._learn_from_311 and answered:
                self.levels[self.broker.name] = codec.MQTT_3_1_1
            return result

        if keep and self.fresh:
            # Empty the session first, then make it one the broker keeps.
            def wiped(protocol: MQTTClientProtocol) -> Deferred[MQTTClientProtocol]:
                return disconnected(protocol).addCallback(lambda _: connect(False))

            d = connect(True).addCallback(wiped)
        else:
            d = connect(not keep)
        d.addBoth(learn).addCallbacks(self._succeeded, self._failed)

    def _open(
        self, packet: codec.Connect
    ) -> tuple[Deferred[MQTTClientProtocol], list[MQTTClientProtocol]]:
        return open_connection(
            self.broker.endpoint, packet, self.clock, self.settings.connack_timeout
        )

    # -- the end

    def _succeeded(self, protocol: MQTTClientProtocol) -> None:
        self._stop_probe()
        if self._done:
            protocol.disconnect()
            return
        self._done = True
        self._pending = None
        self.result.callback(protocol)

    def _failed(self, failure: Failure) -> None:
        self._stop_probe()
        if self._done:
            return
        self._done = True
        self._pending = None
        self.result.errback(failure)

    def _cancel(self, _: object) -> None:
        self._done = True
        self._stop_probe()
        self._close_built(self._built)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.addErrback(lambda _: None)
            pending.cancel()

    @staticmethod
    def _close_built(built: list[MQTTClientProtocol]) -> None:
        for protocol in built:
            if not protocol.closed and protocol.transport is not None:
                protocol.transport.loseConnection()


def connect(
    broker: Broker,
    settings: SessionSettings,
    clock: IReactorTime,
    *,
    levels: dict[str, int],
    fresh: bool,
    say: Say,
    probe_delay: float = PROBE_DELAY,
) -> Deferred[MQTTClientProtocol]:
    """
    Connect to C{broker}; fires with the protocol of a session the broker
    accepted, or fails with the reason (a L{ConnectFailed}, a TLS or network
    error). Cancelling it closes whatever it opened.

    @param levels: the protocol level known per broker name, updated when a
        broker shows that it speaks 3.1.1 only; share one dict among sessions.
    @param fresh: whether the session must start empty (the first connection of
        a gateway session) rather than resume what the broker kept.
    @param say: where decisions about the protocol level are logged.
    """
    attempt = _Attempt(broker, settings, clock, levels, fresh, say, probe_delay)
    return attempt.start()
