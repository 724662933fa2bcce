"""
Tests of L{tests.linkcutter.LinkCutter} between Twisted clients and a tiny echo
server, all on the real reactor and loopback.
"""

from __future__ import annotations

import os
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.brokers import free_port, poll
from tests.linkcutter import LinkCutter


class _Recorder(Protocol):
    """Records what it receives and how its connection ended."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.received = b""
        self.reason: Failure | None = None
        self.made: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.lost.callback(None)

    async def closed(self) -> Failure:
        """Wait for the connection to end; return why it did."""
        await self.lost
        assert self.reason is not None
        return self.reason


class LinkCutterTests(unittest.TestCase):
    timeout = 20

    def setUp(self) -> None:
        # The echo server: every accepted connection is a _Recorder that echoes.
        self.served: list[_Recorder] = []

        def build(addr: Any) -> _Recorder:
            served = _Recorder(echo=True)
            self.served.append(served)
            return served

        factory = ServerFactory()
        factory.buildProtocol = build  # type: ignore[method-assign]
        listener = cast(Any, reactor).listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listener.stopListening)
        self.cutter = LinkCutter("127.0.0.1", listener.getHost().port)
        self.cutter.start()
        self.addCleanup(self._closeAll)
        self.clients: list[_Recorder] = []

    async def _closeAll(self) -> None:
        await self.cutter.stop()
        for recorder in self.clients + self.served:
            if recorder.reason is None:
                recorder.transport.abortConnection()  # type: ignore[union-attr]
                await recorder.lost

    async def connect(self, port: int | None = None) -> _Recorder:
        client = _Recorder()
        self.clients.append(client)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port or self.cutter.port)
        await connectProtocol(endpoint, client)
        return client

    async def until(self, ready: Any, what: str) -> None:
        await poll(reactor, ready, 5, lambda: f"{what}; {self.cutter!r}")

    async def test_bytes_pass_unchanged(self) -> None:
        """
        Every byte value, in a megabyte written at once from each of two clients,
        reaches the target and comes back unchanged; both connections count.
        """
        data = bytes(range(256)) * 16 + os.urandom(1 << 20)
        first, second = await self.connect(), await self.connect()
        for client in (first, second):
            client.transport.write(data)  # type: ignore[union-attr]
        await self.until(
            lambda: len(first.received) >= len(data) <= len(second.received),
            "the echo did not come back",
        )
        self.assertEqual(first.received, data)
        self.assertEqual(second.received, data)
        self.assertEqual(self.cutter.connections, 2)
        self.assertEqual(self.cutter.cuts, 0)

    async def test_ordinary_close_passes_through(self) -> None:
        """
        A client's clean close closes the target side cleanly, after its bytes;
        the target's close closes the client cleanly.
        """
        client = await self.connect()
        client.transport.write(b"bye")  # type: ignore[union-attr]
        client.transport.loseConnection()  # type: ignore[union-attr]
        await self.until(lambda: bool(self.served), "no connection to the target")
        reason = await self.served[0].closed()
        self.assertEqual(self.served[0].received, b"bye")
        self.assertTrue(reason.check(ConnectionDone), reason)

        other = await self.connect()
        await self.until(lambda: len(self.served) == 2, "no second connection")
        self.served[1].transport.loseConnection()  # type: ignore[union-attr]
        reason = await other.closed()
        self.assertTrue(reason.check(ConnectionDone), reason)
        self.assertEqual(self.cutter.cuts, 0)

    async def test_cut_resets_every_pair(self) -> None:
        """
        cut() resets both sides of every current connection at once and counts
        them; a new connection afterwards works.
        """
        clients = [await self.connect(), await self.connect()]
        for client in clients:
            client.transport.write(b"ping")  # type: ignore[union-attr]
        await self.until(lambda: all(c.received == b"ping" for c in clients), "no echo")
        self.assertEqual(self.cutter.cut(), 2)
        for recorder in [*clients, *self.served]:
            reason = await recorder.closed()
            self.assertFalse(reason.check(ConnectionDone), reason)
        self.assertEqual(self.cutter.cuts, 2)
        self.assertEqual(self.cutter.cut(), 0)

        again = await self.connect()
        again.transport.write(b"again")  # type: ignore[union-attr]
        await self.until(lambda: again.received == b"again", "no echo after a cut")
        self.assertEqual(self.cutter.connections, 3)

    async def test_cut_after_bytes_upwards(self) -> None:
        """
        cut_after(5, "up") passes exactly 5 more client bytes (mid-chunk here),
        then cuts; the Deferred fires with the pairs cut.
        """
        client = await self.connect()
        client.transport.write(b"abc")  # type: ignore[union-attr]
        await self.until(lambda: client.received == b"abc", "no echo")
        cutting = self.cutter.cut_after(5, "up")
        client.transport.write(b"0123456789")  # type: ignore[union-attr]
        self.assertEqual(await cutting, 1)
        await client.lost
        await self.served[0].lost
        self.assertEqual(self.served[0].received, b"abc01234")
        self.assertEqual(client.received, b"abc")

    async def test_cut_after_bytes_downwards(self) -> None:
        """
        With direction "down" the client gets the first bytes of the target's
        chunk and then loses the connection.
        """
        client = await self.connect()
        cutting = self.cutter.cut_after(2, "down")
        client.transport.write(b"hello")  # type: ignore[union-attr]
        self.assertEqual(await cutting, 1)
        await client.lost
        self.assertEqual(client.received, b"he")

    async def test_cut_midway(self) -> None:
        """
        cut_after() with no count cuts inside the next chunk: a strict prefix of
        it gets through.
        """
        client = await self.connect()
        chunk = bytes(range(200))
        cutting = self.cutter.cut_after()
        client.transport.write(chunk)  # type: ignore[union-attr]
        await cutting
        await self.until(lambda: bool(self.served), "no connection to the target")
        await self.served[0].lost
        got = self.served[0].received
        self.assertLess(len(got), len(chunk))
        self.assertEqual(got, chunk[: len(got)])

    async def test_refuse(self) -> None:
        """
        refuse(True) resets new connections at once, without reaching the target,
        and keeps current ones; refuse(False) lets them through again.
        """
        kept = await self.connect()
        self.cutter.refuse(True)
        refused = await self.connect()
        reason = await refused.closed()
        self.assertFalse(reason.check(ConnectionDone), reason)
        self.assertEqual(self.cutter.refusals, 1)
        self.assertEqual(len(self.served), 1)

        kept.transport.write(b"still")  # type: ignore[union-attr]
        await self.until(lambda: kept.received == b"still", "the kept link broke")
        self.cutter.refuse(False)
        back = await self.connect()
        back.transport.write(b"back")  # type: ignore[union-attr]
        await self.until(lambda: back.received == b"back", "no echo after refuse")
        self.assertEqual(self.cutter.connections, 2)

    async def test_target_down(self) -> None:
        """A client of a proxy whose target does not listen is reset at once."""
        cutter = LinkCutter("127.0.0.1", free_port())
        cutter.start()
        self.addCleanup(cutter.stop)
        client = await self.connect(cutter.port)
        reason = await client.closed()
        self.assertFalse(reason.check(ConnectionDone), reason)

    async def test_cut_every(self) -> None:
        """
        cut_every() keeps cutting a client that keeps reconnecting, mid-chunk with
        midway=True; after stop_cutting() a link stays up.
        """
        self.cutter.cut_every(0.05, jitter=0.04, midway=True)
        for _ in range(4):
            client = await self.connect()
            while client.reason is None:
                client.transport.write(b"x" * 100)  # type: ignore[union-attr]
                await deferLater(reactor, 0.01)
        self.assertGreaterEqual(self.cutter.cuts, 4)
        self.cutter.stop_cutting()
        cuts = self.cutter.cuts
        client = await self.connect()
        await deferLater(reactor, 0.3)
        self.assertIsNone(client.reason)
        self.assertEqual(self.cutter.cuts, cuts)
