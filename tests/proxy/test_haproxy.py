"""
Behind a real HAProxy in TCP mode (TLS passed through) speaking the PROXY protocol,
versions 2 and 1, to two gateways: the device's own address reaches the access log
and the per-address limits, device certificates authenticate end to end, and a bad
PROXY header costs only its own connection.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import TestCase

from tests.brokers import Mosquitto, Subscriber, free_port, poll
from tests.certs import PKI, make_pki
from tests.gateway import CurlResult, RunningGateway, curl, password_file
from tests.proxy.balancer import Frontend, HAProxy, RawClient
from tests.proxy.test_proxied import capture_log

#: The devices' source addresses: loopback, but not the balancer's 127.0.0.1.
DEVICE, OTHER_DEVICE = "127.0.0.2", "127.0.0.3"
PASSWORDS = password_file(bob="builder")
KEEP_ALIVE_POST = (
    b"POST /topics/held HTTP/1.1\r\nHost: gateway\r\nContent-Length: 1\r\n\r\nx"
)


def gateway_config(
    index: int, broker: int, pki: PKI, tls_port: int, access_log: str
) -> str:
    return (
        f'[mqtt]\nbrokers = ["mqtt://127.0.0.1:{broker}"]\n'
        f'client_id = "gateway-{index}-{{hostname}}"\npublish_timeout = 2\n'
        f'[log]\naccess = "{access_log}"\n'
        "[http]\nmax_connections_per_source = 2\n"
        f'[tls]\nlisten = ["haproxy:tcp:{tls_port}:interface=127.0.0.1"]\n'
        f'cert = "{pki.server_chain}"\nkey = "{pki.server_key}"\n'
        f'client_ca = "{pki.ca}"\ncrl = "{pki.crl}"\nclient_cert = "optional"\n'
        "[auth]\nallow_anonymous = true\n"
        f'password_file = "{PASSWORDS}"\n'
    )


class Backend:
    """One gateway, with a C{haproxy:} listener for HTTP and one for HTTPS."""

    def __init__(self, index: int, broker: int, pki: PKI) -> None:
        self.http_port = free_port()
        self.tls_port = free_port()
        self.access_log = os.path.join(tempfile.mkdtemp(), "access.log")
        self.gateway = RunningGateway(
            gateway_config(index, broker, pki, self.tls_port, self.access_log),
            "--listen",
            f"haproxy:tcp:{self.http_port}:interface=127.0.0.1",
        )

    def records(self) -> list[dict[str, Any]]:
        """The access log so far."""
        try:
            with open(self.access_log) as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []


class BehindHAProxyTests(TestCase):
    timeout = 60

    async def start(self) -> None:
        self.pki = make_pki()
        self.addCleanup(self.pki.remove)
        self.broker = Mosquitto()
        self.addCleanup(self.broker.stop)
        await self.broker.start()
        self.backends = [Backend(i, self.broker.port, self.pki) for i in (0, 1)]
        for backend in self.backends:
            self.addCleanup(backend.gateway.stop)
            await backend.gateway.start()
        http = [f"127.0.0.1:{b.http_port}" for b in self.backends]
        tls = [f"127.0.0.1:{b.tls_port}" for b in self.backends]
        self.haproxy = HAProxy(
            [
                Frontend("http-v2", "send-proxy-v2", http),
                Frontend("http-v1", "send-proxy", http),
                Frontend("https-v2", "send-proxy-v2", tls),
                Frontend("https-v1", "send-proxy", tls),
                Frontend("first-only", "send-proxy-v2", http[:1]),
                Frontend("checked", "send-proxy-v2", http[1:], check=True),
            ]
        )
        self.addCleanup(self.haproxy.stop)
        await self.haproxy.start()
        self.subscriber = Subscriber("127.0.0.1", self.broker.port, "#")
        self.addCleanup(self.subscriber.stop)
        await self.subscriber.start()
        self.log = capture_log(self)

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return ensureDeferred(self.start())

    def url(self, frontend: str, topic: str = "home") -> str:
        scheme = "https" if frontend.startswith("https") else "http"
        return f"{scheme}://127.0.0.1:{self.haproxy.ports[frontend]}/topics/{topic}"

    async def post(
        self, frontend: str, source: str = DEVICE, *args: str
    ) -> tuple[CurlResult, str]:
        """POST from C{source} (and a port chosen for it) through C{frontend};
        the response and C{host:port} the request came from."""
        port = free_port(source)
        result = await curl(
            "--interface",
            source,
            "--local-port",
            str(port),
            "-X",
            "POST",
            "--data",
            frontend,
            *args,
            self.url(frontend),
        )
        return result, f"{source}:{port}"

    def device(self) -> tuple[str, ...]:
        """curl's options for the device certificate (CN device-42)."""
        pki = self.pki
        return ("--cacert", pki.ca, "--cert", pki.client_chain, "--key", pki.client_key)

    async def record_of(self, peer: str) -> dict[str, Any]:
        """The one access-log record, of either gateway, of C{peer}'s request."""

        def records() -> list[dict[str, Any]]:
            every = [r for b in self.backends for r in b.records()]
            return [r for r in every if r["peer"] == peer]

        await poll(reactor, lambda: bool(records()), 5, lambda: f"no record of {peer}")
        [record] = records()
        return record

    async def assertThroughBalancer(self, frontend: str, *args: str) -> None:
        result, peer = await self.post(frontend, DEVICE, *args)
        self.assertEqual(result.status, 200, result.raw_head + result.stderr.decode())
        [message] = await self.subscriber.wait_for(1)
        self.assertEqual(message.payload, frontend.encode())
        record = await self.record_of(peer)
        self.assertEqual(
            (record["status"], record["message_id"]),
            (200, result.headers["x-message-id"]),
        )
        client_id = dict(message.properties["UserProperty"])["http-client-id"]
        self.assertEqual(record["client_id"], client_id)
        self.record = record

    async def test_http_v2(self) -> None:
        """Plain HTTP, PROXY version 2: the access log's peer is the device's
        address and port."""
        await self.assertThroughBalancer("http-v2")
        self.assertRegex(self.record["client_id"], "^http-[0-9a-f]{16}$")

    async def test_http_v1(self) -> None:
        """Plain HTTP, PROXY version 1 (C{send-proxy})."""
        await self.assertThroughBalancer("http-v1")

    async def test_https_v2(self) -> None:
        """HTTPS passed through, PROXY version 2: the device certificate's CN is
        the client id end to end, and the peer is the device's."""
        await self.assertThroughBalancer("https-v2", *self.device())
        self.assertEqual(self.record["client_id"], "device-42")

    async def test_https_v1(self) -> None:
        """HTTPS passed through, PROXY version 1."""
        await self.assertThroughBalancer("https-v1", *self.device())
        self.assertEqual(self.record["client_id"], "device-42")

    async def test_both_gateways(self) -> None:
        """HAProxy balances over both gateways; each sees the device."""
        peers = [(await self.post("http-v2"))[1] for _ in range(2)]
        served = [await self.record_of(peer) for peer in peers]
        self.assertEqual([r["status"] for r in served], [200, 200])
        # One request each, in either order.
        each = [
            [r["peer"] for r in b.records() if r["path"] == "/topics/home"]
            for b in self.backends
        ]
        self.assertEqual(sorted(each), sorted([[peers[0]], [peers[1]]]))

    async def test_per_source_limit(self) -> None:
        """One device holding its two connections is refused a third; another
        device behind the same balancer, to the same gateway, is served."""
        port = self.haproxy.ports["first-only"]
        held = [RawClient(reactor, DEVICE, port, KEEP_ALIVE_POST) for _ in range(2)]
        for client in held:
            self.addCleanup(client.close)
            self.assertIn(b" 200 ", await client.answered)
        refused, _ = await self.post("first-only", DEVICE)
        self.assertEqual(refused.status, 503, refused.raw_head)
        other, peer = await self.post("first-only", OTHER_DEVICE)
        self.assertEqual(other.status, 200, other.raw_head)
        self.assertEqual((await self.record_of(peer))["status"], 200)

    async def test_failed_logins(self) -> None:
        """Failed logins count against the device's address, not the
        balancer's: another device behind it still logs in."""
        statuses = []
        for _ in range(6):
            failed, _ = await self.post("first-only", DEVICE, "-u", "bob:wrong")
            statuses.append(failed.status)
        self.assertEqual(statuses, [401] * 5 + [429])
        ok, _ = await self.post("first-only", OTHER_DEVICE, "-u", "bob:builder")
        self.assertEqual(ok.status, 200, ok.raw_head)
        refused, _ = await self.post("first-only", DEVICE, "-u", "bob:builder")
        self.assertEqual(refused.status, 429, refused.raw_head)

    async def test_bad_header(self) -> None:
        """A connection straight to a gateway's PROXY port with a bad header, or
        none, is closed unanswered with one log line; a connection already open
        through the balancer, and the next new one, are served."""
        first = self.backends[0]
        port = self.haproxy.ports["first-only"]
        open_ = RawClient(reactor, DEVICE, port, KEEP_ALIVE_POST)
        self.addCleanup(open_.close)
        self.assertIn(b" 200 ", await open_.answered)
        bad = [
            (
                first.http_port,
                b"PROXY TCP4 1.2.3.4 5.6.7.8 x 80\r\n" + KEEP_ALIVE_POST,
            ),
            (first.http_port, KEEP_ALIVE_POST),
            (first.tls_port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 20),
        ]
        for gateway_port, data in bad:
            closed = await RawClient(reactor, "127.0.0.1", gateway_port, data).closed
            self.assertEqual(closed, b"")
        lines = [line for line in self.log if "Closed a connection" in line]
        self.assertEqual(len(lines), 3, lines)
        self.assertIn("a bad port 'x' in a version 1 header", lines[0])
        self.assertIn(f"on haproxy:tcp:{first.http_port}", lines[0])
        self.assertIn("no PROXY protocol header", lines[2])
        self.assertIn(f"on haproxy:tcp:{first.tls_port}", lines[2])
        # The open connection takes another request; a new one is served too.
        open_.protocol.received = b""
        again = Deferred[bytes]()
        open_.protocol.answered = again
        assert open_.protocol.transport is not None
        open_.protocol.transport.write(KEEP_ALIVE_POST)
        self.assertIn(b" 200 ", await again)
        result, peer = await self.post("first-only")
        self.assertEqual(result.status, 200, result.raw_head)
        self.assertEqual((await self.record_of(peer))["status"], 200)

    async def test_health_check(self) -> None:
        """HAProxy's health checks (PROXY version 2 LOCAL) are served as the
        balancer's own connections."""
        checked = self.backends[1]

        def checks() -> list[dict[str, Any]]:
            return [r for r in checked.records() if r["path"] == "/balancer-check"]

        await poll(reactor, lambda: len(checks()) >= 2, 10, lambda: "no checks")
        self.assertEqual({r["status"] for r in checks()}, {400})
        self.assertEqual(
            {r["peer"].rpartition(":")[0] for r in checks()}, {"127.0.0.1"}
        )
        self.assertEqual(
            [line for line in self.log if "Closed a connection" in line], []
        )
