"""
The clock a service schedules with: the one it was given, else the global reactor.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IReactorTime


def default_clock(clock: IReactorTime | None) -> IReactorTime:
    """
    C{clock}, or the global reactor when it is C{None}: imported only then, so that
    importing a module never installs a reactor and tests can pass a Clock.
    """
    if clock is not None:
        return clock
    from twisted.internet import reactor

    return cast(IReactorTime, reactor)
