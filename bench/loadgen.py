"""
A small HTTP(S) load generator for what wrk cannot do: TLS client certificates,
and a new TLS connection per request with or without session resumption.

It sends what C{bench/post.lua} sends (C{POST}, a distinct 64-byte body per
request, the same body format, optionally C{Authorization}) from several
processes (C{python -m bench.loadgen}, so that the GIL of one does not limit the
load), each with one thread per connection, blocking sockets and a hand-written
HTTP/1.x exchange (one request at a time per connection, like wrk). Each process
measures its own CPU time over the measured window, so the report can show
whether the client was the bottleneck.

Keep-alive: every thread opens its connection (and does its TLS handshake)
before the measured window and keeps it. C{--close}: every request is HTTP/1.0
on a new connection, read until the server closes it; C{--resume} offers the
session of the thread's previous connection (Python's C{ssl} C{session=}).

Latency, as wrk measures it: from writing the request to the end of the
response, without connecting; connect plus TLS handshake times are kept apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import socket
import ssl
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import Child, StartError

#: Seconds a connect, a write or a response may take before it counts as a timeout.
TIMEOUT = 15.0
#: Seconds the parent gives its processes to start and connect before the window.
START_DELAY = 2.0
_PREFIX = "bench-loadgen: "


@dataclass(frozen=True)
class Target:
    """
    What to send where.

    @ivar path: the request target (path and query).
    @ivar cafile: the CA the server certificate must chain to (TLS only).
    @ivar certfile: the client certificate chain to present, if any.
    @ivar keyfile: its key.
    @ivar authorization: an C{Authorization} header value, if any.
    @ivar close: HTTP/1.0, a new connection per request.
    @ivar resume: with C{close} over TLS: resume the previous connection's session.
    """

    host: str
    port: int
    path: str
    tls: bool = False
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    authorization: str | None = None
    close: bool = False
    resume: bool = False

    def argv(self) -> list[str]:
        """The command-line options that describe this target."""
        argv = ["--host", self.host, "--port", str(self.port), "--path", self.path]
        for option, value in (
            ("--cafile", self.cafile),
            ("--cert", self.certfile),
            ("--key", self.keyfile),
            ("--authorization", self.authorization),
        ):
            if value is not None:
                argv += [option, value]
        for flag, on in (
            ("--tls", self.tls),
            ("--close", self.close),
            ("--resume", self.resume),
        ):
            if on:
                argv.append(flag)
        return argv

    def url(self) -> str:
        """The URL, for messages."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}{self.path}"


# --- the client process -------------------------------------------------------


class _Thread:
    """One connection's worker and what it counted."""

    def __init__(self, target: Target, context: ssl.SSLContext | None, wid: int):
        self.target = target
        self.context = context
        self.wid = wid
        self.sent = 0
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies = array("d")
        self.handshakes = array("d")
        self.resumed = 0
        self.finished = 0.0
        self.ready_at = 0.0
        self.tls_version: str | None = None
        self.cipher: str | None = None
        version = "1.0" if target.close else "1.1"
        headers = [
            f"POST {target.path} HTTP/{version}",
            f"Host: {target.host}:{target.port}",
            "Content-Type: application/octet-stream",
            "Content-Length: 64",
        ]
        if target.authorization is not None:
            headers.append(f"Authorization: {target.authorization}")
        self.head = ("\r\n".join(headers) + "\r\n\r\n").encode()
        self._session: ssl.SSLSession | None = None

    def connect(self) -> socket.socket:
        """A new connection, TLS handshake done, its time recorded."""
        started = time.perf_counter()
        raw = socket.create_connection(
            (self.target.host, self.target.port), timeout=TIMEOUT
        )
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context is None:
            self.handshakes.append(time.perf_counter() - started)
            return raw
        try:
            sock = self.context.wrap_socket(
                raw,
                server_hostname=self.target.host,
                session=self._session if self.target.resume else None,
            )
        except BaseException:
            raw.close()
            raise
        self.handshakes.append(time.perf_counter() - started)
        if sock.session_reused:
            self.resumed += 1
        if self.tls_version is None:
            self.tls_version = sock.version()
            cipher = sock.cipher()
            self.cipher = None if cipher is None else cipher[0]
        return sock

    def run(self, start_at: float, end_at: float) -> None:
        """Send requests from C{start_at} until C{end_at} (monotonic clock)."""
        sock: socket.socket | None = None
        buffer = bytearray()
        number = 0
        if not self.target.close:
            # Keep-alive: connect before the window, like wrk.
            try:
                sock = self.connect()
            except (OSError, ValueError):
                self.errors["connect"] += 1
            self.handshakes = array("d")
        self.ready_at = time.monotonic()
        time.sleep(max(0.0, start_at - time.monotonic()))
        while time.monotonic() < end_at:
            step = "connect"
            try:
                if sock is None:
                    sock = self.connect()
                    buffer.clear()
                number += 1
                request = self.head + f"{self.wid:03d}:{number:060d}".encode()
                step = "write"
                written = time.perf_counter()
                sock.sendall(request)
                self.sent += 1
                step = "read"
                status, closing = _read_response(sock, buffer)
                self.latencies.append(time.perf_counter() - written)
                self.statuses[status] += 1
                if closing or self.target.close:
                    if isinstance(sock, ssl.SSLSocket):
                        self._session = sock.session
                    _read_to_end(sock)
                    sock.close()
                    sock = None
            except TimeoutError:
                self.errors["timeout"] += 1
                _close(sock)
                sock = None
            except (OSError, ValueError, EOFError):
                self.errors[step] += 1
                _close(sock)
                sock = None
                if step == "connect":
                    time.sleep(0.01)
        _close(sock)
        self.finished = time.monotonic()


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, bool]:
    """
    Read one response from C{sock} (what is left of the stream stays in
    C{buffer}); its status, and whether the server closes the connection.

    @raise EOFError: when the connection ends first.
    @raise ValueError: for a response this cannot read.
    """
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError
        buffer += chunk
    head = bytes(buffer[:end]).lower()
    status = int(head[9:12])
    length = 0
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : line_end if line_end >= 0 else None])
    closing = b"\r\nconnection: close" in head
    total = end + 4 + length
    while len(buffer) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError
        buffer += chunk
    del buffer[:total]
    return status, closing


