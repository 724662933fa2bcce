"""
C{python -m bench.overload}: what the gateway does when it is offered more than
it, or the broker behind it, can take.

wrk (closed loop, one request outstanding per connection) drives many
connections against the daemon (C{twistd -y}, assembled by L{gateway.tap}) in
five situations:

  - C{no limits}: a fast Mosquitto, no rate limit (the baseline);
  - C{rate-limit}: C{[limits] rate = 1000} (the default) in front of a fast
    Mosquitto: everything over the rate must get a quick 429;
  - C{slow-broker}: the broker's acknowledgements pass a proxy that lets through
    C{--broker-rate} packets per second (200): the broker path takes 200
    messages/s, wrk offers as much as the connections allow;
  - C{slow-broker, unbounded queue}: the same with the session's queue bounded
    only by its length (10,000), as before the waiting-time bound;
  - C{connection-cap}: more connections than C{max_connections}.

Every row starts a fresh daemon, so its peak RSS is the row's own. Latencies of
accepted (200) and refused requests come from the gateway's access log
(C{duration_ms}: first byte of the request to the response written); wrk's
own 99th percentile covers all answers, client side. The gateway runs on CPU 0,
wrk, Mosquitto and the proxy on CPU 1. Results go to standard output and to
C{bench/OVERLOAD.md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
OUTPUT = Path(__file__).resolve().parent / "OVERLOAD.md"
TWISTD = str(Path(sys.executable).with_name("twistd"))
WARM_UP = "/topics/bench/warm-up"
NOTES = "## Reading"

# wrk: POST a 64-byte body to the URL given.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = string.rep("x", 64)
wrk.headers["Content-Type"] = "application/octet-stream"
"""

# The daemon as tap.py assembles it, with what a row needs applied to the tree:
# the rate limiter (if tap.py does not build one yet), the session's queue
# bounds and the connection cap.
TAC = """
from twisted.application import service

from gateway.limits import RateLimiter
from gateway.tap import Options, makeService
from gateway.web.server import HTTPServerFactory

max_connections = {max_connections!r}
options = Options()
options.parseOptions({args!r})
root = makeService(options)
for child in root:
    factory = getattr(child, "factory", None)
    if isinstance(factory, HTTPServerFactory):
        core = factory.handler.topics.core
        if core.limiter is None and options.config.limits.rate:
            core.limiter = RateLimiter(options.config.limits)
        if max_connections is not None:
            factory.max_connections = max_connections
session = root.getServiceNamed("mqtt-session")
if {unbounded!r}:
    session.max_queue_delay = float("inf")
    session.max_queue_bytes = 1 << 62
application = service.Application("overload")
root.setServiceParent(application)
"""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(ready: object, timeout: float, what: str) -> None:
    """Poll C{ready()} until true; raise C{RuntimeError} naming C{what}."""
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def pinned(cpu: int, command: list[str]) -> list[str]:
    """C{command} pinned to one CPU when taskset is there and there are two."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu), *command]
    return command


@contextlib.contextmanager
def child(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run C{command}, output to C{log}; SIGTERM (then SIGKILL) on exit."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- a broker path of limited capacity


class ThrottlingProxy:
    """
    A TCP proxy to a broker, in a thread of its own, that passes what the broker
    sends (its acknowledgements) at most C{rate} MQTT packets per second; what
    the client sends passes at once. C{rate=None} throttles nothing.
    """

    def __init__(self, target: int, rate: float | None) -> None:
        self.target = target
        self.rate = rate
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("the proxy did not start")

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, HOST, self.port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            broker_in, broker_out = await asyncio.open_connection(HOST, self.target)
        except OSError:
            client_out.close()
            return
        await asyncio.gather(
            self._copy(client_in, broker_out),
            self._throttled(broker_in, client_out),
            return_exceptions=True,
        )
        for writer in (client_out, broker_out):
            writer.close()

    async def _copy(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while (data := await reader.read(65536)) and not writer.is_closing():
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _throttled(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.rate is None:
            await self._copy(reader, writer)
            return
        interval = 1.0 / self.rate
        due = time.monotonic()
        while True:
            packet = await read_packet(reader)
            if packet is None or writer.is_closing():
                break
            now = time.monotonic()
            due = max(due, now - 0.05)  # no credit saved up beyond 50 ms
            if due > now:
                await asyncio.sleep(due - now)
            due += interval
            writer.write(packet)
        writer.close()


async def read_packet(reader: asyncio.StreamReader) -> bytes | None:
    """One whole MQTT packet (fixed header, remaining length, rest), or C{None}."""
    try:
        head = await reader.readexactly(1)
        length, multiplier, encoded = 0, 1, b""
        while True:
            byte = await reader.readexactly(1)
            encoded += byte
            length += (byte[0] & 0x7F) * multiplier
            multiplier *= 128
            if not byte[0] & 0x80:
                break
        return head + encoded + await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None


# -- one measured run


@dataclass(frozen=True)
class Row:
    """One situation at one number of connections."""

    scenario: str
    connections: int
    rate: float = 0
    broker_rate: float | None = None
    unbounded: bool = False
    max_connections: int | None = None


@dataclass
class Result:
    """What a row measured."""

    row: Row
    seconds: float
    answered_per_s: float = 0.0
    wrk_p99_ms: float = math.nan
    wrk_errors: str = ""
    statuses: dict[int, int] = field(default_factory=dict)
    accepted_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)
    peak_rss_mib: float = math.nan

    def per_s(self, *statuses: int) -> float:
        return sum(self.statuses.get(s, 0) for s in statuses) / self.seconds


def percentile(values: Sequence[float], p: float) -> float:
    """The C{p}th percentile (nearest rank); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def parse_wrk(output: str) -> tuple[float, float, str]:
    """The Requests/sec, 99% latency (ms) and socket errors wrk reports."""
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    p99 = re.search(r"^\s+99%\s+([0-9.]+)(us|ms|s)\s*$", output, re.M)
    errors = re.search(r"Socket errors: (.*)", output)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return (
        float(rate.group(1)) if rate else math.nan,
        float(p99.group(1)) * scale[p99.group(2)] if p99 else math.nan,
        errors.group(1).strip() if errors else "",
    )


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return math.nan


