# -*- test-case-name: tests.mqtt.test_passthrough -*-
"""
The pass-through publisher (C{[auth] mode = "broker"}): each sender publishes over an
MQTT session of its own, opened as the sender (its client id, user name and
password), so that the broker authenticates it (CONNACK) and authorizes every
message (PUBACK), as Tencent TDMQ's HTTP publish does.

A sender's session lives while an HTTP keep-alive connection holds it or a request
on it waits, and closes (DISCONNECT) once neither is true: over HTTP/1.0 every
message is a CONNECT, PUBLISH, DISCONNECT. Requests with the same client id share
one session, whichever connection they came on, rather than take the session over
from each other at the broker.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from gateway.clock import default_clock
from gateway.errors import Code, GatewayError, broker_unavailable
from gateway.interfaces import IPublisher
from gateway.model import Connection, Identity, Message, PublishResult
from gateway.mqtt.oneshot import OneShotSession
from gateway.mqtt.outcomes import Outcome, PublishFailed
from gateway.mqtt.publisher import as_gateway_error
from gateway.mqtt.reachability import ReachabilityProbe
from gateway.mqtt.session import Broker, BrokerSession, SessionSettings
from gateway.status import PublisherStatus, StatusObserver, StatusObservers


@attrs.define(eq=False)
class _Sender:
    """One sender's session and what keeps it open."""

    client_id: str
    username: str | None
    password: bytes | None = attrs.field(repr=False)
    session: BrokerSession
    connections: set[str] = attrs.Factory(set)
    pending: int = 0
    idle: IDelayedCall | None = None

    def made_by(self, identity: Identity) -> bool:
        """Whether C{identity} presents the credentials the session was made with."""
        if identity.username != self.username:
            return False
        if identity.password is None or self.password is None:
            return identity.password is self.password
        return hmac.compare_digest(identity.password, self.password)


