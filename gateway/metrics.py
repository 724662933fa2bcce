# -*- test-case-name: tests.test_metrics -*-
"""
What C{GET /metrics} on the admin listener shows, in the
Prometheus text format.

L{GatewayMetrics} keeps its own L{CollectorRegistry} (never prometheus-client's
global one, so two gateways in one process, as in the tests, do not mix). It
learns about traffic from what it is handed:

  - L{GatewayMetrics.observe_response}: the L{AccessRecord} of every HTTP
    response (what the HTTP server gives its C{access_log}; pass both with
    L{compose}), which names the API that answered;
  - L{gateway.measured.MeasuredPublisher}: an L{IPublisher} decorator timing
    each publish from the hand-over to the broker's acknowledgement (or the
    failure), reported to L{GatewayMetrics.observe_publish};

and reads the state of what it watches when it is scraped: the publisher's
L{PublisherStatus} (L{GatewayMetrics.watch_publisher}; reconnections are heard
from its observers while the service runs), the HTTP server factories
(L{GatewayMetrics.watch_connections}) and the TLS settings
(L{GatewayMetrics.watch_tls}).

Counts are plain integers updated in the reactor thread and turned into metric
families only when scraped: the request path pays a dict update, not a lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime

from gateway import __version__
from gateway.clock import default_clock
from gateway.histogram import Histogram, histogram_family
from gateway.interfaces import IPublisher
from gateway.status import PublisherStatus
from gateway.web.messages import API, AccessRecord

__all__ = [
    "PREFIX",
    "GatewayMetrics",
    "api_label",
    "compose",
]

PREFIX = "mqtt_http_gateway_"

# From a loopback broker's sub-millisecond acks to the default publish timeout.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def compose(
    *observers: Callable[[AccessRecord], None] | None,
) -> Callable[[AccessRecord], None] | None:
    """
    One C{access_log} callable for the HTTP server that hands each response
    record to every observer given, in order; C{None}s are left out.

    @return: C{None} when no observer is left (the server then builds no
        records), the observer itself when only one is.
    """
    present = [observer for observer in observers if observer is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    def observe(record: AccessRecord) -> None:
        for observer in present:
            observer(record)

    return observe


#: The C{api} label of each API's requests: API 1 and API 2 have their own,
#: every other request (the EMQX-compatible API included) counts as C{"other"}.
_API_LABELS = {API.TOPICS: "topics", API.ALIYUN: "aliyun", API.EMQX: "emqx"}


def api_label(api: API) -> str:
    """The C{api} label of the requests that C{api} answered."""
    return _API_LABELS.get(api, "other")


class OpenConnections(Protocol):
    """What L{GatewayMetrics.watch_connections} reads: an HTTP server factory."""

    open_connections: int


class RefusedCertificates(Protocol):
    """What L{GatewayMetrics.watch_tls} reads: a L{ReloadableServerTLS}."""

    @property
    def refused_certificates(self) -> int:
        """How many client certificates failed verification so far."""


class RedisState(Protocol):
    """What L{GatewayMetrics.watch_redis} reads: a L{RedisHealth}."""

    up: bool
    fallbacks: int


class GatewayMetrics(Service):
    """
    The gateway's metrics and the registry they are exposed from.

    As a service it observes the watched publisher, to count reconnections
    (see L{watch_publisher}).

    @ivar registry: the registry to expose (L{render} does).
    """

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        process_metrics: bool = True,
    ) -> None:
        """
        @param clock: the time source; the global reactor if C{None}.
        @param process_metrics: whether to include prometheus-client's
            C{process_*} series (CPU, memory, open files of this process).
        """
        clock = default_clock(clock)
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests: dict[tuple[str, str, str], int] = {}
        self._refusals: dict[tuple[str, str], int] = {}
        self._durations: dict[str, Histogram] = {}
        self._publishes: dict[str, Histogram] = {}
        self._publisher: IPublisher | None = None
        self._factories: list[OpenConnections] = []
        self._tls: list[RefusedCertificates] = []
        self._redis: RedisState | None = None
        self._was_connected: bool | None = None
        self._reconnects = 0
        self._stop_observing: Callable[[], None] | None = None
        self.registry.register(_Collector(self))
        if process_metrics:
            ProcessCollector(registry=self.registry)

    # -- what is observed

    def observe_response(self, record: AccessRecord) -> None:
        """
        Count one HTTP response from its access record (the API that answered,
        the status, HTTP version and duration).
        """
        api = _API_LABELS.get(record.api, "other")
        status = str(record.status)
        key = (api, status, record.http_version)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        if status in _REFUSALS:
            refusal = (api, status)
            self._refusals[refusal] = self._refusals.get(refusal, 0) + 1
        histogram = self._durations.get(api)
        if histogram is None:
            histogram = self._durations[api] = Histogram(LATENCY_BUCKETS)
        histogram.observe(record.duration_ms / 1000.0)

    def observe_publish(self, seconds: float, ok: bool) -> None:
        """
        Count one publish that took C{seconds} from hand-over to the broker's
        acknowledgement (C{ok}) or to its failure.
        """
        outcome = "ok" if ok else "error"
        histogram = self._publishes.get(outcome)
        if histogram is None:
            histogram = self._publishes[outcome] = Histogram(LATENCY_BUCKETS)
        histogram.observe(seconds)

    # -- what is watched

    def watch_publisher(self, publisher: IPublisher) -> None:
        """
        Report the L{PublisherStatus} of C{publisher}, read when scraped:
        connected or not, the current broker, in-flight and queued messages,
        broker mode's open sender sessions.

        Reconnections are counted from the publisher's observers while the
        service runs: a change from down to up after it was up once is one.
        """
        self._publisher = publisher
        self._was_connected = None

    def watch_connections(self, factory: OpenConnections) -> None:
        """
        Add the open connections of C{factory} (an L{HTTPServerFactory}) to
        the open-connections gauge.
        """
        self._factories.append(factory)

    def watch_tls(self, tls: RefusedCertificates) -> None:
        """
        Add the refused client certificates of C{tls} (a
        L{ReloadableServerTLS}, counted across reloads) to the TLS refusals.
        """
        self._tls.append(tls)

    def watch_redis(self, redis: RedisState) -> None:
        """Report whether the shared Redis is up, and the decisions taken
        without it."""
        self._redis = redis

    # -- service

    def startService(self) -> None:
        """Start hearing the watched publisher's status changes."""
        super().startService()
        if self._publisher is not None:
            self._was_connected = None
            self.status_changed(self._publisher.status())
            self._stop_observing = self._publisher.observe(self.status_changed)

    def stopService(self) -> None:
        """Stop hearing them."""
        super().stopService()
        if self._stop_observing is not None:
            self._stop_observing()
        self._stop_observing = None

    def status_changed(self, status: PublisherStatus) -> None:
        """
        The watched publisher's status is now C{status}; a change from down to
        up after it was up once is a reconnection.
        """
        connected = status.connected
        if connected and self._was_connected is False:
            self._reconnects += 1
        if connected or self._was_connected is not None:
            self._was_connected = connected

    # -- exposition

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """
        The metrics in the format the C{Accept} header value C{accept} asks for
        (OpenMetrics when asked, else the Prometheus text format 0.0.4).

        @return: the body and its C{Content-Type}.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def collect(self) -> Iterable[Metric]:
        """The metric families of the gateway (not the process ones)."""
        yield InfoMetricFamily(
            PREFIX + "build", "The gateway's version.", {"version": __version__}
        )
        requests = CounterMetricFamily(
            PREFIX + "http_requests",
            "HTTP responses sent, by API (topics, aliyun, other), status and "
            "HTTP version.",
            labels=("api", "status", "http_version"),
        )
        for (api, status, version), count in sorted(self._requests.items()):
            requests.add_metric((api, status, version), count)
        yield requests
        for status, name, help in _REFUSAL_FAMILIES:
            family = CounterMetricFamily(PREFIX + name, help, labels=("api",))
            for (api, refused), count in sorted(self._refusals.items()):
                if refused == status:
                    family.add_metric((api,), count)
            yield family
        yield histogram_family(
            PREFIX + "http_request_duration_seconds",
            "Time from a request's first byte to its response being written, by API.",
            "api",
            self._durations,
        )
        yield histogram_family(
            PREFIX + "publish_duration_seconds",
            "Time from handing a message to the broker session to the broker's "
            "acknowledgement (outcome ok) or the failure (outcome error).",
            "outcome",
            self._publishes,
        )
        yield from self._broker_families()
        if self._factories:
            yield GaugeMetricFamily(
                PREFIX + "http_open_connections",
                "Device-facing HTTP and HTTPS connections open now.",
                value=sum(f.open_connections for f in self._factories),
            )
        if self._tls:
            yield CounterMetricFamily(
                PREFIX + "tls_client_certificates_refused",
                "TLS handshakes refused because the client certificate did not "
                "verify (untrusted, expired, revoked ...).",
                value=sum(t.refused_certificates for t in self._tls),
            )
        redis = self._redis
        if redis is not None:
            yield GaugeMetricFamily(
                PREFIX + "redis_up",
                "Whether the Redis shared by the fleet answered the last call (1) "
                "or not (0).",
                value=int(redis.up),
            )
            yield CounterMetricFamily(
                PREFIX + "redis_fallbacks",
                "Rate-limit, failed-login and nonce decisions taken without Redis "
                "while it was unreachable (local, or 503 when failing closed).",
                value=redis.fallbacks,
            )

    def _broker_families(self) -> Iterable[Metric]:
        if self._publisher is None:
            return
        status = self._publisher.status()
        yield GaugeMetricFamily(
            PREFIX + "broker_connected",
            "1 while a broker session is up (broker mode: while a broker is "
            "reachable), else 0.",
            value=1 if status.connected else 0,
        )
        yield CounterMetricFamily(
            PREFIX + "broker_reconnects",
            "Times the broker connection came back after being down.",
            # The session counts its own; other publishers only tell changes.
            value=max(self._reconnects, status.reconnects),
        )
        if status.sessions is None:
            info = InfoMetricFamily(
                PREFIX + "broker",
                "The broker of the current session and its MQTT version.",
                labels=("broker", "protocol"),
            )
            if status.broker is not None:
                level = "5" if status.protocol_level == 5 else "3.1.1"
                info.add_metric((status.broker, level), {})
            yield info
            yield GaugeMetricFamily(
                PREFIX + "inflight_messages",
                "QoS 1/2 messages sent to the broker and not yet acknowledged.",
                value=status.inflight,
            )
            yield GaugeMetricFamily(
                PREFIX + "queued_messages",
                "Messages waiting for a broker session or for room in the "
                "in-flight window.",
                value=status.queued,
            )
        else:
            yield GaugeMetricFamily(
                PREFIX + "broker_sessions",
                "Broker sessions opened for senders (broker mode), connecting "
                "or connected.",
                value=status.sessions,
            )


# Statuses counted again on their own, for alerting without label arithmetic.
_REFUSAL_FAMILIES = (
    (
        "429",
        "rate_limited",
        "Requests refused with 429 (rate limits, failed-login limits, broker quota).",
    ),
    (
        "401",
        "auth_failures",
        "Requests refused with 401 (missing or wrong credentials).",
    ),
    (
        "403",
        "forbidden",
        "Requests refused with 403 (ACL denial, a client id other "
        "than the certificate's, the broker's not-authorized).",
    ),
)
_REFUSALS = frozenset(status for status, _, _ in _REFUSAL_FAMILIES)


class _Collector:
    """Hands the registry L{GatewayMetrics.collect} (a registry needs an
    object with C{collect}; a Service has other attributes it may probe)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics.collect()
