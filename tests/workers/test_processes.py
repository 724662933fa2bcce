# -*- test-case-name: tests.workers.test_processes -*-
"""
C{[server] workers = 2} end to end: twistd starts the parent, which binds the
listeners and starts two worker processes; a real Mosquitto, curl as the
client, an independent paho subscriber, signals sent to the parent's pid.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.brokers import Mosquitto, Subscriber, free_port, poll
from tests.gateway import curl
from tests.workers.support import Parent, post_all


def workers_config(
    broker: int,
    http: str,
    *,
    admin: int | None = None,
    extra: str = "",
    auth: str = "allow_anonymous = true\n",
    access: str = "",
) -> str:
    """A configuration of two workers serving C{http}, publishing to C{broker}."""
    return (
        "[server]\nworkers = 2\n"
        f'[http]\nlisten = ["{http}"]\n'
        f'[mqtt]\nbrokers = ["mqtt://127.0.0.1:{broker}"]\nprotocol = "5"\n'
        "publish_timeout = 5\n"
        f"[auth]\n{auth}"
        f'[log]\naccess = "{access}"\n'
        "[limits]\nrate = 0\n"
        + (f'[admin]\nlisten = "tcp:{admin}:interface=127.0.0.1"\n' if admin else "")
        + extra
    )


def publishers(broker: Mosquitto) -> set[str]:
    """The client ids the broker received a PUBLISH from."""
    return set(re.findall(r"Received PUBLISH from (\S+)", broker.log()))


def sleep(seconds: float) -> Deferred[None]:
    from twisted.internet import reactor

    return deferLater(reactor, seconds, lambda: None)


class WorkersCase(TestCase):
    timeout = 90

    def reactor(self) -> Any:
        from twisted.internet import reactor

        return reactor

    async def broker(self, **options: Any) -> Mosquitto:
        broker = Mosquitto(**options)
        self.addCleanup(broker.stop)
        await broker.start()
        return broker

    async def subscriber(self, broker: Mosquitto, topic: str = "#") -> Subscriber:
        subscriber = Subscriber("127.0.0.1", broker.port, topic, qos=1)
        self.addCleanup(subscriber.stop)
        await subscriber.start()
        return subscriber

    async def parent(self, config: str, **options: Any) -> Parent:
        parent = Parent(self, config, **options)
        await parent.serving()
        return parent

    async def ready(self, admin: int, timeout: float = 15) -> None:
        """Return once the admin listener's /readyz answers 200."""
        for _ in range(int(timeout * 10)):
            if (await curl(f"http://127.0.0.1:{admin}/readyz")).status == 200:
                return
            await sleep(0.1)
        self.fail("/readyz never became ready")

    def urls(self, base: str, prefix: str, count: int) -> list[str]:
        return [f"{base}/topics/{prefix}/{i}?qos=1" for i in range(count)]

    async def assertStops(self, parent: Parent) -> None:
        """SIGTERM: every worker exits, then the parent, with status 0."""
        parent.signal("TERM")
        self.assertEqual(await parent.exit_code(), 0, parent.output)
        self.assertEqual(
            len(
                re.findall(r"Worker \d \(pid \d+\) exited with status 0", parent.output)
            ),
            2,
            parent.output,
        )
        self.assertNotIn("Traceback", parent.output)


class ServingTests(WorkersCase):
    async def test_both_workers_serve(self) -> None:
        """
        Requests on one port are served by both workers, each publishing over
        its own broker session (client id ...-1 and ...-2); /readyz is ready
        and /metrics counts each worker's requests.
        """
        broker = await self.broker()
        subscriber = await self.subscriber(broker)
        port, admin = free_port(), free_port()
        parent = await self.parent(
            workers_config(broker.port, f"tcp:{port}:interface=127.0.0.1", admin=admin)
        )
        self.assertIn("rate 0/s", parent.output)
        results = await post_all(
            self.urls(f"http://127.0.0.1:{port}", "both", 60), "--data", "x"
        )
        self.assertEqual([status for status, _ in results], [200] * 60)
        messages = await subscriber.wait_for(60)
        self.assertEqual(
            sorted(m.topic for m in messages), sorted(f"both/{i}" for i in range(60))
        )
        hostname = socket.gethostname()
        self.assertEqual(
            publishers(broker),
            {f"mqtt-http-gateway-{hostname}-1", f"mqtt-http-gateway-{hostname}-2"},
        )
        ready = await curl(f"http://127.0.0.1:{admin}/readyz")
        self.assertEqual(ready.status, 200)
        metrics = (await curl(f"http://127.0.0.1:{admin}/metrics")).body.decode()
        served = {
            worker: float(count)
            for worker, count in re.findall(
                r'http_requests_total\{api="topics",http_version="1.1",'
                r'status="200",worker="(\d)"\} (\S+)',
                metrics,
            )
        }
        self.assertEqual(set(served), {"1", "2"}, metrics)
        self.assertEqual(sum(served.values()), 60)
        self.assertIn('mqtt_http_gateway_broker_connected{worker="2"} 1.0', metrics)
        self.assertIn("mqtt_http_gateway_workers 2.0", metrics)
        await self.assertStops(parent)

    async def test_killed_worker_restarted(self) -> None:
        """
        kill -9 of a worker: the other keeps answering every request with 200
        while the parent starts a new worker 1, which serves again.
        """
        broker = await self.broker()
        port, admin = free_port(), free_port()
        parent = await self.parent(
            workers_config(broker.port, f"tcp:{port}:interface=127.0.0.1", admin=admin)
        )
        first = parent.worker_pids()[1]
        os.kill(first, signal.SIGKILL)
        statuses = []
        for round in range(10):
            results = await post_all(
                self.urls(f"http://127.0.0.1:{port}", f"kill{round}", 10),
                "--data",
                "x",
                parallel=2,
            )
            statuses += [status for status, _ in results]
        self.assertEqual(statuses, [200] * 100)
        await parent.wait_for(
            rf"Worker 1 \(pid {first}\) was killed by signal 9 after [\d.]+ s; "
            r"starting it again in 0.5 s"
        )
        await poll(
            self.reactor(),
            lambda: parent.worker_pids()[1] != first,
            10,
            lambda: parent.output,
        )
        await self.ready(admin)
        metrics = (await curl(f"http://127.0.0.1:{admin}/metrics")).body.decode()
        self.assertIn("mqtt_http_gateway_worker_restarts_total 1.0", metrics)
        self.assertIn('mqtt_http_gateway_worker_serving{worker="1"} 1.0', metrics)
        await self.assertStops(parent)
