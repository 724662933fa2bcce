"""
Flow control and resilience: the broker session's queue
bounds, the graceful shutdown, broker failover and restarts.

The first tests are deterministic (a fake broker, StringTransports, a Clock);
the integration tests at the end run real Mosquittos and the real daemon.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.auth.identify import Authenticator
from gateway.core import Gateway
from gateway.errors import Code, GatewayError
from gateway.model import Message
from gateway.mqtt import codec
from gateway.mqtt.publisher import SharedPublisher
from gateway.mqtt.session import Broker, BrokerSession, SessionSettings
from gateway.shutdown import DrainHTTP, StopInOrder
from gateway.web.router import Router
from gateway.web.server import HTTPServerFactory
from gateway.web.topics import TopicsAPI
from tests.brokers import Mosquitto, Subscriber, free_port, poll
from tests.fakes import ME, Daemon, FakeBroker, SessionTestCase
from tests.gateway import CurlResult, RunningGateway, config_file, curl, responses


class QueueBoundTests(SessionTestCase):
    """
    Beyond the in-flight window messages queue, but never so long that accepted
    requests wait for the publish timeout: a broker slower than the traffic
    makes new requests fail at once.
    """

    def test_stalled_broker(self) -> None:
        """A broker that stops acknowledging: once the queue has not moved for
        half a second, new messages are refused at once with 503 and
        Retry-After; when the broker catches up, they are taken again."""
        session = self.start()
        broker = self.connected(receive_maximum=1)
        waiting = [self.publish(), self.publish()]
        self.clock.advance(0.4)
        waiting.append(self.publish())
        self.assertEqual((session.inflight_count, session.queued_count), (1, 2))
        self.clock.advance(0.1)
        error = self.assertFailsWith(self.publish(), 503, Code.BrokerUnavailable)
        self.assertEqual(error.retry_after, 1)
        self.assertIn("not taking messages", error.message)
        for packet_id, d in enumerate(waiting, 1):
            broker.send(codec.PubAck(packet_id))
            self.successResultOf(d)
        self.assertNoResult(self.publish())

    def test_waiting_time_without_estimate(self) -> None:
        """Before the drain rate is known, a message is refused once the one at
        the head of the queue has waited longer than max_queue_delay."""
        self.start(max_queue_delay=0.3)
        self.connected(receive_maximum=1)
        self.publish()
        self.publish()
        self.clock.advance(0.3)
        self.assertNoResult(self.publish())
        self.clock.advance(0.01)
        self.assertFailsWith(self.publish(), 503, Code.BrokerUnavailable)

    def test_cold_burst(self) -> None:
        """A burst taken before the drain rate is known: messages whose turn
        comes after max_queue_delay are refused then (503) rather than sent, so
        no accepted message waits longer."""
        self.start(max_queue_delay=2.0)
        broker = self.connected(receive_maximum=1)
        burst = [self.publish() for _ in range(100)]
        answered: dict[int, tuple[float, bool]] = {}
        for n, d in enumerate(burst):

            def note(result: object, n: int = n) -> None:
                answered[n] = (self.clock.seconds(), not isinstance(result, Failure))
                if isinstance(result, Failure):
                    result.trap(GatewayError)

            d.addBoth(note)
        for _ in range(30):
            for packet in broker.received():
                assert isinstance(packet, codec.Publish)
                self.clock.advance(0.125)
                broker.send(codec.PubAck(packet.packet_id or 0))
        self.assertEqual(len(answered), 100)
        ok = [when for when, success in answered.values() if success]
        refused = [when for when, success in answered.values() if not success]
        # the 17th is sent at 2.0 s, after waiting exactly max_queue_delay
        self.assertEqual((len(ok), max(ok)), (17, 2.125))
        self.assertEqual(set(refused), {2.125})

    def test_slow_broker_latency_bounded(self) -> None:
        """
        Offered ten times what the broker takes (100 messages/s against 10/s) for
        20 s: the broker stays busy, refusals are immediate, and after the first
        second (before which the drain rate is unknown) every accepted message
        is acknowledged within max_queue_delay and a quarter (the estimate of
        the drain rate is a little off at times).
        """
        self.start(max_queue_delay=2.0, publish_timeout=30)
        broker = self.connected(receive_maximum=1)
        latencies: list[tuple[float, float]] = []
        refused = 0
        for step in range(2000):
            now = self.clock.seconds()
            d = self.publish()
            if d.called:
                self.failureResultOf(d, GatewayError)
                refused += 1
            else:

                def done(_: object, sent: float = now) -> None:
                    latencies.append((sent, self.clock.seconds() - sent))

                d.addCallback(done)
            if step % 10 == 9:
                for packet in broker.received():
                    assert isinstance(packet, codec.Publish)
                    broker.send(codec.PubAck(packet.packet_id or 0))
            self.clock.advance(0.01)
        self.assertGreater(len(latencies), 190)
        self.assertGreater(refused, 1700)
        late = [latency for sent, latency in latencies if sent >= 1.0]
        self.assertLessEqual(max(late), 2.5)

    def test_bytes_bound(self) -> None:
        """Queued payload bytes are bounded too; a lone message of any size is
        taken."""
        session = self.start(max_queue_bytes=10)
        big = self.publisher.publish(Message("t", b"x" * 50), ME)
        self.requests.append(big)
        self.assertNoResult(big)
        self.assertFailsWith(self.publish(), 503, Code.BrokerUnavailable)
        broker = self.connected()
        broker.received()
        self.assertEqual(session.queued_count, 0)
        self.assertNoResult(self.publish())
        broker.send(codec.PubAck(1))
        self.successResultOf(big)

    def test_bytes_released_on_timeout(self) -> None:
        """Messages that time out in the queue free their bytes."""
        self.start(max_queue_bytes=1, publish_timeout=5)
        waiting = self.publish()
        self.assertFailsWith(self.publish(), 503, Code.BrokerUnavailable)
        self.clock.advance(5)
        self.assertFailsWith(waiting, 503, Code.BrokerUnavailable)
        self.assertNoResult(self.publish())

    def test_fast_broker_never_refused(self) -> None:
        """A broker that keeps up is never refused, however many messages pass
        through the window over time."""
        self.start()
        broker = self.connected(receive_maximum=2)
        for n in range(1, 2001):
            d = self.publish()
            self.clock.advance(0.01)
            broker.send(codec.PubAck(n % 65535))
            self.successResultOf(d)
        broker.received()


class Recorder(Service):
    """A service that records its stop and stops when told to."""

    def __init__(self, name: str, log: list[str], d: Deferred[None] | None = None):
        self.setName(name)
        self.log = log
        self.d = d

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.log.append(f"stop {self.name}")
        if self.d is not None:
            return self.d.addCallback(lambda _: self.log.append(f"{self.name} done"))
        return None


class StopInOrderTests(SynchronousTestCase):
    def test_one_after_the_other(self) -> None:
        """Children stop in reverse order, each once the previous one finished."""
        log: list[str] = []
        root = StopInOrder()
        slow: Deferred[None] = Deferred()
        Recorder("session", log).setServiceParent(root)
        Recorder("drain", log, slow).setServiceParent(root)
        Recorder("listener", log).setServiceParent(root)
        root.startService()
        stopped = root.stopService()
        self.assertEqual(log, ["stop listener", "stop drain"])
        self.assertNoResult(stopped)
        slow.callback(None)
        self.assertEqual(log[2:], ["drain done", "stop session"])
        self.successResultOf(stopped)
        self.assertFalse(root.running)
        self.assertIsInstance(root, MultiService)

    def test_failure_does_not_stop_the_rest(self) -> None:
        """A child that fails to stop is logged; the others still stop."""
        log: list[str] = []
        root = StopInOrder()
        Recorder("first", log).setServiceParent(root)
        broken = Recorder("broken", log, fail(RuntimeError("nope")))  # type: ignore[arg-type]
        broken.setServiceParent(root)
        root.startService()
        self.successResultOf(root.stopService())
        self.assertEqual(log, ["stop broken", "stop first"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class GracefulStopTests(SessionTestCase):
    """
    The whole graceful shutdown in memory: the service tree of tap.py (session,
    HTTP drain, listener) in a L{StopInOrder} root.
    """

    def build(self) -> tuple[StopInOrder, HTTPServerFactory]:
        session = BrokerSession(
            [Broker("mqtt://a", self.endpoints[0])],
            SessionSettings(client_id="gw", protocol="5", keepalive=0),
            clock=self.clock,
        )
        core = Gateway(
            SharedPublisher(session),
            Authenticator(None, allow_anonymous=True),
            self.clock,
        )
        factory = HTTPServerFactory(Router(TopicsAPI(core)), clock=self.clock)
        root = StopInOrder()
        session.setServiceParent(root)
        DrainHTTP([factory], timeout=15).setServiceParent(root)
        Recorder("listener", []).setServiceParent(root)
        root.startService()
        return root, factory

    def connect(self, factory: HTTPServerFactory) -> StringTransportWithDisconnection:
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport

    def test_in_flight_request_finishes(self) -> None:
        """A request waiting for its PUBACK when the stop begins still gets its
        200 (with Connection: close); an idle connection closes at once; only
        then does the session DISCONNECT."""
        root, factory = self.build()
        broker = FakeBroker(self.endpoints[0])
        broker.accept()
        busy, idle = self.connect(factory), self.connect(factory)
        busy.protocol.dataReceived(
            b"POST /topics/t?qos=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhi"
        )
        [publish] = broker.received()
        assert isinstance(publish, codec.Publish)
        stopped = root.stopService()
        self.assertFalse(idle.connected)
        self.assertTrue(busy.connected)
        self.assertEqual(broker.received(), [])
        self.clock.advance(1)
        broker.send(codec.PubAck(publish.packet_id or 0))
        [(status, headers, _)] = responses(busy.value())
        self.assertEqual((status, headers[b"connection"]), (200, b"close"))
        self.assertFalse(busy.connected)
        self.assertEqual(broker.received(), [codec.Disconnect()])
        broker.protocol.connectionLost(Failure(ConnectionLost()))
        self.successResultOf(stopped)

    def test_drain_bounded(self) -> None:
        """A request the broker never answers ends with its 503 at the publish
        timeout, and the stop completes."""
        root, factory = self.build()
        broker = FakeBroker(self.endpoints[0])
        broker.accept()
        busy = self.connect(factory)
        busy.protocol.dataReceived(
            b"POST /topics/t HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n"
        )
        stopped = root.stopService()
        self.clock.advance(10)
        [(status, _, body)] = responses(busy.value())
        self.assertEqual((status, json.loads(body)["code"]), (503, "BrokerUnavailable"))
        broker.protocol.connectionLost(Failure(ConnectionLost()))
        self.successResultOf(stopped)


# -- integration: real brokers, the real gateway


def gateway_config(*brokers: int, publish_timeout: float = 2, extra: str = "") -> str:
    uris = ", ".join(f'"mqtt://127.0.0.1:{port}"' for port in brokers)
    return (
        f'[mqtt]\nbrokers = [{uris}]\nprotocol = "5"\n'
        f"publish_timeout = {publish_timeout}\nkeepalive = 10\n"
        '[log]\naccess = ""\n[auth]\nallow_anonymous = true\n'
        "[limits]\nrate = 0\n" + extra
    )


class IntegrationCase(TestCase):
    timeout = 60

    def reactor(self) -> Any:
        from twisted.internet import reactor

        return reactor

    async def broker(self, **options: Any) -> Mosquitto:
        broker = Mosquitto(**options)
        self.addCleanup(broker.stop)
        await broker.start()
        return broker

    async def subscriber(self, broker: Mosquitto, **options: Any) -> Subscriber:
        subscriber = Subscriber("127.0.0.1", broker.port, **options)
        self.addCleanup(subscriber.stop)
        await subscriber.start()
        return subscriber

    def assertRefusedPolitely(self, status: int, headers: dict[str, str]) -> None:
        """Anything but a 200 is a 503 with a Retry-After of at least 1."""
        self.assertEqual(status, 503, headers)
        self.assertGreaterEqual(int(headers["retry-after"]), 1)


class FailoverTests(IntegrationCase):
    async def test_first_broker_killed(self) -> None:
        """With two brokers in [mqtt] brokers, killing the first moves publishing
        to the second; meanwhile requests get 503 with Retry-After, never a 200
        for a message that did not arrive."""
        first, second = await self.broker(), await self.broker()
        on_first = await self.subscriber(first, topic="#", qos=1)
        on_second = await self.subscriber(second, topic="#", qos=1)
        gateway = RunningGateway(gateway_config(first.port, second.port))
        self.addCleanup(gateway.stop)
        await gateway.start()
        url = gateway.topic_url("failover")
        ok = await curl("-X", "POST", "--data", "one", url)
        self.assertEqual(ok.status, 200)
        [message] = await on_first.wait_for(1)
        self.assertEqual(message.payload, b"one")

        await first.kill()
        reactor = self.reactor()
        deadline = reactor.seconds() + 20
        result: CurlResult | None = None
        refused = 0
        while reactor.seconds() < deadline:
            result = await curl("-X", "POST", "--data", "two", url)
            if result.status == 200:
                break
            self.assertRefusedPolitely(result.status, result.headers)
            refused += 1
        assert result is not None
        self.assertEqual(result.status, 200, f"still refused after {refused} tries")
        [message] = await on_second.wait_for(1)
        self.assertEqual(message.payload, b"two")
        self.assertEqual(
            gateway.session.current_broker, f"mqtt://127.0.0.1:{second.port}"
        )
        self.assertEqual([m.payload for m in on_first.messages], [b"one"])


class Load:
    """
    Numbered messages POSTed back to back by a few concurrent senders (HTTP/1.1
    keep-alive, Twisted's Agent), each answer recorded by number.
    """

    def __init__(self, url: str, senders: int = 4) -> None:
        from twisted.web.client import Agent, HTTPConnectionPool

        reactor = _reactor()
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = senders
        pool.retryAutomatically = False
        self.pool = pool
        self.agent = Agent(reactor, pool=pool)
        self.url = url
        self.senders = senders
        self.next = 0
        self.answers: dict[int, tuple[int, dict[str, str]]] = {}
        self.answered_at: dict[int, float] = {}
        self.errors: list[str] = []
        self.running = False
        self._done: list[Deferred[None]] = []

    def ok(self) -> set[int]:
        """The numbers answered 200."""
        return {n for n, (status, _) in self.answers.items() if status == 200}

    def start(self) -> None:
        self.running = True
        self._done = [ensureDeferred(self._send()) for _ in range(self.senders)]

    async def stop(self) -> None:
        self.running = False
        for d in self._done:
            await d
        await self.pool.closeCachedConnections()

    async def _send(self) -> None:
        from twisted.web.client import FileBodyProducer
        from twisted.web.http_headers import Headers

        while self.running:
            number = self.next
            self.next += 1
            body = FileBodyProducer(
                io.BytesIO(b"%d" % number), cooperator=_cooperator()
            )
            try:
                response = await self.agent.request(
                    b"POST", self.url.encode(), Headers(), body
                )
                read: Deferred[None] = Deferred()
                response.deliverBody(_Discard(read))
                await read
            except Exception as e:
                self.errors.append(f"{number}: {e!r}")
                continue
            headers = {
                name.decode().lower(): values[0].decode()
                for name, values in response.headers.getAllRawHeaders()
            }
            self.answers[number] = (response.code, headers)
            self.answered_at[number] = _reactor().seconds()


class _Discard(Protocol):
    """Reads a response body to its end and drops it."""

    def __init__(self, done: Deferred[None]) -> None:
        self.done = done

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(None)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _cooperator() -> Any:
    from twisted.internet.task import Cooperator

    # Write each small body at once rather than on the next reactor turn.
    return Cooperator(scheduler=lambda f: _reactor().callLater(0, f))


class BrokerRestartTests(IntegrationCase):
    """
    Numbered messages posted continuously while Mosquitto (persistence on,
    saved after every change) restarts; a subscriber with a persistent session
    (QoS 1) counts what arrives.

    Mosquitto acknowledges a message before it saves it, even with
    C{autosave_on_changes}: a SIGKILL loses the few messages it acknowledged in
    its last moments and had not yet written to the subscriber (one to four per
    kill, measured, with the subscriber online). No gateway can make up for
    that, so the no-loss promise is checked across SIGTERM restarts, and the
    SIGKILL test checks what the gateway controls.
    """

    timeout = 90

    async def setUp(self) -> None:  # type: ignore[override]
        self.mosquitto = await self.broker(
            persistence=True,
            extra=[
                "autosave_interval 1",
                "autosave_on_changes true",
                "max_queued_messages 0",
                "max_inflight_messages 0",
            ],
        )
        self.session = {
            "topic": "load/#",
            "qos": 1,
            "clean_start": False,
            "session_expiry": 600,
            "client_id": "resilience-subscriber",
        }
        self.online = await self.subscriber(self.mosquitto, **self.session)
        self.gateway = RunningGateway(
            gateway_config(self.mosquitto.port, publish_timeout=3)
        )
        self.addCleanup(self.gateway.stop)
        await self.gateway.start()
        self.load = Load(self.gateway.topic_url("load/n", "qos=1"))
        self.addCleanup(self.load.stop)
        self.load.start()
        # The numbers being sent when each step began, for failure messages.
        self.marks: dict[str, int] = {}

    async def sending_for(self, seconds: float) -> None:
        """Go on sending for C{seconds}, and until a message got a 200."""
        reactor = self.reactor()
        before = len(self.load.ok())
        end = reactor.seconds() + seconds
        await poll(
            reactor,
            lambda: reactor.seconds() >= end and len(self.load.ok()) > before,
            seconds + 20,
            lambda: "no message got a 200",
        )

    async def restart(self, stop: str, downtime: float = 0) -> float:
        """Stop Mosquitto (C{"TERM"} or C{"KILL"}), start it again after
        C{downtime}; return when it was back."""
        self.marks[f"SIG{stop}"] = self.load.next
        await (self.mosquitto.kill() if stop == "KILL" else self.mosquitto.stop())
        await deferLater(self.reactor(), downtime)
        await self.mosquitto.start()
        back = self.reactor().seconds()
        await self.gateway.wait_connected(timeout=20)
        self.marks["back"] = self.load.next
        return float(back)

    async def received(self, expected: set[int], *others: Subscriber) -> None:
        """Wait until every number of C{expected} has arrived."""

        def missing() -> set[int]:
            messages = [m for s in (self.online, *others) for m in s.messages]
            return expected - {int(m.payload) for m in messages}

        await poll(
            self.reactor(),
            lambda: not missing(),
            20,
            lambda: (
                f"{len(missing())} of {len(expected)} messages answered 200 never "
                f"arrived: {sorted(missing())[:20]} ...; numbers being sent at "
                f"each step: {self.marks}"
            ),
        )

    def assertAnswersPolite(self) -> set[int]:
        """Every answer is a 200 or a 503 with Retry-After; return the 200s."""
        self.assertEqual(self.load.errors, [])
        statuses = set()
        for status, headers in self.load.answers.values():
            statuses.add(status)
            if status != 200:
                self.assertRefusedPolitely(status, headers)
        ok = self.load.ok()
        self.assertGreater(len(ok), 100, statuses)
        return ok

    async def test_restarts_under_load(self) -> None:
        """
        SIGTERM and restart at once, then (with the subscriber offline) SIGTERM
        and restart after 1.5 s: every number answered 200 reaches the
        subscriber, and every other answer is a 503 with Retry-After.
        """
        await self.sending_for(1)
        await self.restart("TERM")
        await self.sending_for(1)
        await self.online.stop()
        await self.sending_for(0.5)
        await self.restart("TERM", downtime=1.5)
        await self.sending_for(1)
        await self.load.stop()
        back = await self.subscriber(self.mosquitto, **self.session)
        ok = self.assertAnswersPolite()
        await self.received(ok, back)
        self.assertGreater(len(back.messages), 100)
        self.assertIn(503, {status for status, _ in self.load.answers.values()})

    async def test_sigkill_under_load(self) -> None:
        """
        SIGKILL and restart at once: every answer is a 200 or a 503 with
        Retry-After, the gateway resumes its session, and every number
        acknowledged by the restarted broker reaches the subscriber.
        """
        await self.sending_for(1)
        back = await self.restart("KILL")
        await self.sending_for(1)
        await self.load.stop()
        ok = self.assertAnswersPolite()
        after = {n for n in ok if self.load.answered_at[n] > back}
        self.assertGreater(len(after), 100)
        await self.received(after)


class HoldingProxy:
    """
    A TCP proxy to a broker that can hold back what the broker sends (its
    PUBACKs), so that a test can keep a request in flight as long as it likes.

    @ivar upstream: every byte sent towards the broker so far.
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self.upstream = b""
        self.holding = False
        self._held: list[tuple[Any, bytes]] = []
        self._listening: Any = None

    def listen(self) -> int:
        """Start listening on a free port of 127.0.0.1; return it."""
        from twisted.internet.protocol import Factory, Protocol

        proxy = self

        class ToBroker(Protocol):
            def __init__(self, client: Any) -> None:
                self.client = client

            def dataReceived(self, data: bytes) -> None:
                if proxy.holding:
                    proxy._held.append((self.client.transport, data))
                else:
                    self.client.transport.write(data)

            def connectionLost(self, reason: Any = None) -> None:
                self.client.transport.loseConnection()

        class FromClient(Protocol):
            broker: Any = None

            def connectionMade(self) -> None:
                from twisted.internet.endpoints import TCP4ClientEndpoint

                transport: Any = self.transport
                transport.pauseProducing()  # until the broker is connected
                endpoint = TCP4ClientEndpoint(_reactor(), "127.0.0.1", proxy.target)
                connecting = endpoint.connect(
                    Factory.forProtocol(lambda: ToBroker(self))
                )
                connecting.addCallbacks(
                    self.joined, lambda _: transport.loseConnection()
                )

            def joined(self, broker: Any) -> None:
                self.broker = broker
                transport: Any = self.transport
                transport.resumeProducing()

            def dataReceived(self, data: bytes) -> None:
                proxy.upstream += data
                self.broker.transport.write(data)

            def connectionLost(self, reason: Any = None) -> None:
                if self.broker is not None:
                    self.broker.transport.loseConnection()

        self._listening = _reactor().listenTCP(
            0, Factory.forProtocol(FromClient), interface="127.0.0.1"
        )
        port: int = self._listening.getHost().port
        return port

    def release(self) -> None:
        """Pass on what was held back, and everything from now on."""
        self.holding = False
        held, self._held = self._held, []
        for transport, data in held:
            transport.write(data)

    def stop(self) -> Deferred[None]:
        self.release()
        return self._listening.stopListening()  # type: ignore[no-any-return]


# The daemon as tap.py assembles it, with the wiring of graceful shutdown
# (gateway.shutdown) applied if tap.py does not have it yet: the root stops its
# children one at a time, and an HTTP drain sits just before the listeners.
TAC = """
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService

from gateway.shutdown import DrainHTTP, StopInOrder
from gateway.tap import Options, makeService
from gateway.web.server import HTTPServerFactory

options = Options()
options.parseOptions({args!r})
root = makeService(options)
if not isinstance(root, StopInOrder):
    children = list(root)
    factories = [
        c.factory for c in children
        if isinstance(getattr(c, "factory", None), HTTPServerFactory)
    ]
    wired = StopInOrder()
    for child in children:
        child.disownServiceParent()
    drain = DrainHTTP(factories, timeout={drain_timeout})
    for child in children:
        if drain is not None and isinstance(child, StreamServerEndpointService):
            drain.setServiceParent(wired)
            drain = None
        child.setServiceParent(wired)
    root = wired
application = service.Application("mqtt-http-gateway")
root.setServiceParent(application)
"""


def tac_file(config: str, port: int) -> str:
    """A C{.tac} file of L{TAC} serving C{config} on C{port} of 127.0.0.1."""
    args = [
        "--config",
        config_file(config),
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
    ]
    path = os.path.join(tempfile.mkdtemp(prefix="gateway-daemon-"), "gateway.tac")
    with open(path, "w") as f:
        f.write(TAC.format(args=args, drain_timeout=10))
    return path


def _refuses(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


class GracefulShutdownTests(IntegrationCase):
    async def test_sigterm_drains(self) -> None:
        """
        SIGTERM while a request waits for its PUBACK: the daemon stops accepting
        at once, the request still gets its 200 when the broker answers, the
        session DISCONNECTs cleanly and the process exits with status 0.
        """
        broker = await self.broker()
        subscriber = await self.subscriber(broker, topic="#", qos=1)
        proxy = HoldingProxy(broker.port)
        proxy_port = proxy.listen()
        self.addCleanup(proxy.stop)
        port = free_port()
        daemon = Daemon(
            self, tac=tac_file(gateway_config(proxy_port, publish_timeout=8), port)
        )
        await daemon.wait_for("Connected to")
        self.assertFalse(daemon.ended.called, daemon.output)

        proxy.holding = True
        answer = curl(
            "-X",
            "POST",
            "--data",
            "in flight at SIGTERM",
            f"http://127.0.0.1:{port}/topics/drain?qos=1",
        )
        reactor = self.reactor()
        await poll(
            reactor,
            lambda: b"in flight at SIGTERM" in proxy.upstream,
            10,
            lambda: "the PUBLISH never reached the broker",
        )
        daemon.signal("TERM")
        await poll(
            reactor,
            lambda: _refuses(port),
            5,
            lambda: "the daemon still accepts connections after SIGTERM",
        )
        self.assertFalse(answer.called)
        self.assertFalse(daemon.ended.called)
        proxy.release()
        result = await answer
        self.assertEqual(result.status, 200, result.raw_head)
        self.assertEqual(result.headers["connection"], "close")
        self.assertEqual(await daemon.ended, 0, daemon.output)
        [message] = await subscriber.wait_for(1)
        self.assertEqual(message.payload, b"in flight at SIGTERM")
        output = daemon.output
        self.assertNotIn("Traceback", output)
        if os.environ.get("RESILIENCE_STATS"):
            print(output)
        await poll(
            reactor,
            lambda: (
                re.search(r"Client mqtt-http-gateway-\S+ disconnected", broker.log())
                is not None
            ),
            5,
            broker.log,
        )