def post_ok(url: str) -> bool:
    try:
        request = urllib.request.Request(url, data=b"warm-up", method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False


def run_row(row: Row, broker_port: int, seconds: float, work: Path) -> Result:
    """Start a gateway for C{row}, load it with wrk, read the access log."""
    directory = Path(tempfile.mkdtemp(prefix=f"{row.scenario}-", dir=work))
    access = directory / "access.log"
    proxy = ThrottlingProxy(broker_port, row.broker_rate)
    proxy.start()
    port = free_port()
    config = directory / "gateway.toml"
    config.write_text(
        f'[mqtt]\nbrokers = ["mqtt://{HOST}:{proxy.port}"]\nprotocol = "5"\n'
        f'[log]\naccess = "{access}"\n[auth]\nallow_anonymous = true\n'
        f"[limits]\nrate = {row.rate}\nburst = {max(1, int(row.rate))}\n"
    )
    tac = directory / "gateway.tac"
    tac.write_text(
        TAC.format(
            args=["--config", str(config), "--listen", f"tcp:{port}:interface={HOST}"],
            max_connections=row.max_connections,
            unbounded=row.unbounded,
        )
    )
    script = directory / "post.lua"
    script.write_text(WRK_SCRIPT)
    url = f"http://{HOST}:{port}/topics/bench/overload?qos=1"
    warm_up = f"http://{HOST}:{port}{WARM_UP}?qos=1"
    result = Result(row, seconds)
    try:
        command = pinned(0, [TWISTD, "--pidfile=", "-n", "-y", str(tac)])
        with child(command, directory / "gateway.log") as gateway:
            wait_until(lambda: post_ok(warm_up), 20, "the gateway to answer")
            wrk = subprocess.run(
                pinned(
                    1,
                    [
                        "wrk",
                        "-t1",
                        f"-c{row.connections}",
                        f"-d{seconds:g}s",
                        "--timeout",
                        "15s",
                        "--latency",
                        "-s",
                        str(script),
                        url,
                    ],
                ),
                capture_output=True,
                text=True,
                timeout=seconds + 60,
                check=True,
            )
            ended = datetime.datetime.now(datetime.UTC)
            (directory / "wrk.txt").write_text(wrk.stdout + wrk.stderr)
            answered, p99, errors = parse_wrk(wrk.stdout)
            result.answered_per_s, result.wrk_p99_ms, result.wrk_errors = (
                answered,
                p99,
                errors,
            )
            result.peak_rss_mib = peak_rss_mib(gateway.pid)
            time.sleep(0.5)  # the access log is written every 0.2 s
            log = access.read_text()
    finally:
        proxy.stop()
    # Only what wrk saw: answers to requests still outstanding when it stopped
    # (and closed its connections) are not part of the row.
    last = ended.strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z"
    for line in log.splitlines():
        record = json.loads(line)
        if record["path"] == WARM_UP or record["time"] > last:
            continue
        status = int(record["status"])
        result.statuses[status] = result.statuses.get(status, 0) + 1
        (result.accepted_ms if status == 200 else result.refused_ms).append(
            float(record["duration_ms"])
        )
    return result


ROWS = [
    *(Row("no limits", c) for c in (256, 1024)),
    *(Row("rate-limit", c, rate=1000) for c in (16, 128, 1024)),
    *(Row("slow-broker", c, broker_rate=200) for c in (16, 128, 512, 2048)),
    *(
        Row("slow-broker, unbounded queue", c, broker_rate=200, unbounded=True)
        for c in (512, 2048)
    ),
    Row("connection-cap", 1024, max_connections=256),
]


def ms(value: float) -> str:
    """Milliseconds for the table: one decimal, a dash for none."""
    return "-" if math.isnan(value) else f"{value:,.1f}"


def table(results: Sequence[Result]) -> str:
    """The results as a markdown table."""
    lines = [
        "| situation | conns | answered/s | 200/s | 429/s | 503/s | accepted p50 / p99 "
        "(ms) | refused p99 (ms) | wrk p99, all (ms) | peak RSS (MiB) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        accepted = f"{ms(percentile(r.accepted_ms, 50))} / "
        accepted += ms(percentile(r.accepted_ms, 99))
        lines.append(
            f"| {r.row.scenario} | {r.row.connections} | {r.answered_per_s:,.0f} "
            f"| {r.per_s(200):,.0f} | {r.per_s(429):,.0f} | {r.per_s(503):,.0f} "
            f"| {accepted} | {ms(percentile(r.refused_ms, 99))} "
            f"| {ms(r.wrk_p99_ms)} | {r.peak_rss_mib:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload")
    parser.add_argument(
        "--seconds",
        type=float,
        default=15.0,
        help="per row (default 15: longer than the publish timeout)",
    )
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    for tool in ("wrk", "mosquitto"):
        if shutil.which(tool) is None:
            sys.exit(f"bench.overload: {tool} is not installed")
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})  # the proxy thread stays off the gateway's CPU
    work = Path(tempfile.mkdtemp(prefix="overload-"))
    broker_port = free_port()
    (work / "mosquitto.conf").write_text(
        f"listener {broker_port} {HOST}\nallow_anonymous true\n"
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    results = []
    mosquitto = pinned(1, ["mosquitto", "-c", str(work / "mosquitto.conf")])
    with child(mosquitto, work / "mosquitto.log"):
        wait_until(lambda: _accepts(broker_port), 10, "Mosquitto")
        for row in ROWS:
            result = run_row(row, broker_port, args.seconds, work)
            results.append(result)
            print(table([result]).splitlines()[-1], flush=True)
    notes = ""
    if args.output.exists():
        # Hand-written reading of the results, kept across runs.
        old = args.output.read_text()
        if NOTES in old:
            notes = old[old.index(NOTES) :]
    args.output.write_text(
        report(results, args.seconds) + ("\n" + notes if notes else "")
    )
    print(f"\nwritten to {args.output} (logs in {work})")
    return 0


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def report(results: Sequence[Result], seconds: float) -> str:
    """C{OVERLOAD.md}: how it was measured, the table, what it shows."""
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""# Overload: offered load against what is accepted

Measured by `python -m bench.overload` on {when}: {os.cpu_count()} CPUs,
{platform.python_implementation()} {platform.python_version()}, wrk in a closed
loop (one request outstanding per connection), {seconds:g} s per row, a fresh
daemon per row. The gateway runs on CPU 0; wrk, Mosquitto and the proxy on
CPU 1.

- **no limits**: a fast Mosquitto, no rate limit: the baseline.
- **rate-limit**: `[limits] rate = 1000, burst = 1000` (the default), a fast
  Mosquitto behind.
- **slow-broker**: the broker's acknowledgements pass a proxy that lets 200
  packets/s through, so the broker path takes 200 messages/s; rate limit off.
- **slow-broker, unbounded queue**: the same with the session's queue bounded
  only by its length (10,000 messages), as before the waiting-time bound
  (`max_queue_delay`, 2 s).
- **connection-cap**: `max_connections = 256`, 1,024 connections, fast broker.

"answered/s" is every response wrk received per second, "200/s", "429/s" and
"503/s" count the access log's statuses; latencies of accepted and refused
requests are the access log's `duration_ms` (first byte of the request to the
response written, server side); "wrk p99, all" is wrk's 99th percentile over
every answer, client side (it includes waiting for a connection to be
accepted). Peak RSS is the daemon's VmHWM.

{table(results)}
"""


if __name__ == "__main__":
    sys.exit(main())