def _read_to_end(sock: socket.socket) -> None:
    """Read until the server closes (so the server, not the client, closes first)."""
    try:
        while sock.recv(65536):
            pass
    except (OSError, ValueError):
        pass


def _context(target: Target) -> ssl.SSLContext | None:
    if not target.tls:
        return None
    context = ssl.create_default_context(cafile=target.cafile)
    if target.certfile is not None:
        context.load_cert_chain(target.certfile, target.keyfile)
    return context


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def client_main(argv: Sequence[str] | None = None) -> int:
    """C{python -m bench.loadgen}: one client process."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--cafile")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--authorization")
    parser.add_argument("--close", action="store_true")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--first-id", type=int, default=1)
    parser.add_argument("--start-at", type=float, required=True, help="monotonic")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    target = Target(
        host=args.host,
        port=args.port,
        path=args.path,
        tls=args.tls,
        cafile=args.cafile,
        certfile=args.cert,
        keyfile=args.key,
        authorization=args.authorization,
        close=args.close,
        resume=args.resume,
    )
    context = _context(target)
    workers = [
        _Thread(target, context, args.first_id + i) for i in range(args.connections)
    ]
    end_at = args.start_at + args.duration
    threads = [
        threading.Thread(target=w.run, args=(args.start_at, end_at), daemon=True)
        for w in workers
    ]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, args.start_at - time.monotonic()))
    cpu_before = _cpu_seconds()
    for thread in threads:
        thread.join()
    cpu = _cpu_seconds() - cpu_before
    latencies = array("d")
    handshakes = array("d")
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    for w in workers:
        latencies.extend(w.latencies)
        handshakes.extend(w.handshakes)
        statuses.update(w.statuses)
        errors.update(w.errors)
    with open(args.output.with_suffix(".latency"), "wb") as f:
        latencies.tofile(f)
    with open(args.output.with_suffix(".handshake"), "wb") as f:
        handshakes.tofile(f)
    first = next((w for w in workers if w.tls_version is not None), None)
    summary = {
        "sent": sum(w.sent for w in workers),
        "responses": sum(statuses.values()),
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": dict(errors),
        "handshakes": len(handshakes),
        "resumed": sum(w.resumed for w in workers),
        "finished": max(w.finished for w in workers),
        "late_s": max(w.ready_at for w in workers) - args.start_at,
        "cpu_s": cpu,
        "tls_version": None if first is None else first.tls_version,
        "cipher": None if first is None else first.cipher,
    }
    args.output.write_text(json.dumps(summary))
    print(_PREFIX + json.dumps(summary), flush=True)
    return 0


# --- the parent side ------------------------------------------------------------


def percentile(values: Sequence[float], percent: float) -> float:
    """The C{percent}th percentile of sorted C{values} (nearest rank); 0 if empty."""
    if not values:
        return 0.0
    rank = max(0, min(len(values) - 1, round(percent / 100 * len(values)) - 1))
    return values[rank]


@dataclass(frozen=True)
class LoadResult:
    """
    What the processes of one run counted together.

    @ivar wall_s: from the window's start to the last thread's end.
    @ivar latency_ms: percentile -> milliseconds, request written to response read.
    @ivar handshake_ms: percentile -> milliseconds to connect (and handshake),
        over the connections opened in the window.
    @ivar cpu_s: CPU seconds all client processes used in the window.
    @ivar late_s: how late the slowest process was ready for the window (0: in
        time).
    """

    processes: int
    connections: int
    sent: int
    responses: int
    statuses: dict[int, int]
    errors: dict[str, int]
    wall_s: float
    latency_ms: dict[int, float]
    handshakes: int
    resumed: int
    handshake_ms: dict[int, float]
    cpu_s: float
    late_s: float
    tls_version: str | None = None
    cipher: str | None = None
    commands: list[list[str]] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        """Responses per second of the window."""
        return self.responses / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def non_2xx(self) -> int:
        """Responses whose status is not 2xx."""
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)


class LoadRun:
    """
    The client processes of one run, started at once; the measured window starts
    at L{start_at} (monotonic clock, shared by every process of the machine).
    Use it as a context manager: leaving the block stops what still runs.
    """

    def __init__(
        self,
        target: Target,
        *,
        duration: float,
        connections: int,
        processes: int,
        directory: Path,
        tag: str,
    ) -> None:
        self.duration = duration
        self.start_at = time.monotonic() + START_DELAY
        self.children: list[Child] = []
        self.outputs: list[Path] = []
        self.commands: list[list[str]] = []
        processes = max(1, min(processes, connections))
        self.connections = connections
        share, extra = divmod(connections, processes)
        first = 1
        root = Path(__file__).resolve().parent.parent
        try:
            for index in range(processes):
                count = share + (1 if index < extra else 0)
                output = directory / f"{tag}-{index}.json"
                output.unlink(missing_ok=True)
                argv = [
                    sys.executable,
                    "-m",
                    "bench.loadgen",
                    *target.argv(),
                    "--connections",
                    str(count),
                    "--first-id",
                    str(first),
                    "--start-at",
                    f"{self.start_at:.6f}",
                    "--duration",
                    f"{duration:g}",
                    "--output",
                    str(output),
                ]
                first += count
                self.outputs.append(output)
                self.commands.append(argv)
                self.children.append(
                    Child(
                        f"loadgen {index}", argv, directory / f"{tag}-{index}.log", root
                    )
                )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process still running."""
        for child in self.children:
            child.stop()

    def __enter__(self) -> LoadRun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait(self) -> LoadResult:
        """
        Wait for every process to finish and add up what they counted.

        @raise StartError: when a process failed or took far too long.
        """
        deadline = self.start_at + self.duration + TIMEOUT + 15
        summaries = []
        for child, output in zip(self.children, self.outputs, strict=True):
            status = child.wait(max(0.1, deadline - time.monotonic()))
            if status is None or status != 0 or not output.exists():
                child.stop()
                raise StartError(
                    f"{child.name} failed (status {status}); its log ends:\n"
                    f"{child.log_tail()}"
                )
            summaries.append(json.loads(output.read_text()))
        latencies = array("d")
        handshakes = array("d")
        for output in self.outputs:
            for suffix, values in ((".latency", latencies), (".handshake", handshakes)):
                data = output.with_suffix(suffix).read_bytes()
                values.frombytes(data)
        ordered = sorted(latencies)
        ordered_handshakes = sorted(handshakes)
        statuses: Counter[int] = Counter()
        errors: Counter[str] = Counter()
        for summary in summaries:
            statuses.update({int(k): v for k, v in summary["statuses"].items()})
            errors.update(summary["errors"])
        tls = next((s for s in summaries if s["tls_version"]), None)
        return LoadResult(
            processes=len(self.children),
            connections=self.connections,
            sent=sum(s["sent"] for s in summaries),
            responses=sum(s["responses"] for s in summaries),
            statuses=dict(statuses),
            errors=dict(errors),
            wall_s=max(s["finished"] for s in summaries) - self.start_at,
            latency_ms={p: 1000 * percentile(ordered, p) for p in (50, 75, 90, 99)},
            handshakes=sum(s["handshakes"] for s in summaries),
            resumed=sum(s["resumed"] for s in summaries),
            handshake_ms={
                p: 1000 * percentile(ordered_handshakes, p) for p in (50, 99)
            },
            cpu_s=sum(s["cpu_s"] for s in summaries),
            late_s=max(0.0, *(s["late_s"] for s in summaries)),
            tls_version=None if tls is None else tls["tls_version"],
            cipher=None if tls is None else tls["cipher"],
            commands=self.commands,
        )


if __name__ == "__main__":
    sys.exit(client_main())
