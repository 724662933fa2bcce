# -*- test-case-name: tests.workers.test_metrics -*-
"""
C{/metrics} of the parent: every worker's metrics together, each series with a
C{worker} label, plus the parent's own (workers configured, serving, restarts).

Why the parent collects over the control channel rather than using
prometheus-client's multiprocess mode: the gateway's metrics are plain counts
kept by a custom collector (L{gateway.metrics.GatewayMetrics}: a dict update
on the request path, families built only when scraped), and custom collectors
do not work in multiprocess mode, which would put a lock and an mmap write on
every request instead. Collecting also keeps what an operator needs per worker
apart: whether each worker has its broker session, its in-flight window, its
process's CPU and memory (C{process_*}); sums over workers are one PromQL
C{sum without (worker)} away.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from twisted.internet.defer import Deferred

from gateway.metrics import PREFIX
from gateway.workers.control import Metrics, unpack
from gateway.workers.supervisor import Supervisor

__all__ = ["WorkersMetrics", "merge"]


def merge(texts: Iterable[tuple[int, bytes]]) -> list[Metric]:
    """
    The families of each worker's Prometheus text, merged by name, every
    sample labelled with C{worker="N"}.
    """
    families: dict[str, Metric] = {}
    for number, text in texts:
        for family in text_string_to_metric_families(text.decode("utf-8")):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            merged.samples.extend(
                Sample(
                    s.name,
                    {"worker": str(number), **s.labels},
                    s.value,
                    s.timestamp,
                    s.exemplar,
                )
                for s in family.samples
            )
    return list(families.values())


class WorkersMetrics:
    """What the parent's C{/metrics} shows (see the module docstring)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def render(self, accept: str | None = None) -> Deferred[tuple[bytes, str]]:
        """Ask every worker, then encode as C{Accept} (C{accept}) asks."""

        def encode(answers: list[tuple[int, Any]]) -> tuple[bytes, str]:
            families = merge(
                (number, unpack(answer["text"]))
                for number, answer in answers
                if answer["text"]
            )
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Families([*self._own(), *families]))
            encoder, content_type = choose_encoder(accept or "")
            return encoder(registry), content_type

        return self.supervisor.call_all(Metrics).addCallback(encode)

    def _own(self) -> list[Metric]:
        supervisor = self.supervisor
        serving = GaugeMetricFamily(
            PREFIX + "worker_serving",
            "1 while the worker process runs and serves the listeners, else 0.",
            labels=("worker",),
        )
        for number, state in sorted(supervisor.states.items()):
            serving.add_metric((str(number),), 1 if state.serving else 0)
        return [
            GaugeMetricFamily(
                PREFIX + "workers",
                "Worker processes configured ([server] workers).",
                value=supervisor.count,
            ),
            serving,
            CounterMetricFamily(
                PREFIX + "worker_restarts",
                "Worker processes started again after they died.",
                value=supervisor.restarts,
            ),
        ]


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
