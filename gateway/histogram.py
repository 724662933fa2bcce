# -*- test-case-name: tests.test_metrics -*-
"""
The histograms of L{gateway.metrics}: counted without locks on the request
path, rendered as Prometheus histogram families when scraped.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

from prometheus_client.metrics_core import HistogramMetricFamily


class Histogram:
    """
    Cumulative-bucket histogram counts, for one label set: plain integers
    updated on the request path, turned into a metric family when scraped.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = 0
        result = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            result.append((_le(bound), float(cumulative)))
        return result


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def histogram_family(
    name: str, help: str, label: str, histograms: Mapping[str, Histogram]
) -> HistogramMetricFamily:
    """The Prometheus family of C{histograms}, one series per value of C{label}."""
    family = HistogramMetricFamily(name, help, labels=(label,))
    for value, histogram in sorted(histograms.items()):
        family.add_metric((value,), histogram.buckets(), histogram.total)
    return family
