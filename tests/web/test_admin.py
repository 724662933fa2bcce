"""
The admin listener: /healthz, /readyz and /metrics for load
balancers and Prometheus, and nothing else.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.errors import Code, GatewayError
from gateway.metrics import GatewayMetrics
from gateway.web.admin import AdminRouter
from gateway.web.messages import API, AccessRecord, HTTPRequest, HTTPResponse
from gateway.web.server import HTTPServerFactory
from tests.brokers import Mosquitto, free_port, poll
from tests.fakes import FakePublisher
from tests.gateway import RunningGateway, curl


def get(path: bytes, method: str = "GET", **headers: bytes) -> HTTPRequest:
    return HTTPRequest(
        method=method,
        path=path,
        headers=tuple((k.encode(), v) for k, v in headers.items()),
    )


class AdminRouterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.publisher = FakePublisher(connected=False)
        self.metrics = GatewayMetrics(Clock(), process_metrics=False)
        self.router = AdminRouter(self.publisher, self.metrics)

    def handle(self, request: HTTPRequest) -> HTTPResponse:
        response = self.router.handle(request)
        assert isinstance(response, HTTPResponse)
        return response

    def test_healthz(self) -> None:
        """/healthz is 200 whatever the broker does."""
        response = self.handle(get(b"/healthz"))
        self.assertEqual((response.status, response.body), (200, b"ok\n"))

    def test_readyz(self) -> None:
        """/readyz follows the broker session: 503 while it is down, 200 while up."""
        response = self.handle(get(b"/readyz"))
        self.assertEqual(response.status, 503)
        self.assertIn(("Retry-After", "1"), response.headers)
        self.publisher.set_connected(True)
        response = self.handle(get(b"/readyz"))
        self.assertEqual((response.status, response.body), (200, b"ready\n"))

    def test_metrics(self) -> None:
        """/metrics is the Prometheus text of the gateway's registry."""
        self.metrics.observe_response(
            AccessRecord(
                "2024-05-01T12:00:00.000Z",
                "127.0.0.1:5000",
                "POST",
                "/topics/a",
                "1.1",
                401,
                0,
                1.0,
                None,
                None,
                None,
                API.TOPICS,
            )
        )
        response = self.handle(get(b"/metrics"))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.log.api, API.ADMIN)
        self.assertIn(
            ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
            response.headers,
        )
        self.assertIn(
            b'mqtt_http_gateway_auth_failures_total{api="topics"} 1.0', response.body
        )
        response = self.handle(
            get(b"/metrics", accept=b"application/openmetrics-text; version=1.0.0")
        )
        self.assertTrue(
            dict(response.headers)["Content-Type"].startswith(
                "application/openmetrics-text"
            )
        )

    def test_openapi(self) -> None:
        """/openapi.json is the OpenAPI 3.1 description as JSON, naming every
        device-facing and admin operation."""
        import json

        response = self.handle(get(b"/openapi.json"))
        self.assertEqual(response.status, 200)
        self.assertIn(("Content-Type", "application/json"), response.headers)
        document = json.loads(response.body)
        self.assertEqual(document["openapi"], "3.1.0")
        self.assertEqual(
            set(document["paths"]),
            {
                "/topics/{topic}",
                "/api/v5/publish",
                "/api/v5/publish/bulk",
                "/healthz",
                "/readyz",
                "/metrics",
                "/openapi.json",
            },
        )

    def test_without_metrics(self) -> None:
        """Without metrics, /metrics is an unknown path."""
        self.router = AdminRouter(self.publisher)
        self.assertEqual(self.handle(get(b"/metrics")).status, 404)
        self.assertEqual(self.handle(get(b"/healthz")).status, 200)

    def test_other_paths(self) -> None:
        """The device APIs are not served here, nor anything else: 404."""
        for path in (b"/", b"/topics/home", b"/healthz/", b"/HEALTHZ", b"/metrics.txt"):
            self.assertEqual(self.handle(get(path)).status, 404, path)
            self.assertEqual(self.handle(get(path, "POST")).status, 404, path)

    def test_other_methods(self) -> None:
        """Only GET and HEAD: other methods are 405 with Allow."""
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
            response = self.handle(get(b"/healthz", method))
            self.assertEqual(response.status, 405)
            self.assertIn(("Allow", "GET, HEAD"), response.headers)
        self.assertEqual(self.handle(get(b"/readyz", "HEAD")).status, 503)

    def test_render_error(self) -> None:
        """Errors the HTTP server finds itself are plain text with their status."""
        response = self.router.render_error(
            get(b""), GatewayError(Code.PayloadTooLarge, "too large")
        )
        self.assertEqual((response.status, response.body), (413, b"too large\n"))


