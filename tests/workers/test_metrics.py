# -*- test-case-name: tests.workers.test_metrics -*-
"""
The parent's C{/metrics}: every worker's families merged, each sample labelled
with its worker, and the parent's own series; asked of the workers over the
control channel (a fake supervisor here).
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from gateway.metrics import GatewayMetrics
from gateway.web.messages import API, AccessRecord
from gateway.workers.control import Metrics, pack, unpack
from gateway.workers.metrics import WorkersMetrics, merge
from gateway.workers.policy import WorkerState


def worker_text(responses: int) -> bytes:
    """A worker's metrics after C{responses} 200s of API 1."""
    metrics = GatewayMetrics(Clock(), process_metrics=False)
    for _ in range(responses):
        metrics.observe_response(
            AccessRecord(
                time="2026-01-01T00:00:00Z",
                peer="127.0.0.1:1",
                method="POST",
                path="/topics/a",
                http_version="1.1",
                status=200,
                bytes=0,
                duration_ms=1.0,
                client_id=None,
                user=None,
                message_id=None,
                api=API.TOPICS,
            )
        )
    return metrics.render()[0]


class FakeSupervisor:
    def __init__(self, texts: dict[int, bytes]) -> None:
        self.texts = texts
        self.count = 2
        self.restarts = 3
        self.states = {1: WorkerState(1, running=True, serving=True), 2: WorkerState(2)}

    def call_all(
        self, command: type[amp.Command], **arguments: Any
    ) -> Deferred[list[tuple[int, Any]]]:
        assert command is Metrics
        return succeed([(n, {"text": pack(t)}) for n, t in self.texts.items()])


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


class MergeTests(SynchronousTestCase):
    def test_worker_label(self) -> None:
        """Each worker's samples keep their labels and gain worker="N"."""
        merged = merge([(1, worker_text(2)), (2, worker_text(5))])
        requests = [f for f in merged if f.name.endswith("http_requests")]
        self.assertEqual(len(requests), 1)
        self.assertEqual(
            sorted((s.labels["worker"], s.value) for s in requests[0].samples),
            [("1", 2.0), ("2", 5.0)],
        )
        self.assertEqual(requests[0].samples[0].labels["api"], "topics")

    def test_render(self) -> None:
        """The parent's exposition: the workers' series and its own."""
        supervisor = FakeSupervisor({1: worker_text(2), 2: worker_text(5)})
        rendered: tuple[bytes, str] = self.successResultOf(
            WorkersMetrics(supervisor).render()  # type: ignore[arg-type]
        )
        body, content_type = rendered
        self.assertTrue(content_type.startswith("text/plain"))
        found = samples(body)
        prefix = "mqtt_http_gateway_"
        self.assertEqual(
            found[
                (
                    prefix + "http_requests_total",
                    (
                        ("api", "topics"),
                        ("http_version", "1.1"),
                        ("status", "200"),
                        ("worker", "2"),
                    ),
                )
            ],
            5.0,
        )
        self.assertEqual(found[(prefix + "workers", ())], 2.0)
        self.assertEqual(found[(prefix + "worker_restarts_total", ())], 3.0)
        self.assertEqual(found[(prefix + "worker_serving", (("worker", "1"),))], 1.0)
        self.assertEqual(found[(prefix + "worker_serving", (("worker", "2"),))], 0.0)

    def test_openmetrics(self) -> None:
        """A scraper asking for OpenMetrics gets it."""
        supervisor = FakeSupervisor({1: worker_text(1)})
        rendered: tuple[bytes, str] = self.successResultOf(
            WorkersMetrics(supervisor).render(  # type: ignore[arg-type]
                "application/openmetrics-text; version=1.0.0"
            )
        )
        body, content_type = rendered
        self.assertTrue(content_type.startswith("application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_pack(self) -> None:
        """What travels over the channel comes back unchanged."""
        text = worker_text(3)
        self.assertEqual(unpack(pack(text)), text)
        self.assertLess(len(pack(text * 20)), 65535)
