# -*- test-case-name: tests.test_status -*-
"""
What a publisher tells about its broker connection, as a value, and the observers
that want to hear when it changes (metrics, systemd's STATUS=, readiness), so that
none of them polls or looks inside a publisher.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs


@attrs.frozen
class PublisherStatus:
    """
    A publisher's state at one moment.

    @ivar connected: whether it can take messages now (a broker session is up;
        in broker mode: the gateway can open sessions for senders).
    @ivar broker: the name (URI) of the broker of the current session, if one.
    @ivar protocol_level: 5 or 4 (MQTT 3.1.1) for the current session, if one.
    @ivar reconnects: sessions re-established after a connection loss so far.
    @ivar inflight: QoS 1/2 messages sent and not yet acknowledged.
    @ivar queued: messages waiting for a session or for room in the window.
    @ivar sessions: broker mode's open per-sender sessions, else C{None}.
    """

    connected: bool = False
    broker: str | None = None
    protocol_level: int | None = None
    reconnects: int = 0
    inflight: int = 0
    queued: int = 0
    sessions: int | None = None


#: Called with the new status whenever the connection state changes.
StatusObserver = Callable[[PublisherStatus], None]


class StatusObservers:
    """
    The observers of one publisher: L{observe} adds one, L{notify} tells them
    all. An observer that raises does not stop the others.
    """

    def __init__(self) -> None:
        self._observers: list[StatusObserver] = []

    def observe(self, observer: StatusObserver) -> Callable[[], None]:
        """Call C{observer} on every change; returns the way to stop it."""
        self._observers.append(observer)

        def stop() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return stop

    def notify(self, status: PublisherStatus) -> None:
        """Tell every observer about C{status}."""
        from twisted.logger import Logger

        for observer in list(self._observers):
            try:
                observer(status)
            except Exception:
                Logger().failure("A status observer failed")
