# -*- test-case-name: tests.test_reload -*-
"""
Unix signals handled in the reactor thread: SIGTERM (stop) and SIGHUP (reload).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

__all__ = ["ExitCleanlyOnSIGTERM", "OnSignal"]

_log = Logger()


class OnSignal(Service):
    """
    Calls C{action} in the reactor thread whenever the process gets C{signum},
    while the service runs; the previous handler comes back when it stops.

    The handler is installed once the reactor runs, after the reactor's own
    (which it replaces for C{signum}).
    """

    def __init__(self, signum: int, action: Callable[[], object], reactor: Any) -> None:
        self.signum = signum
        self._action = action
        self._reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        """Install the handler once the reactor runs."""
        super().startService()
        self._reactor.callWhenRunning(self._install)

    def stopService(self) -> None:
        """Put the previous handler back."""
        super().stopService()
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _install(self) -> None:
        if self.running:
            self._previous = signal.signal(
                self.signum,
                lambda *_: self._reactor.callFromThread(self._action),
            )


class ExitCleanlyOnSIGTERM(OnSignal):
    """
    Makes SIGTERM (systemd's stop) a clean shutdown with exit status 0: twistd's own
    handler would end the process by re-raising the signal once the reactor stopped.
    """

    def __init__(self, reactor: Any) -> None:
        super().__init__(signal.SIGTERM, self._stop, reactor)
        self._stopping = False

    def _stop(self) -> None:
        if self._stopping:
            return  # a second SIGTERM while draining changes nothing
        self._stopping = True
        _log.info("Received SIGTERM, shutting down.")
        self._reactor.stop()
