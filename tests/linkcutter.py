# -*- test-case-name: tests.test_linkcutter -*-
"""
A TCP proxy that cuts its links on demand, for tests of connection loss.

Not a test module: a test puts it between a client and a real broker, on the real
reactor in the test process::

    cutter = LinkCutter(broker.host, broker.port)
    cutter.start()
    self.addCleanup(cutter.stop)
    ... connect the client to cutter.host, cutter.port ...
    cutter.cut()                      # every connection, both sides, at once
    cutter.cut_after(3, "up")         # after 3 more bytes client -> broker
    cutter.cut_every(1.0, jitter=0.5, midway=True)
    cutter.refuse(True)               # new connections fail at once

Only loopback addresses are meant for it; it forwards bytes unchanged.
"""

from __future__ import annotations

import random
import socket
import struct
from typing import Any, Literal

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure

from tests.brokers import _defaultReactor

#: Client -> target is "up", target -> client is "down".
Direction = Literal["up", "down"]


class _Half(Protocol):
    """One TCP connection of a pair; what it receives goes to the other one."""

    def __init__(self, pair: _Pair, direction: Direction) -> None:
        self.pair = pair
        # The direction of the bytes this connection receives.
        self.direction: Direction = direction
        self.lost: Deferred[None] = Deferred()
        self.connected = False

    def connectionMade(self) -> None:
        self.connected = True
        if self is self.pair.client:
            self.pair.connectUpstream()

    def dataReceived(self, data: bytes) -> None:
        self.pair.forward(self, data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = False
        self.pair.halfLost(self)
        self.lost.callback(None)


class _Pair:
    """An accepted client connection and its connection to the target."""

    def __init__(self, cutter: LinkCutter) -> None:
        self.cutter = cutter
        self.client = _Half(self, "up")
        self.server: _Half | None = None
        self.connecting: Deferred[Any] | None = None
        self.cut = False

    def halves(self) -> list[_Half]:
        return [h for h in (self.client, self.server) if h is not None]

    def peer(self, half: _Half) -> _Half | None:
        return self.server if half is self.client else self.client

    def connectUpstream(self) -> None:
        # No reads from the client until the target is connected: nothing to buffer.
        self.client.transport.pauseProducing()  # type: ignore[union-attr]
        server = _Half(self, "down")
        endpoint = TCP4ClientEndpoint(
            self.cutter.reactor, self.cutter.targetHost, self.cutter.targetPort
        )
        self.connecting = connectProtocol(endpoint, server)
        self.connecting.addCallbacks(self._upstreamMade, self._upstreamFailed)

    def _upstreamMade(self, server: _Half) -> None:
        self.connecting = None
        self.server = server
        if self.cut or not self.client.connected:
            self.cut = True
            server.transport.abortConnection()  # type: ignore[union-attr]
            return
        client = self.client.transport
        client.registerProducer(server.transport, True)  # type: ignore[union-attr]
        server.transport.registerProducer(client, True)  # type: ignore[union-attr]
        client.resumeProducing()  # type: ignore[union-attr]

    def _upstreamFailed(self, reason: Failure) -> None:
        # The target is down (or the attempt was cancelled): so is the link.
        self.connecting = None
        if self.client.connected:
            self.client.transport.abortConnection()  # type: ignore[union-attr]
        self._forgetIfClosed()

    def forward(self, half: _Half, data: bytes) -> None:
        peer = self.peer(half)
        if self.cut or peer is None or not peer.connected:
            return
        keep = self.cutter._cutPoint(half.direction, len(data))
        if keep is None:
            peer.transport.write(data)  # type: ignore[union-attr]
            return
        # The cut falls inside (or at the end of) this chunk: the peer gets the
        # bytes before it, flushed, then FIN and reset; the sender a reset at once.
        peer.transport.write(data[:keep])  # type: ignore[union-attr]
        self.abort(flushed=peer)
        self.cutter._cutRest(already=1)

    def abort(self, flushed: _Half | None = None, count: bool = True) -> None:
        """Cut this pair (both sides); C{flushed} first gets its pending bytes."""
        self.cut = True
        if count:
            self.cutter.cuts += 1
        if self.connecting is not None:
            self.connecting.cancel()
        for half in self.halves():
            if not half.connected:
                continue
            transport: Any = half.transport
            transport.unregisterProducer()
            if half is flushed:
                # loseConnection flushes; SO_LINGER 0 turns its close into a reset.
                handle = transport.getHandle()
                handle.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                transport.loseConnection()
            else:
                transport.abortConnection()

    def halfLost(self, half: _Half) -> None:
        peer = self.peer(half)
        if not self.cut and peer is not None and peer.connected:
            # An ordinary close on one side closes the other after its bytes.
            peer.transport.loseConnection()  # type: ignore[union-attr]
        self._forgetIfClosed()

    def _forgetIfClosed(self) -> None:
        if self.connecting is None and not any(h.connected for h in self.halves()):
            self.cutter._pairs.discard(self)


class _Refused(Protocol):
    """A connection accepted only to be reset at once."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]


class _Armed:
    """A cut waiting for traffic: after C{remaining} bytes, or inside a chunk."""

    def __init__(self, nbytes: int | None, direction: Direction | None) -> None:
        self.remaining = nbytes
        self.direction = direction
        self.done: Deferred[int] = Deferred()

    def cutPoint(
        self, direction: Direction, length: int, rng: random.Random
    ) -> int | None:
        if self.direction is not None and direction != self.direction:
            return None
        if self.remaining is None:
            return rng.randrange(length)
        if length < self.remaining:
            self.remaining -= length
            return None
        return self.remaining


class LinkCutter:
    """
    A TCP proxy on C{host:port} (a free port by default) that forwards every
    accepted connection to C{targetHost:targetPort}, bytes unchanged, and cuts the
    links when told to.

    A cut aborts both connections of every current pair at once (TCP reset), as a
    broken link looks to both ends after their keep-alive; data in flight is lost.

    @ivar connections: connections accepted and forwarded (refused ones excluded).
    @ivar cuts: connection pairs cut so far (one cut of three pairs counts 3).
    @ivar refusals: connections refused while L{refuse} was on.
    @ivar seed: the seed of the random cut points, to reproduce a failure.
    """

    def __init__(
        self,
        targetHost: str,
        targetPort: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        reactor: Any = None,
    ) -> None:
        self.targetHost = targetHost
        self.targetPort = targetPort
        self.host = host
        self.port = port
        self.reactor = _defaultReactor(reactor)
        self.seed = seed if seed is not None else random.randrange(2**32)
        self._random = random.Random(self.seed)
        self.connections = 0
        self.cuts = 0
        self.refusals = 0
        self._refusing = False
        self._pairs: set[_Pair] = set()
        self._armed: _Armed | None = None
        self._listener: Any = None
        self._timer: Any = None

    def __repr__(self) -> str:
        return (
            f"<LinkCutter {self.host}:{self.port} -> {self.targetHost}:"
            f"{self.targetPort} connections={self.connections} cuts={self.cuts} "
            f"seed={self.seed}>"
        )

    def start(self) -> None:
        """Listen; L{port} is the port clients connect to from now on."""
        factory = ServerFactory()
        factory.buildProtocol = self._accept  # type: ignore[method-assign]
        self._listener = self.reactor.listenTCP(self.port, factory, interface=self.host)
        self.port = self._listener.getHost().port

    def _accept(self, addr: Any) -> Protocol:
        if self._refusing:
            self.refusals += 1
            return _Refused()
        self.connections += 1
        pair = _Pair(self)
        self._pairs.add(pair)
        return pair.client

    def refuse(self, refusing: bool) -> None:
        """
        While true, every new connection is accepted and reset at once, before
        anything is forwarded (the port stays bound); current ones are kept.
        """
        self._refusing = refusing

    def cut(self) -> int:
        """Cut every current connection pair now; return how many were cut."""
        pairs = [pair for pair in self._pairs if not pair.cut]
        for pair in pairs:
            pair.abort()
        return len(pairs)

    def cut_after(
        self, nbytes: int | None = None, direction: Direction | None = None
    ) -> Deferred[int]:
        """
        Cut every pair once C{nbytes} more bytes have been forwarded in
        C{direction} (C{"up"}: client to target, C{"down"}: back, C{None}:
        either), counted across all pairs; C{nbytes=None} cuts at a random point
        inside the next chunk read (0 to len - 1 of its bytes are passed on), so
        that the cut falls mid-packet. The peer that gets the truncated chunk
        receives those bytes and then the end of the connection (FIN, then a
        reset: it may see either); every other connection is reset at once.

        Fires with the number of pairs cut. Only one such cut is armed at a time:
        arming another fires the earlier one's Deferred with 0.
        """
        self._disarm()
        self._armed = _Armed(nbytes, direction)
        if nbytes == 0:
            return self._fire(self.cut())
        return self._armed.done

    def _disarm(self) -> bool:
        armed, self._armed = self._armed, None
        if armed is not None:
            armed.done.callback(0)
        return armed is not None

    def _fire(self, count: int) -> Deferred[int]:
        armed, self._armed = self._armed, None
        assert armed is not None
        armed.done.callback(count)
        return armed.done

    def _cutPoint(self, direction: Direction, length: int) -> int | None:
        if self._armed is None:
            return None
        return self._armed.cutPoint(direction, length, self._random)

    def _cutRest(self, already: int) -> None:
        self._fire(already + self.cut())

    def cut_every(
        self, seconds: float, jitter: float = 0.0, midway: bool = False
    ) -> None:
        """
        Cut all links repeatedly until L{stop_cutting}: each wait is C{seconds}
        plus a uniform random C{-jitter .. +jitter} (at least 1 ms).

        With C{midway}, each cut is armed to fall inside the next chunk read (as
        L{cut_after} with C{nbytes=None}); if no byte moves before the next one is
        due, that one cuts plainly instead.
        """
        self.stop_cutting()

        def tick() -> None:
            if midway:
                if self._disarm():
                    self.cut()
                self.cut_after(None)
            else:
                self.cut()
            schedule()

        def schedule() -> None:
            wait = max(0.001, seconds + self._random.uniform(-jitter, jitter))
            self._timer = self.reactor.callLater(wait, tick)

        schedule()

    def stop_cutting(self) -> None:
        """End L{cut_every} and disarm a pending L{cut_after}."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._disarm()

    def stop(self) -> Deferred[None]:
        """
        Stop cutting and listening, reset every connection (not counted as cuts)
        and fire once all of them are closed.
        """
        self.stop_cutting()
        waits: list[Deferred[Any]] = []
        for pair in list(self._pairs):
            pair.abort(count=False)
            waits += [h.lost for h in pair.halves() if not h.lost.called]
        if self._listener is not None:
            waits.append(self._listener.stopListening() or succeed(None))
            self._listener = None
        d: Deferred[Any] = DeferredList(waits)
        return d.addCallback(lambda _: None)
