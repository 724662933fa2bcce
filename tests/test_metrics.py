"""
The metrics of C{GET /metrics}: what operators graph and alert
on, in the Prometheus text format.
"""

from __future__ import annotations

from typing import Any, cast

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.errors import Code, GatewayError
from gateway.interfaces import IPublisher
from gateway.measured import MeasuredPublisher
from gateway.metrics import GatewayMetrics, api_label, compose
from gateway.model import Identity, Message, PublishResult
from gateway.mqtt.passthrough import PassthroughPublisher
from gateway.mqtt.publisher import SharedPublisher
from gateway.mqtt.session import Broker, BrokerSession, SessionSettings
from gateway.status import PublisherStatus
from gateway.web.messages import API, AccessRecord
from tests.fakes import FakePublisher, fails, succeeds

P = "mqtt_http_gateway_"


def record(
    api: API = API.TOPICS,
    status: int = 200,
    http_version: str = "1.1",
    duration_ms: float = 1.5,
) -> AccessRecord:
    """An access record as the HTTP server makes it."""
    return AccessRecord(
        time="2024-05-01T12:00:00.000Z",
        peer="127.0.0.1:5000",
        method="POST",
        path="/topics/home",
        http_version=http_version,
        status=status,
        bytes=0,
        duration_ms=duration_ms,
        client_id="c",
        user=None,
        message_id=None,
        api=api,
    )


