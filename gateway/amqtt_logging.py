# -*- test-case-name: tests.test_embedded -*-
"""
amqtt's logging, made quiet: while an amqtt broker runs, its stdlib loggers let
only warnings and errors through, and those reach L{twisted.logger} (namespace
C{amqtt}) from the reactor thread instead of the root logger.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger, LogLevel

__all__ = ["QUIET_AMQTT_LOGGING", "QuietAmqttLogging"]

_AMQTT_LOG = Logger(namespace="amqtt")

# amqtt logs every connection and packet at INFO/DEBUG; only problems get through.
_QUIET_LOGGERS = ("amqtt", "transitions")


class _ForwardToTwisted(logging.Handler):
    """
    Re-emit stdlib log records of amqtt as L{twisted.logger} events, from the reactor
    thread.
    """

    _levels = {
        logging.WARNING: LogLevel.warn,
        logging.ERROR: LogLevel.error,
        logging.CRITICAL: LogLevel.critical,
    }

    def __init__(self, callFromThread: Callable[..., Any]) -> None:
        super().__init__(logging.WARNING)
        self._callFromThread = callFromThread

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message = f"{message}: {record.exc_info[1]}"
            level = self._levels.get(
                record.levelno,
                LogLevel.warn if record.levelno < logging.ERROR else LogLevel.error,
            )
            self._callFromThread(
                _AMQTT_LOG.emit, level, "amqtt: {message}", message=message
            )
        except Exception:
            self.handleError(record)


class QuietAmqttLogging:
    """
    Reference-counted change of the global stdlib logging setup: amqtt's loggers at
    WARNING, their records forwarded to twisted.logger instead of the root logger.
    """

    def __init__(self) -> None:
        self._users = 0
        self._handler: _ForwardToTwisted | None = None
        self._saved: dict[str, tuple[int, bool]] = {}
        self._lock = threading.Lock()

    def acquire(self, callFromThread: Callable[..., Any]) -> None:
        """
        Make amqtt quiet (for the first user), its warnings and errors handed to
        the reactor with C{callFromThread}.
        """
        with self._lock:
            self._users += 1
            if self._users > 1:
                return
            self._handler = _ForwardToTwisted(callFromThread)
            for name in _QUIET_LOGGERS:
                logger = logging.getLogger(name)
                self._saved[name] = (logger.level, logger.propagate)
                logger.setLevel(logging.WARNING)
            amqtt = logging.getLogger("amqtt")
            amqtt.propagate = False
            amqtt.addHandler(self._handler)

    def release(self) -> None:
        """Put the logging setup back as it was once the last user has gone."""
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            amqtt = logging.getLogger("amqtt")
            if self._handler is not None:
                amqtt.removeHandler(self._handler)
                self._handler = None
            for name, (level, propagate) in self._saved.items():
                logger = logging.getLogger(name)
                logger.setLevel(level)
                logger.propagate = propagate
            self._saved.clear()


#: The one setup of the process: the stdlib logging configuration is global.
QUIET_AMQTT_LOGGING = QuietAmqttLogging()
