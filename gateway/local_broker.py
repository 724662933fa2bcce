# -*- test-case-name: tests.test_embedded,tests.test_mosquitto -*-
"""
What every embedded broker service has: the address it listens on and the reactor
it runs with. L{gateway.embedded} (amqtt) and L{gateway.mosquitto} build on it.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service

from gateway.clock import default_clock

__all__ = ["LocalBrokerService"]


class LocalBrokerService(Service):
    """
    A broker the daemon runs itself on C{host:port}.

    @ivar host: the address it listens on.
    @ivar port: the port it listens on.
    """

    def __init__(self, host: str, port: int, reactor: Any = None) -> None:
        """
        @param reactor: what the service schedules and hands results over with;
            the global reactor when C{None}.
        """
        self.host = host
        self.port = port
        self._reactor: Any = default_clock(reactor)

    @property
    def address(self) -> str:
        """C{host:port}, as written in log lines and errors."""
        return f"{self.host}:{self.port}"