def samples(
    metrics: GatewayMetrics,
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition, parsed back: (name, labels) -> value."""
    body, _ = metrics.render()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((P + name, frozenset(labels.items())))


class ComposeTests(SynchronousTestCase):
    def test_compose(self) -> None:
        """Both the access log and the metrics get every record; absent ones are
        left out, and with none the server is told to build no records."""
        seen: list[tuple[str, object]] = []

        def first(r: AccessRecord) -> None:
            seen.append(("first", r.status))

        def second(r: AccessRecord) -> None:
            seen.append(("second", r.status))

        self.assertIsNone(compose(None, None))
        self.assertIs(compose(None, first), first)
        both = compose(first, None, second)
        assert both is not None
        both(record(status=200))
        self.assertEqual(seen, [("first", 200), ("second", 200)])

    def test_api_label(self) -> None:
        """The api label comes from the API that answered, from a small fixed
        set."""
        self.assertEqual(api_label(API.TOPICS), "topics")
        self.assertEqual(api_label(API.ALIYUN), "aliyun")
        self.assertEqual(api_label(API.EMQX), "emqx")
        for api in (API.ADMIN, API.NONE):
            self.assertEqual(api_label(api), "other")


class ResponseMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = GatewayMetrics(Clock(), process_metrics=False)

    def test_requests(self) -> None:
        """Requests are counted by API, status and HTTP version."""
        for r in (
            record(),
            record(),
            record(http_version="1.0"),
            record(API.ALIYUN, status=400),
            record(API.NONE, status=400),
        ):
            self.metrics.observe_response(r)
        self.assertEqual(
            value(
                self.metrics,
                "http_requests_total",
                api="topics",
                status="200",
                http_version="1.1",
            ),
            2,
        )
        self.assertEqual(
            value(
                self.metrics,
                "http_requests_total",
                api="topics",
                status="200",
                http_version="1.0",
            ),
            1,
        )
        self.assertEqual(
            value(
                self.metrics,
                "http_requests_total",
                api="aliyun",
                status="400",
                http_version="1.1",
            ),
            1,
        )
        self.assertEqual(
            value(
                self.metrics,
                "http_requests_total",
                api="other",
                status="400",
                http_version="1.1",
            ),
            1,
        )

    def test_refusals(self) -> None:
        """429, 401 and 403 responses are counted on their own as well."""
        for status in (429, 429, 401, 403, 200):
            self.metrics.observe_response(record(status=status))
        self.metrics.observe_response(record(API.ALIYUN, status=401))
        self.assertEqual(value(self.metrics, "rate_limited_total", api="topics"), 2)
        self.assertEqual(value(self.metrics, "auth_failures_total", api="topics"), 1)
        self.assertEqual(value(self.metrics, "auth_failures_total", api="aliyun"), 1)
        self.assertEqual(value(self.metrics, "forbidden_total", api="topics"), 1)
        self.assertIsNone(value(self.metrics, "forbidden_total", api="aliyun"))

    def test_request_duration(self) -> None:
        """The request duration histogram has cumulative buckets in seconds."""
        for duration in (0.2, 3.0, 2000.0):
            self.metrics.observe_response(record(duration_ms=duration))
        name = "http_request_duration_seconds"
        self.assertEqual(
            value(self.metrics, name + "_bucket", api="topics", le="0.0005"), 1
        )
        self.assertEqual(
            value(self.metrics, name + "_bucket", api="topics", le="0.005"), 2
        )
        self.assertEqual(
            value(self.metrics, name + "_bucket", api="topics", le="1.0"), 2
        )
        self.assertEqual(
            value(self.metrics, name + "_bucket", api="topics", le="+Inf"), 3
        )
        self.assertEqual(value(self.metrics, name + "_count", api="topics"), 3)
        self.assertAlmostEqual(
            value(self.metrics, name + "_sum", api="topics") or 0, 2.0032
        )

    def test_text_format(self) -> None:
        """The exposition is the Prometheus text format by default, OpenMetrics
        when the scraper asks for it."""
        self.metrics.observe_response(record())
        body, content_type = self.metrics.render()
        self.assertEqual(content_type, "text/plain; version=0.0.4; charset=utf-8")
        self.assertIn(
            b'mqtt_http_gateway_http_requests_total{api="topics",http_version="1.1",'
            b'status="200"} 1.0\n',
            body,
        )
        self.assertIn(b"# TYPE mqtt_http_gateway_http_requests_total counter", body)
        self.assertIn(b"mqtt_http_gateway_build_info{version=", body)
        body, content_type = self.metrics.render(
            "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"
        )
        self.assertTrue(content_type.startswith("application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_own_registry(self) -> None:
        """Each gateway has its own registry: nothing lands in prometheus-client's
        global one, and two gateways in one process do not mix."""
        other = GatewayMetrics(Clock(), process_metrics=False)
        self.metrics.observe_response(record())
        self.assertIsNone(
            value(
                other,
                "http_requests_total",
                api="topics",
                status="200",
                http_version="1.1",
            )
        )
        self.assertNotIn(b"mqtt_http_gateway", _global_exposition())

    def test_process_metrics(self) -> None:
        """By default the process's own series (CPU, memory) are there too."""
        body, _ = GatewayMetrics(Clock()).render()
        self.assertIn(b"process_cpu_seconds_total", body)


def _global_exposition() -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(REGISTRY)


class PublishMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = GatewayMetrics(self.clock, process_metrics=False)
        self.inner = FakePublisher(FakePublisher.later, connected=False)
        self.publisher = MeasuredPublisher(self.inner, self.metrics, self.clock)

    def test_interface(self) -> None:
        """The measuring decorator is an IPublisher like the one it wraps."""
        verifyObject(IPublisher, self.publisher)
        self.inner.connected = True
        self.assertTrue(self.publisher.connected)

    def test_latency(self) -> None:
        """The time from hand-over to the broker's ack is observed; the result
        passes through unchanged."""
        d = self.publisher.publish(Message("t", b""), Identity("c"))
        self.clock.advance(0.003)
        result = PublishResult("A" * 32)
        self.inner.waiting[0].callback(result)
        self.assertIs(self.successResultOf(d), result)
        name = "publish_duration_seconds"
        self.assertEqual(
            value(self.metrics, name + "_bucket", outcome="ok", le="0.0025"), 0
        )
        self.assertEqual(
            value(self.metrics, name + "_bucket", outcome="ok", le="0.005"), 1
        )
        self.assertAlmostEqual(
            value(self.metrics, name + "_sum", outcome="ok") or 0, 0.003
        )

    def test_failure(self) -> None:
        """A failed publish is observed as an error and still fails."""
        d = self.publisher.publish(Message("t", b""), Identity("c"))
        self.clock.advance(10)
        error = GatewayError(Code.BrokerUnavailable, "no broker")
        self.inner.waiting[0].errback(error)
        self.assertIs(self.failureResultOf(d, GatewayError).value, error)
        self.assertEqual(
            value(self.metrics, "publish_duration_seconds_count", outcome="error"), 1
        )
        self.assertIsNone(
            value(self.metrics, "publish_duration_seconds_count", outcome="ok")
        )

    def test_immediate(self) -> None:
        """A publisher that answers at once is measured too."""

        immediate = FakePublisher(succeeds("B" * 32), connected=False)
        publisher = MeasuredPublisher(immediate, self.metrics, self.clock)
        self.successResultOf(publisher.publish(Message("t", b""), Identity("c")))
        self.assertEqual(
            value(self.metrics, "publish_duration_seconds_count", outcome="ok"), 1
        )

        refusing = FakePublisher(
            fails(GatewayError(Code.Forbidden, "no")), connected=False
        )
        failing = MeasuredPublisher(refusing, self.metrics, self.clock)
        self.failureResultOf(failing.publish(Message("t", b""), Identity("c")))


class BrokerMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = GatewayMetrics(self.clock, process_metrics=False)

    def test_shared_session(self) -> None:
        """Gateway mode: connection state, current broker, in-flight and queued
        messages, read from the session at scrape time."""
        publisher = FakePublisher(
            connected=False,
            status=PublisherStatus(
                connected=True,
                broker="mqtt://broker.example:1883",
                protocol_level=5,
                inflight=3,
                queued=7,
            ),
        )
        self.metrics.watch_publisher(
            MeasuredPublisher(publisher, self.metrics, self.clock)
        )
        self.assertEqual(value(self.metrics, "broker_connected"), 1)
        self.assertEqual(
            value(
                self.metrics,
                "broker_info",
                broker="mqtt://broker.example:1883",
                protocol="5",
            ),
            1,
        )
        self.assertEqual(value(self.metrics, "inflight_messages"), 3)
        self.assertEqual(value(self.metrics, "queued_messages"), 7)
        publisher.current = PublisherStatus(connected=False, queued=7)
        self.assertEqual(value(self.metrics, "broker_connected"), 0)
        self.assertNotIn(P + "broker_info", {name for name, _ in samples(self.metrics)})
        self.assertEqual(value(self.metrics, "inflight_messages"), 0)

    def test_real_session(self) -> None:
        """The properties read exist on the real BrokerSession."""
        session = BrokerSession(
            [Broker("mqtt://127.0.0.1:1", cast(Any, None))],
            SessionSettings(client_id="gateway"),
            clock=self.clock,
        )
        self.metrics.watch_publisher(SharedPublisher(session))
        self.assertEqual(value(self.metrics, "broker_connected"), 0)
        self.assertEqual(value(self.metrics, "queued_messages"), 0)

    def test_broker_mode(self) -> None:
        """Broker mode: reachability and the number of sender sessions."""
        publisher = PassthroughPublisher(
            [Broker("mqtt://127.0.0.1:1", cast(Any, None))],
            clock=self.clock,
            probe_interval=None,
        )
        self.metrics.watch_publisher(publisher)
        self.assertEqual(value(self.metrics, "broker_connected"), 1)
        self.assertEqual(value(self.metrics, "broker_sessions"), 0)

    def test_reconnects(self) -> None:
        """A connection that comes back after being lost is a reconnection; the
        first connection is not."""
        publisher = FakePublisher(connected=False)
        self.metrics.watch_publisher(publisher)
        self.metrics.startService()
        self.addCleanup(self.metrics.stopService)
        publisher.set_connected(True)
        self.assertEqual(value(self.metrics, "broker_reconnects_total"), 0)
        publisher.set_connected(False)
        publisher.set_connected(True)
        self.assertEqual(value(self.metrics, "broker_reconnects_total"), 1)
        # A scrape sees every change: the observer heard it when it happened.
        publisher.set_connected(False)
        self.assertEqual(value(self.metrics, "broker_connected"), 0)
        publisher.set_connected(True)
        self.assertEqual(value(self.metrics, "broker_reconnects_total"), 2)
        self.metrics.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        publisher.set_connected(False)
        publisher.set_connected(True)
        self.assertEqual(
            value(self.metrics, "broker_reconnects_total"), 2, "stopped observing"
        )
        self.assertEqual(len(publisher.observers._observers), 0)

    def test_session_reconnects(self) -> None:
        """A session's own count of reconnections shows even when the service
        did not hear them."""
        publisher = FakePublisher(
            connected=False, status=PublisherStatus(connected=True, reconnects=4)
        )
        self.metrics.watch_publisher(publisher)
        self.assertEqual(value(self.metrics, "broker_reconnects_total"), 4)

    def test_connections_and_tls(self) -> None:
        """Open connections of every watched factory and refused client
        certificates are read when scraped."""

        class Factory:
            open_connections = 2

        class TLS:
            refused_certificates = 5

        self.assertIsNone(value(self.metrics, "http_open_connections"))
        first, second = Factory(), Factory()
        self.metrics.watch_connections(first)
        self.metrics.watch_connections(second)
        self.metrics.watch_tls(TLS())
        second.open_connections = 1
        self.assertEqual(value(self.metrics, "http_open_connections"), 3)
        self.assertEqual(
            value(self.metrics, "tls_client_certificates_refused_total"), 5
        )
