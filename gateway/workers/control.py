# -*- test-case-name: tests.workers.test_control -*-
"""
The control channel between the parent and each worker: Twisted's AMP over a
Unix socket pair (the worker's end is its file descriptor 3).

The worker calls L{Ready} once it serves its listeners and L{Status} whenever
its broker session comes or goes; one that cannot start calls L{Refused}
instead of L{Ready}, then exits. The parent calls L{Ping} (which also tells
the broker session's state), L{Reload} (as SIGHUP does), L{Stop} (drain and
exit, as SIGTERM does) and L{Metrics} (the worker's metrics, for the parent's
C{/metrics}).
"""

from __future__ import annotations

import zlib

from twisted.protocols import amp

__all__ = [
    "CONTROL_FD",
    "Metrics",
    "Ping",
    "Ready",
    "Refused",
    "Reload",
    "Status",
    "Stop",
    "pack",
    "unpack",
]

#: The worker's file descriptor of its end of the control channel.
CONTROL_FD = 3


class Ready(amp.Command):
    """Worker to parent: it serves every listener; C{connected} as in L{Status}."""

    arguments = [(b"worker", amp.Integer()), (b"connected", amp.Boolean())]


class Refused(amp.Command):
    """
    Worker to parent: it cannot start and exits; C{error} is the one line a
    single process would stop with.
    """

    arguments = [(b"error", amp.Unicode())]


class Status(amp.Command):
    """Worker to parent: its broker session is up (C{connected}) or down."""

    arguments = [(b"connected", amp.Boolean())]
    requiresAnswer = False


class Ping(amp.Command):
    """Parent to worker: are you there? The answer tells the broker session."""

    response = [(b"connected", amp.Boolean())]


class Reload(amp.Command):
    """Parent to worker: reload as on SIGHUP; the answer says what was refused."""

    response = [(b"refused", amp.ListOf(amp.Unicode()))]


class Stop(amp.Command):
    """Parent to worker: stop taking connections, drain, exit."""


class Metrics(amp.Command):
    """
    Parent to worker: its metrics in the Prometheus text format, compressed
    (see L{pack}: one AMP value holds at most 65535 bytes).
    """

    response = [(b"text", amp.String())]


def pack(text: bytes) -> bytes:
    """C{text} compressed to travel as one AMP value."""
    return zlib.compress(text, 6)


def unpack(data: bytes) -> bytes:
    """The text L{pack} compressed."""
    return zlib.decompress(data)
