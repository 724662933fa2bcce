# -*- test-case-name: tests.test_metrics -*-
"""
L{MeasuredPublisher}: the publish latency that C{/metrics} shows, measured
around whichever publisher does the work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.interfaces import IPublisher
from gateway.metrics import GatewayMetrics
from gateway.model import Identity, Message, PublishResult
from gateway.status import PublisherStatus, StatusObserver


@implementer(IPublisher)
class MeasuredPublisher:
    """
    An L{IPublisher} that publishes through another and reports how long each
    publish took to L{GatewayMetrics.observe_publish}.

    @ivar wrapped: the publisher doing the work.
    """

    def __init__(
        self, publisher: IPublisher, metrics: GatewayMetrics, clock: IReactorTime
    ) -> None:
        """
        @param publisher: the publisher doing the work.
        @param metrics: where the durations go.
        @param clock: the time source.
        """
        self.wrapped = publisher
        self._metrics = metrics
        self._clock = clock

    @property
    def connected(self) -> bool:
        """The wrapped publisher's C{connected}."""
        return bool(self.wrapped.connected)

    def status(self) -> PublisherStatus:
        """The wrapped publisher's status."""
        return self.wrapped.status()  # type: ignore[no-any-return]

    def observe(self, observer: StatusObserver) -> Callable[[], None]:
        """Observe the wrapped publisher."""
        return self.wrapped.observe(observer)  # type: ignore[no-any-return]

    def publish(self, message: Message, identity: Identity) -> Deferred[PublishResult]:
        """
        Publish with the wrapped publisher; the result (or failure) passes
        through unchanged once its duration is counted.
        """
        start = self._clock.seconds()
        d = self.wrapped.publish(message, identity)
        d.addBoth(self._measured, start)
        return d

    def _measured(self, result: Any, start: float) -> Any:
        self._metrics.observe_publish(
            self._clock.seconds() - start, not isinstance(result, Failure)
        )
        return result
