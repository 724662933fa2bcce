# -*- test-case-name: tests.workers.test_processes -*-
"""
C{[server] workers = 2} end to end: twistd starts the parent, which binds the
listeners and starts two worker processes; a real Mosquitto, curl as the
client, an independent paho subscriber, signals sent to the parent's pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.brokers import Mosquitto, Subscriber, free_port, poll
from tests.gateway import curl, password_file
from tests.workers.support import NotifyListener, Parent, post_all


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


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(_reactor(), seconds, lambda: None)


class WorkersCase(TestCase):
    timeout = 90

    async def broker(self) -> Mosquitto:
        """A Mosquitto for this test (it logs every PUBLISH and its sender)."""
        broker = Mosquitto()
        self.addCleanup(broker.stop)
        await broker.start()
        return broker

    async def parent(self, config: str, **options: Any) -> Parent:
        """The gateway's parent, once both workers serve with a broker session."""
        parent = Parent(self, config, **options)
        await parent.serving()
        return parent

    async def subscriber(self, broker: Mosquitto) -> Subscriber:
        """An independent paho subscriber to every topic, at QoS 1."""
        subscriber = Subscriber("127.0.0.1", broker.port, "#", qos=1)
        self.addCleanup(subscriber.stop)
        await subscriber.start()
        return subscriber

    async def until_both_serve(
        self,
        broker: Mosquitto,
        send: Callable[[int], Awaitable[list[int]]],
        rounds: int = 30,
    ) -> list[int]:
        """
        Send batches of requests (C{send(round)}, the statuses) until the
        broker has had a PUBLISH over each worker's session since now (which
        worker accepts a connection is the kernel's choice); every status.
        """
        mark = len(broker.log())
        statuses: list[int] = []
        for round in range(rounds):
            statuses += await send(round)
            served = re.findall(r"Received PUBLISH from (\S+)", broker.log()[mark:])
            if len(set(served)) >= 2:
                return statuses
        self.fail(f"one worker took every connection: {set(served)}")

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
        self.assertEqual(await parent.ended, 0, parent.output)
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
        base = f"http://127.0.0.1:{port}"

        async def send(round: int) -> list[int]:
            urls = self.urls(base, f"both/{round}", 20)
            return [status for status, _ in await post_all(urls, "--data", "x")]

        statuses = await self.until_both_serve(broker, send)
        self.assertEqual(statuses, [200] * len(statuses))
        messages = await subscriber.wait_for(len(statuses))
        self.assertEqual(
            sorted(m.topic for m in messages),
            sorted(
                f"both/{r}/{i}" for r in range(len(statuses) // 20) for i in range(20)
            ),
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
        self.assertEqual(sum(served.values()), len(statuses))
        self.assertIn('mqtt_http_gateway_broker_connected{worker="2"} 1.0', metrics)
        self.assertIn("mqtt_http_gateway_workers 2.0", metrics)
        await self.assertStops(parent)

    async def test_rate_divided(self) -> None:
        """
        Without a shared store each of the two workers enforces half of
        [limits] rate and burst (one log line says so): together they let
        through what one process would, not twice that.
        """
        broker = await self.broker()
        port, admin = free_port(), free_port()
        config = workers_config(
            broker.port, f"tcp:{port}:interface=127.0.0.1", admin=admin
        ).replace("[limits]\nrate = 0\n", "[limits]\nrate = 20\nburst = 20\n")
        parent = await self.parent(config)
        self.assertIn(
            "Each of 2 workers enforces its share of [limits]: rate 10/s (burst 10)",
            parent.output,
        )
        started = _reactor().seconds()
        results = await post_all(
            self.urls(f"http://127.0.0.1:{port}", "limited", 80), "--data", "x"
        )
        elapsed = _reactor().seconds() - started
        statuses = [status for status, _ in results]
        self.assertEqual(set(statuses), {200, 429})
        metrics = (await curl(f"http://127.0.0.1:{admin}/metrics")).body.decode()
        for worker in ("1", "2"):
            found = re.search(
                r'http_requests_total\{api="topics",http_version="1.1",'
                rf'status="200",worker="{worker}"\}} (\S+)',
                metrics,
            )
            served = float(found.group(1)) if found else 0.0
            self.assertLessEqual(served, 10 + 10 * elapsed + 1, (elapsed, metrics))
        self.assertLessEqual(statuses.count(200), 20 + 20 * elapsed + 2)
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
        await parent.match(
            rf"Worker 1 \(pid {first}\) was killed by signal 9 after [\d.]+ s; "
            r"starting it again in 0.5 s"
        )
        await poll(
            _reactor(),
            lambda: parent.worker_pids()[1] != first,
            10,
            lambda: parent.output,
        )
        await self.ready(admin)
        metrics = (await curl(f"http://127.0.0.1:{admin}/metrics")).body.decode()
        self.assertIn("mqtt_http_gateway_worker_restarts_total 1.0", metrics)
        self.assertIn('mqtt_http_gateway_worker_serving{worker="1"} 1.0', metrics)
        await self.assertStops(parent)


class StartupTests(WorkersCase):
    async def test_worker_refuses_the_configuration(self) -> None:
        """
        An access log in a folder that does not exist, which only the workers
        open: the parent stops at start-up within seconds, exit status 1,
        its log naming log.access and the path in the workers' own words,
        no worker started again and none left running.
        """
        missing = os.path.join(os.path.abspath(self.mktemp()), "access.log")
        parent = Parent(
            self,
            workers_config(
                free_port(), f"tcp:{free_port()}:interface=127.0.0.1", access=missing
            ),
        )
        await poll(_reactor(), lambda: parent.ended.called, 15, lambda: parent.output)
        self.assertEqual(await parent.ended, 1, parent.output)
        error = re.escape(
            f"mqtt-http-gateway: log.access: cannot open {missing}: "
            "No such file or directory"
        )
        self.assertRegex(
            parent.output,
            rf"\[gateway\.workers\.supervisor#critical\] Worker [12] \(pid \d+\) "
            rf"could not start; stopping the gateway: {error}\n",
        )
        self.assertNotIn("starting it again", parent.output)
        self.assertNotIn("All 2 workers serve", parent.output)
        self.assertNotIn("Traceback", parent.output)
        pids = parent.worker_pids()
        self.assertEqual(sorted(pids), [1, 2], parent.output)
        for pid in pids.values():
            with self.assertRaises(ProcessLookupError, msg=parent.output):
                os.kill(pid, 0)


def _continue(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


class SignalTests(WorkersCase):
    async def test_sighup_reloads_every_worker(self) -> None:
        """
        SIGHUP to the parent: both workers read the changed password file, so
        a user added to it is let in by either worker.
        """
        broker = await self.broker()
        passwords = password_file(alice="a-secret")
        port = free_port()
        parent = await self.parent(
            workers_config(
                broker.port,
                f"tcp:{port}:interface=127.0.0.1",
                auth=f'password_file = "{passwords}"\n',
            )
        )
        base = f"http://127.0.0.1:{port}"
        before = await post_all(
            self.urls(base, "hup", 1), "-u", "bob:b-secret", "--data", "x"
        )
        self.assertEqual(before[0][0], 401)
        os.replace(password_file(alice="a-secret", bob="b-secret"), passwords)
        parent.signal("HUP")
        for number in (1, 2):
            await parent.match(rf"\[worker {number}\] Reload: [^\n]*passwords")

        async def send(round: int) -> list[int]:
            urls = self.urls(base, f"hup/{round}", 10)
            answers = await post_all(urls, "-u", "bob:b-secret", "--data", "x")
            return [status for status, _ in answers]

        after = await self.until_both_serve(broker, send)
        self.assertEqual(after, [200] * len(after))
        await self.assertStops(parent)

    async def test_sigterm_under_load(self) -> None:
        """
        SIGTERM while requests keep coming: every request answered 200 was
        delivered, none is answered with an error (the rest find the port
        closed), every worker drains and exits, then the parent, with 0.
        """
        broker = await self.broker()
        subscriber = await self.subscriber(broker)
        port = free_port()
        parent = await self.parent(
            workers_config(broker.port, f"tcp:{port}:interface=127.0.0.1")
        )
        base = f"http://127.0.0.1:{port}"
        loads = [
            ensureDeferred(
                post_all(self.urls(base, f"term{n}", 4000), "--data", "x", parallel=4)
            )
            for n in range(3)
        ]
        await poll(
            _reactor(),
            lambda: len(subscriber.messages) >= 200,
            20,
            lambda: "the load did not start",
        )
        parent.signal("TERM")
        results = [r for load in loads for r in await load]
        self.assertEqual(await parent.ended, 0, parent.output)
        answered = [url for status, url in results if status == 200]
        self.assertEqual(
            {status for status, _ in results} - {200, 0}, set(), parent.output
        )
        self.assertGreater(len(answered), 50)
        self.assertLess(len(answered), len(results))
        messages = await subscriber.wait_for(len(answered))
        received = {m.topic for m in messages}
        for url in answered:
            self.assertIn(url.split("/topics/")[1].split("?")[0], received)
        exited = r"Worker \d \(pid \d+\) exited with status 0"
        self.assertEqual(len(re.findall(exited, parent.output)), 2, parent.output)


class SystemdTests(WorkersCase):
    async def test_notify_from_the_parent(self) -> None:
        """
        Under systemd only the parent notifies: READY=1 once, after both
        workers serve; WATCHDOG=1 while both answer, none while one is stopped
        (SIGSTOP), again once it is back; STOPPING=1 at the end.
        """
        broker = await self.broker()
        notify = NotifyListener()
        self.addCleanup(notify.close)
        port = free_port()
        parent = Parent(
            self,
            workers_config(broker.port, f"tcp:{port}:interface=127.0.0.1"),
            env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "600000"},
        )
        await poll(
            _reactor(),
            lambda: "READY=1" in notify.assignments(),
            20,
            lambda: parent.output,
        )
        self.assertIn("All 2 workers serve", parent.output)
        await sleep(1)
        lines = notify.assignments()
        self.assertEqual(lines.count("READY=1"), 1)
        self.assertGreaterEqual(lines.count("WATCHDOG=1"), 3)
        stopped = parent.worker_pids()[2]
        os.kill(stopped, signal.SIGSTOP)
        self.addCleanup(_continue, stopped)
        await sleep(6.5)
        silent = notify.assignments().count("WATCHDOG=1")
        await sleep(1.5)
        self.assertEqual(notify.assignments().count("WATCHDOG=1"), silent)
        os.kill(stopped, signal.SIGCONT)
        await sleep(1.5)
        self.assertGreater(notify.assignments().count("WATCHDOG=1"), silent)
        parent.signal("TERM")
        self.assertEqual(await parent.ended, 0, parent.output)
        self.assertIn("STOPPING=1", notify.assignments())
        self.assertEqual(notify.assignments().count("READY=1"), 1)
        self.assertEqual(notify.senders, {parent.pid})

    async def test_socket_activation(self) -> None:
        """A socket systemd passed (LISTEN_FDS) is served by both workers."""
        broker = await self.broker()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        port = sock.getsockname()[1]
        with sock:
            parent = Parent(
                self,
                workers_config(broker.port, "systemd:domain=INET:index=0"),
                sockets=[sock],
            )
        await parent.serving()

        async def send(round: int) -> list[int]:
            urls = self.urls(f"http://127.0.0.1:{port}", f"activated/{round}", 10)
            return [status for status, _ in await post_all(urls, "--data", "x")]

        statuses = await self.until_both_serve(broker, send)
        self.assertEqual(statuses, [200] * len(statuses))
        await self.assertStops(parent)


def _proxy_v2(source: str, source_port: int, port: int) -> bytes:
    """A PROXY protocol v2 header for a TCP/IPv4 connection from C{source}."""
    addresses = (
        socket.inet_aton(source)
        + socket.inet_aton("127.0.0.1")
        + struct.pack("!HH", source_port, port)
    )
    return (
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11"
        + struct.pack("!H", len(addresses))
        + addresses
    )


def _post_through_proxy(port: int, source: str, topic: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            _proxy_v2(source, 40000, port)
            + f"POST /topics/{topic}?qos=1 HTTP/1.0\r\n".encode()
            + b"Content-Length: 1\r\n\r\nx"
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return answer


class ProxyProtocolTests(WorkersCase):
    async def test_haproxy_endpoint(self) -> None:
        """
        A haproxy: endpoint in workers mode: both workers serve connections
        that begin with a PROXY v2 header (and close those without one), and
        the access log names the client address each header carried.
        """
        from twisted.internet.threads import deferToThread

        broker = await self.broker()
        port = free_port()
        access = os.path.abspath(self.mktemp() + "-access.log")
        parent = await self.parent(
            workers_config(
                broker.port, f"haproxy:tcp:{port}:interface=127.0.0.1", access=access
            )
        )

        sources: list[str] = []

        async def send(round: int) -> list[int]:
            source = f"203.0.113.{round + 1}"
            sources.append(source)
            answer = await deferToThread(
                _post_through_proxy, port, source, f"proxied/{round}"
            )
            status = re.match(rb"HTTP/1\.[01] (\d+) ", answer)
            return [int(status.group(1)) if status else 0]

        statuses = await self.until_both_serve(broker, send, rounds=100)
        self.assertEqual(statuses, [200] * len(statuses))
        bare = await curl(
            "-X", "POST", "--data", "x", f"http://127.0.0.1:{port}/topics/a"
        )
        self.assertEqual(bare.status, 0)
        await self.assertStops(parent)
        with open(access) as f:
            records = [json.loads(line) for line in f]
        self.assertEqual(
            sorted(r["peer"].rsplit(":", 1)[0] for r in records), sorted(sources)
        )


def _serving_pid(gateway_port: int, client: socket.socket) -> int | None:
    """The pid of the process holding the gateway's end of C{client}."""
    import subprocess

    client_port = client.getsockname()[1]
    out = subprocess.run(
        [
            "ss",
            "-tnpH",
            "state",
            "established",
            f"( sport = :{gateway_port} and dport = :{client_port} )",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"pid=(\d+)", out)
    return int(found.group(1)) if found else None


class _KeptAlive:
    """One HTTP/1.1 keep-alive connection, used from a thread."""

    def __init__(self, port: int) -> None:
        import http.client

        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        self.connection.connect()

    @property
    def socket(self) -> socket.socket:
        sock: socket.socket = self.connection.sock
        return sock

    def post(self, topic: str, payload: str, client_id: str) -> tuple[int, str]:
        self.connection.request(
            "POST",
            f"/topics/{topic}?qos=1&client_id={client_id}",
            body=payload.encode(),
            headers={"Authorization": "Basic ZGV2aWNlOnNlY3JldA=="},
        )
        response = self.connection.getresponse()
        response.read()
        return response.status, response.getheader("X-Message-Id", "")

    def close(self) -> None:
        self.connection.close()


class BrokerModeTests(WorkersCase):
    async def test_one_client_id_on_two_workers(self) -> None:
        """
        Broker mode: two keep-alive connections with one client id, served by
        different workers, take turns. Each request's session is opened as
        the sender on its own worker, the broker takes the session over from
        the other worker's, which is opened again on its next request: every
        request is answered 200 with its own message, which reached the broker.
        """
        from twisted.internet.threads import deferToThread

        broker = await self.broker()
        subscriber = await self.subscriber(broker)
        port = free_port()
        parent = Parent(
            self,
            workers_config(
                broker.port,
                f"tcp:{port}:interface=127.0.0.1",
                auth='mode = "broker"\n',
            ),
        )
        await parent.serving(sessions=False)
        pids = set(parent.worker_pids().values())
        # Connections until one is served by each worker (the kernel chooses).
        by_worker: dict[int, _KeptAlive] = {}
        warmups = 0
        for _ in range(40):
            warmups += 1
            connection = await deferToThread(_KeptAlive, port)
            self.addCleanup(connection.close)
            await deferToThread(connection.post, "warmup", "w", "warmup")
            pid = _serving_pid(port, connection.socket)
            self.assertIn(pid, pids)
            by_worker.setdefault(pid, connection)  # type: ignore[arg-type]
            if len(by_worker) == 2:
                break
        self.assertEqual(len(by_worker), 2, "one worker took every connection")
        first, second = by_worker.values()
        answers = []
        for turn in range(6):
            for name, connection in (("first", first), ("second", second)):
                payload = f"{name}-{turn}"
                status, message_id = await deferToThread(
                    connection.post, "shared", payload, "dev"
                )
                answers.append((payload, status, message_id))
        self.assertEqual([status for _, status, _ in answers], [200] * 12, answers)
        self.assertEqual(len({message_id for _, _, message_id in answers}), 12)
        messages = await subscriber.wait_for(warmups + 12)
        shared = [m.payload.decode() for m in messages if m.topic == "shared"]
        self.assertEqual(shared, [payload for payload, _, _ in answers])
        self.assertGreaterEqual(
            broker.log().count("Client dev already connected, closing old connection"),
            11,
            broker.log(),
        )
        await self.assertStops(parent)