class AdminServerTests(SynchronousTestCase):
    """The router behind the gateway's own HTTP server, bytes in, bytes out."""

    def setUp(self) -> None:
        self.publisher = FakePublisher(connected=False)
        self.metrics = GatewayMetrics(Clock(), process_metrics=False)
        self.factory = HTTPServerFactory(
            AdminRouter(self.publisher, self.metrics), max_body=4096, clock=Clock()
        )
        self.metrics.watch_connections(self.factory)

    def exchange(self, request: bytes) -> bytes:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(request)
        output: bytes = transport.value()
        return output

    def test_requests(self) -> None:
        """curl-like requests get complete HTTP responses."""
        out = self.exchange(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        self.assertTrue(out.endswith(b"\r\n\r\nok\n"), out)
        out = self.exchange(b"GET /readyz?verbose HTTP/1.0\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), out)
        out = self.exchange(b"HEAD /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        self.assertTrue(out.endswith(b"\r\n\r\n"), out)
        out = self.exchange(
            b"POST /metrics HTTP/1.1\r\nHost: admin\r\nContent-Length: 2\r\n\r\nhi"
        )
        self.assertTrue(out.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n"), out)
        self.assertIn(b"\r\nAllow: GET, HEAD\r\n", out)
        out = self.exchange(b"GET /topics/home HTTP/1.1\r\nHost: admin\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 404 Not Found\r\n"), out)

    def test_metrics_body(self) -> None:
        """/metrics over HTTP: the open-connections gauge counts this very
        connection."""
        out = self.exchange(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
        head, _, body = out.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Type: text/plain; version=0.0.4; charset=utf-8", head)
        self.assertIn(b"mqtt_http_gateway_http_open_connections 1.0\n", body)


class AdminListenerTests(TestCase):
    """The assembled gateway with an admin listener, curl as the client."""

    timeout = 60

    async def test_admin_listener(self) -> None:
        """The admin endpoint answers health, readiness and metrics after real
        traffic; the device port does not serve them, nor the admin port the
        API."""
        broker = Mosquitto()
        self.addCleanup(broker.stop)
        await broker.start()
        admin = f"http://127.0.0.1:{free_port()}"
        gateway = RunningGateway(
            f'[mqtt]\nbrokers = ["mqtt://127.0.0.1:{broker.port}"]\n'
            '[auth]\nallow_anonymous = true\n[log]\naccess = ""\n',
            "--admin",
            f"tcp:{admin.rsplit(':', 1)[1]}:interface=127.0.0.1",
        )
        self.addCleanup(gateway.stop)
        await gateway.start()
        self.assertEqual((await curl(f"{admin}/healthz")).status, 200)
        self.assertEqual((await curl(f"{admin}/readyz")).status, 200)
        published = await curl("-X", "POST", "--data", "x", gateway.topic_url("a"))
        self.assertEqual(published.status, 200)
        self.assertEqual((await curl(f"{gateway.url}/metrics")).status, 400)
        self.assertEqual((await curl(f"{admin}/topics/a")).status, 404)
        metrics = await curl(f"{admin}/metrics")
        self.assertEqual(metrics.status, 200)
        body = metrics.body.decode()
        for line in (
            'mqtt_http_gateway_http_requests_total{api="topics",http_version="1.1",'
            'status="200"} 1.0',
            'mqtt_http_gateway_http_requests_total{api="other",http_version="1.1",'
            'status="400"} 1.0',
            'mqtt_http_gateway_publish_duration_seconds_count{outcome="ok"} 1.0',
            "mqtt_http_gateway_broker_connected 1.0",
            "mqtt_http_gateway_inflight_messages 0.0",
            f'mqtt_http_gateway_broker_info{{broker="mqtt://127.0.0.1:{broker.port}",'
            'protocol="5"} 1.0',
        ):
            self.assertIn(line + "\n", body)
        await broker.stop()
        await gateway_disconnected(gateway)
        self.assertEqual((await curl(f"{admin}/readyz")).status, 503)
        self.assertEqual((await curl(f"{admin}/healthz")).status, 200)


async def gateway_disconnected(gateway: RunningGateway) -> None:
    from twisted.internet import reactor

    await poll(
        reactor,
        lambda: not gateway.session.connected,
        10,
        lambda: "the gateway did not notice the broker going away",
    )
