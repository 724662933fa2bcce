# -*- test-case-name: tests.workers.test_policy -*-
"""
What makes a worker's service tree differ from a single process's: its
number, how many serve together, the listening sockets it adopted, and the
MQTT version of the parent's embedded broker when one runs.
"""

from __future__ import annotations

import attrs

from gateway.config import Config, LimitsConfig
from gateway.listeners import Endpoints
from gateway.workers.policy import divided_limits, share_of_limits

__all__ = ["WorkerRole"]


@attrs.frozen
class WorkerRole:
    """
    One worker among C{count}.

    @ivar number: 1 to C{count}; the C{{worker}} of C{[mqtt] client_id}.
    @ivar endpoints: the adopted listeners (no admin listener: the parent
        serves it).
    @ivar broker_protocol: the MQTT version of the parent's embedded broker,
        or C{None} when a broker is configured.
    """

    number: int
    count: int
    endpoints: Endpoints
    broker_protocol: str | None = None

    def limits(self, config: Config, limits: LimitsConfig) -> LimitsConfig:
        """The part of C{limits} this worker enforces (see L{share_of_limits})."""
        return share_of_limits(config, limits, self.count)

    def limits_alone(self, limits: LimitsConfig) -> LimitsConfig:
        """
        The part of C{limits} this worker enforces counting alone, shared
        limits or not: what it falls back to while the cluster's Redis is
        unreachable (see L{divided_limits}).
        """
        return divided_limits(limits, self.count)