@implementer(IPublisher)
class PassthroughPublisher(Service):
    """
    Publishes each message over a broker session opened as its sender.

    L{publish} answers as L{IPublisher} promises, and more: the broker's CONNACK
    refusal maps to 401/403/400/429/503/502 (L{gateway.errors.from_connack_code});
    a client id whose open session was made with other credentials is refused with
    403 (the request does not ride on someone else's session); beyond
    C{max_sessions} open sessions a new sender gets 503 with C{Retry-After}.

    Brokers: a new session starts at the broker that last took a message (at
    first, the first configured one) and goes down the configured list, wrapping,
    while brokers cannot be reached; a broker that answers, even with a refusal,
    decides.

    A session closes when no HTTP keep-alive connection holds it
    (heard through the L{Connection} handle of its requests) and no request on
    it waits, or after C{idle_timeout}
    seconds without a publish, whatever holds it.

    @ivar connected: for C{/readyz}: C{False} while the most recent connection
        attempt found no broker reachable, C{True} otherwise (also at first, when
        nothing has been tried: there is no standing session to judge by). While
        it is C{False} the publisher probes the brokers every C{probe_interval}
        seconds with a bare TCP connection, so that readiness comes back without
        traffic (a load balancer sends none to an instance that is not ready); a
        lost sender connection, or a session that gave up before any broker
        answered, also triggers a probe.
    """

    _log = Logger()

    def __init__(
        self,
        brokers: Sequence[Broker],
        *,
        protocol: str = "auto",
        keepalive: int = 60,
        publish_timeout: float = 10,
        idle_timeout: float = 60,
        max_sessions: int = 1000,
        probe_interval: float | None = 5.0,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param probe_interval: seconds between reachability probes while no broker
            is reachable (also the probe's connect timeout); C{None} never probes,
            leaving L{connected} to what senders' sessions find.
        """
        if not brokers:
            raise ValueError("at least one broker is needed")
        clock = default_clock(clock)
        self.brokers = tuple(brokers)
        self.protocol = protocol
        self.keepalive = keepalive
        self.publish_timeout = publish_timeout
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.connected = True
        self._observers = StatusObservers()
        self._clock = clock
        self._sessions: dict[str, _Sender] = {}
        self._by_connection: dict[str, set[_Sender]] = {}
        # Sessions sent DISCONNECT and not yet closed, by client id: a new session
        # for the same client id waits for the old one so that the broker never
        # sees a takeover.
        self._closing: dict[str, BrokerSession] = {}
        self._levels: dict[str, int] = {}
        self._first = 0
        self._probe = (
            None
            if probe_interval is None
            else ReachabilityProbe(self.brokers, clock, probe_interval, self._reachable)
        )

    @property
    def session_count(self) -> int:
        """Open sender sessions (connecting or connected)."""
        return len(self._sessions)

    # -- IPublisher

    def publish(self, message: Message, identity: Identity) -> Deferred[PublishResult]:
        """
        Send C{message} over the session of C{identity.client_id}, opening one as
        the sender if there is none; see L{IPublisher.publish}.
        """
        if not self.running:
            return fail(broker_unavailable("the gateway is shutting down"))
        sender = self._sessions.get(identity.client_id)
        if sender is not None and sender.session.ended:
            self._forget(sender)
            sender = None
        if sender is None:
            if len(self._sessions) >= self.max_sessions:
                return fail(
                    broker_unavailable("too many senders have a broker session open")
                )
            sender = self._open(identity)
        elif not sender.made_by(identity):
            return fail(
                GatewayError(Code.Forbidden, "client id in use by another user")
            )
        if identity.connection.keep_alive:
            self._hold(sender, identity.connection)
        sender.pending += 1
        self._touch(sender)
        d = sender.session.publish(message).addErrback(as_gateway_error)
        d.addBoth(self._answered, sender)
        return d

    def _hold(self, sender: _Sender, connection: Connection) -> None:
        """
        Let C{connection} hold C{sender}'s session until it closes (heard once
        per connection, through its handle).
        """
        key = connection.id
        if key in sender.connections:
            return
        sender.connections.add(key)
        held = self._by_connection.get(key)
        if held is None:
            held = self._by_connection[key] = set()
            connection.when_closed(lambda: self._connection_closed(key))
        held.add(sender)

    def _connection_closed(self, connection_id: str) -> None:
        """
        The HTTP connection C{connection_id} ended: sessions it held close once
        nothing else holds them and no request on them waits.
        """
        for sender in self._by_connection.pop(connection_id, ()):
            sender.connections.discard(connection_id)
            self._release_if_unheld(sender)

    # -- service

    def startService(self) -> None:
        """Find out whether a broker is reachable (for L{connected})."""
        super().startService()
        if self._probe is not None:
            self._probe.check()

    def stopService(self) -> Deferred[None]:
        """
        DISCONNECT every session, failing what waits with 503; fires once every
        session has closed.
        """
        super().stopService()
        if self._probe is not None:
            self._probe.stop()
        senders = list(self._sessions.values())
        sessions = [sender.session for sender in senders] + list(self._closing.values())
        ends = [session.when_ended() for session in sessions]
        for sender in senders:
            self._close(sender)
        return DeferredList(ends).addCallback(lambda _: None)

    # -- sessions

    def _open(self, identity: Identity) -> _Sender:
        brokers = self.brokers[self._first :] + self.brokers[: self._first]
        settings = SessionSettings(
            client_id=identity.client_id,
            username=identity.username,
            password=identity.password,
            protocol=self.protocol,
            keepalive=self.keepalive,
            session_expiry=0,
        )
        session = OneShotSession(
            brokers,
            settings,
            publish_timeout=self.publish_timeout,
            clock=self._clock,
            levels=self._levels,
        )
        sender = _Sender(
            identity.client_id, identity.username, identity.password, session
        )
        self._sessions[sender.client_id] = sender
        session.when_ended().addCallback(self._ended, sender)
        previous = self._closing.get(sender.client_id)
        if previous is None:
            session.startService()
        else:
            previous.when_ended().addCallback(lambda _: self._start(sender))
        return sender

    def _start(self, sender: _Sender) -> None:
        if self.running and not sender.session.ended:
            sender.session.startService()

    def _answered(self, result: object, sender: _Sender) -> object:
        sender.pending -= 1
        if isinstance(result, PublishResult):
            self._took_message(sender.session)
        self._touch(sender)
        self._release_if_unheld(sender)
        return result

    def _release_if_unheld(self, sender: _Sender) -> None:
        if not sender.pending and not sender.connections:
            self._close(sender)

    def _touch(self, sender: _Sender) -> None:
        if sender.idle is not None and sender.idle.active():
            sender.idle.cancel()
        sender.idle = None
        if self._sessions.get(sender.client_id) is sender:
            sender.idle = self._clock.callLater(self.idle_timeout, self._idle, sender)

    def _idle(self, sender: _Sender) -> None:
        sender.idle = None
        if sender.pending:
            self._touch(sender)
        else:
            self._close(sender)

    def _close(self, sender: _Sender) -> None:
        """DISCONNECT C{sender}'s session (if it is still open) and forget it."""
        if self._sessions.get(sender.client_id) is not sender:
            return
        self._forget(sender)
        session = sender.session
        if not session.running:
            # Never started (it waited for an older session to close): no
            # connection to wait for.
            session.stopService()
            return
        if session.ended:
            return
        self._closing[sender.client_id] = session

        def closed(_: object) -> None:
            if self._closing.get(sender.client_id) is session:
                del self._closing[sender.client_id]

        session.when_ended().addCallback(closed)
        session.stopService()

    def _forget(self, sender: _Sender) -> None:
        if self._sessions.get(sender.client_id) is sender:
            del self._sessions[sender.client_id]
        if sender.idle is not None and sender.idle.active():
            sender.idle.cancel()
        sender.idle = None
        for connection_id in sender.connections:
            held = self._by_connection.get(connection_id)
            if held is not None:
                held.discard(sender)
                if not held:
                    del self._by_connection[connection_id]
        sender.connections.clear()

    def _ended(self, reason: PublishFailed | None, sender: _Sender) -> None:
        """
        A session is over: forget it, and learn from how it ended whether a broker
        is reachable.
        """
        self._forget(sender)
        session = sender.session
        if reason is None:
            # Closed by us; if it never got through, find out why.
            if not session.was_connected and self.running:
                self._check_reachable()
        elif reason.outcome is not Outcome.UNAVAILABLE:
            self._reachable(True)  # a broker answered, if only to refuse
        elif session.was_connected:
            self._check_reachable()  # the connection was lost
        else:
            self._reachable(False)
            self._check_reachable()

    # -- brokers

    def _took_message(self, session: BrokerSession) -> None:
        self._reachable(True)
        name = session.current_broker
        for index, broker in enumerate(self.brokers):
            if broker.name == name:
                self._first = index

    def _check_reachable(self) -> None:
        if self._probe is not None:
            self._probe.check()

    def status(self) -> PublisherStatus:
        """Whether brokers are reachable, and how many sender sessions are open."""
        return PublisherStatus(connected=self.connected, sessions=len(self._sessions))

    def observe(self, observer: StatusObserver) -> Callable[[], None]:
        """Hear when brokers become reachable or unreachable."""
        return self._observers.observe(observer)

    def _reachable(self, reachable: bool) -> None:
        if reachable == self.connected:
            return
        self.connected = reachable
        self._observers.notify(self.status())
        if reachable:
            self._log.info("An MQTT broker is reachable again")
        else:
            self._log.warn("No MQTT broker is reachable; not ready")
