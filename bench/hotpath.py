"""
C{python -m bench.hotpath [--profile N] [--requests N]}: the CPU the gateway
spends per API 1 request, in this process, without sockets on the HTTP side.

The whole service tree of the shipped defaults is built by C{makeService}
(access log on, to a file; rate limits on) in front of a real Mosquitto; 32
in-memory HTTP connections each send the next 64-byte QoS 1 POST as soon as the
previous answer was written, as C{wrk -c32} does. The same loop over the bare
llhttp protocol of L{bench.baseline} gives the floor. Both figures are
microseconds of this process's CPU per request (C{time.process_time}); their
ratio is what the gateway costs per request next to parsing HTTP alone, free of
the noise of a load generator sharing the machine.

C{--profile N} prints the N costliest functions of the gateway loop
(cProfile, by internal time, from a fourth run): where the time goes. The
figures are the least of three runs: the machine is shared, and a run can only
be slowed down by others, never sped up.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from bench.processes import start_mosquitto
from bench.report import publish

CONNECTIONS = 32
BODY = b"%064d"


def _request(n: int) -> bytes:
    body = b"%064d" % n
    return (
        b"POST /topics/bench/load?qos=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


class _Client(StringTransport):
    """
    One in-memory connection: every write is an answer, upon which the next
    request is sent (from the reactor, not from inside the write).
    """

    def __init__(self, loop: _Loop, number: int) -> None:
        super().__init__(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000 + number),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
        )
        self.loop = loop

    def write(self, data: bytes) -> None:
        self.loop.answered(self, data)


class _Loop:
    """C{count} requests over L{CONNECTIONS} connections to C{factory}."""

    def __init__(self, factory: Any, count: int, reactor: Any) -> None:
        self.factory = factory
        self.count = count
        self.sent = 0
        self.answers = 0
        self.ok = 0
        self.reactor = reactor
        self.done: Callable[[], None] = lambda: None
        self.protocols: dict[_Client, Protocol] = {}

    def start(self) -> None:
        for number in range(CONNECTIONS):
            client = _Client(self, number)
            protocol = self.factory.buildProtocol(client.getPeer())
            assert protocol is not None
            protocol.makeConnection(client)
            self.protocols[client] = protocol
            self.send(client)

    def send(self, client: _Client) -> None:
        if self.sent >= self.count:
            return
        self.sent += 1
        self.protocols[client].dataReceived(_request(self.sent))

    def answered(self, client: _Client, data: bytes) -> None:
        self.answers += 1
        if data.startswith(b"HTTP/1.1 200"):
            self.ok += 1
        if self.answers >= self.count:
            self.reactor.callLater(0, self.done)
        else:
            self.reactor.callLater(0, self.send, client)


async def _run(factory: Any, count: int, reactor: Any) -> tuple[float, int]:
    """CPU seconds per request of C{count} requests, and how many were 200."""
    from twisted.internet.defer import Deferred

    loop = _Loop(factory, count, reactor)
    finished: Deferred[None] = Deferred()
    loop.done = lambda: finished.callback(None)
    started = time.process_time()
    loop.start()
    await finished
    return (time.process_time() - started) / count, loop.ok


def gateway_factory(broker_port: int, directory: Path, reactor: Any) -> Any:
    """
    The started service tree of the shipped defaults (access log to a file in
    C{directory}) publishing to the broker on C{broker_port}, and its HTTP factory.
    """
    from gateway.listeners import Listener
    from gateway.tap import Options, makeService

    config = directory / "gateway.toml"
    config.write_text(
        "[auth]\nallow_anonymous = true\n"
        f"[log]\naccess = {str(directory / 'access.log')!r}\n"
        "[limits]\nrate = 1000000\nburst = 1000000\n"
    )
    options = Options()
    options.parseOptions(
        [
            "--config",
            str(config),
            "--broker",
            f"mqtt://127.0.0.1:{broker_port}",
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ]
    )
    root = makeService(options, reactor)
    root.privilegedStartService()
    root.startService()
    factory = None
    for service in root:  # type: ignore[attr-defined]
        if isinstance(service, Listener) and service.kind == "HTTP":
            factory = service.factory
    assert factory is not None
    return root, factory


async def _connected(factory: Any, reactor: Any) -> None:
    """Wait until requests are answered 200 (the broker session is up)."""
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await deferLater(reactor, 0.1, lambda: None)
        if (await _run(factory, CONNECTIONS, reactor))[1] == CONNECTIONS:
            return
    raise RuntimeError("the gateway did not connect to the broker")


def main(argv: list[str]) -> int:
    """Measure; print the figures (and a profile with C{--profile})."""
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    parser.add_argument("--dump", metavar="FILE", help="save the profile (pstats)")
    parser.add_argument("--output", default="bench/RESULTS.md")
    args = parser.parse_args(argv)

    from twisted.internet import task
    from twisted.internet.defer import ensureDeferred

    task.react(lambda reactor: ensureDeferred(_measure(args, reactor)))
    return 0


async def _measure(args: argparse.Namespace, reactor: Any) -> None:
    from bench.baseline import LlhttpOk

    bare_factory = Factory.forProtocol(LlhttpOk)
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        broker = start_mosquitto(directory)
        try:
            root, factory = gateway_factory(broker.port, directory, reactor)
            await _connected(factory, reactor)
            await _run(factory, 2000, reactor)  # warm up
            bare, _ = await _run(bare_factory, args.requests, reactor)
            gateway, ok = min(
                [await _run(factory, args.requests, reactor) for _ in range(3)]
            )
            profile = cProfile.Profile() if args.profile else None
            if profile is not None:
                profile.enable()
                await _run(factory, args.requests, reactor)
                profile.disable()
            bare_again, _ = await _run(bare_factory, args.requests, reactor)
            await root.stopService()
        finally:
            broker.stop()
    floor = min(bare, bare_again)
    lines = [
        f"- Command: `python -m bench.hotpath --requests {args.requests}"
        + (f" --profile {args.profile}`" if profile is not None else "`"),
        f"- Gateway (API 1, QoS 1, 64-byte bodies, access log to a file, 32"
        f" in-memory connections, a real Mosquitto): **{gateway * 1e6:.1f} µs of"
        f" CPU per request** ({ok} of {args.requests} answered 200); the bare llhttp"
        f" protocol over the same in-memory connections: {floor * 1e6:.1f} µs (no"
        " sockets on the HTTP side for either; least of three runs each)",
    ]
    if profile is not None:
        stats = pstats.Stats(profile)
        calls = stats.total_calls / args.requests  # type: ignore[attr-defined]
        lines += [
            f"- Profiled: {calls:.0f} Python function calls per request. Own time"
            " by layer, in µs per request under the profiler (which inflates"
            " every call alike):",
            "",
            by_layer(profile, args.requests),
        ]
    publish(
        Path(args.output),
        "python -m bench.hotpath",
        "CPU per request in-process, and where it goes",
        lines,
    )
    if profile is not None:
        stats = pstats.Stats(profile, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(args.profile)
        if args.dump:
            stats.dump_stats(args.dump)


def _layer(filename: str) -> str:
    """The part of the stack a profiled function belongs to."""
    if "/gateway/" in filename:
        return "gateway/" + filename.rsplit("/gateway/", 1)[1]
    if "/twisted/internet/defer.py" in filename:
        return "twisted Deferred"
    if "/twisted/" in filename:
        return "twisted reactor and transports"
    if "/bench/" in filename:
        return "this benchmark's clients"
    if filename == "~":
        return "built-ins (len, isinstance, socket calls, ...)"
    return "standard library"


def by_layer(profile: cProfile.Profile, requests: int) -> str:
    """
    A Markdown table of the profiled time by layer (own time of each function,
    summed), in microseconds per request under the profiler and in percent.
    """
    stats = pstats.Stats(profile)
    totals: dict[str, float] = {}
    for (filename, _, _), row in stats.stats.items():  # type: ignore[attr-defined]
        layer = _layer(filename)
        totals[layer] = totals.get(layer, 0.0) + row[2]
    whole = sum(totals.values())
    lines = ["| layer | us/request (profiled) | share |", "|---|---|---|"]
    for layer, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        lines.append(
            f"| {layer} | {seconds / requests * 1e6:.1f} | {seconds / whole:.0%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
