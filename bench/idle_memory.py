"""
C{python -m bench.idle_memory [--connections N]}: the memory one idle
keep-alive connection costs the gateway.

A gateway (twistd, shipped defaults: access log to a file) in front of a local
Mosquitto; N connections each send one QoS 1 POST, read its 200 and stay open.
The figure is the growth of the gateway's resident set size (C{VmRSS}) from
before the connections to after all of them are answered and idle, divided by
N, and the same for a second batch of N (memory the first batch made the
allocator reserve is reused then, so the second is the steady cost). Results go
to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

from bench.processes import HOST, sample, start_gateway, start_mosquitto
from bench.report import publish

CONFIG = """\
[limits]
rate = 0
[http]
max_connections_per_source = {limit}
idle_timeout = 600
[log]
access = "access.log"
[auth]
allow_anonymous = true
"""


def _request(n: int) -> bytes:
    body = b"%064d" % n
    return (
        b"POST /topics/bench/idle?qos=1 HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def open_idle(port: int, count: int, first: int) -> list[socket.socket]:
    """C{count} connections that each had one request answered 200."""
    connections = []
    for n in range(count):
        s = socket.create_connection((HOST, port))
        s.sendall(_request(first + n))
        connections.append(s)
    for s in connections:
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("the gateway closed a connection")
            answer += chunk
        if not answer.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"not a 200: {answer[:80]!r}")
    return connections


def _settled_rss(pid: int) -> int:
    """The resident set size once it stopped changing (KiB)."""
    last = sample(pid).rss_kib
    for _ in range(20):
        time.sleep(0.2)
        now = sample(pid).rss_kib
        if now == last:
            return now
        last = now
    return last


def main(argv: list[str]) -> int:
    """Measure, print, and write the section of bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.idle_memory")
    parser.add_argument("--connections", type=int, default=4000)
    parser.add_argument("--output", default="bench/RESULTS.md")
    args = parser.parse_args(argv)
    count = args.connections
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * count + 1024), hard))
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        broker = start_mosquitto(directory)
        try:
            gateway = start_gateway(
                directory, broker.port, CONFIG.format(limit=4 * count)
            )
            try:
                before = _settled_rss(gateway.pid)
                first = open_idle(gateway.port, count, 0)
                after_first = _settled_rss(gateway.pid)
                second = open_idle(gateway.port, count, count)
                after_second = _settled_rss(gateway.pid)
                for s in first + second:
                    s.close()
            finally:
                gateway.stop()
        finally:
            broker.stop()
    per_first = (after_first - before) / count
    per_second = (after_second - after_first) / count
    publish(
        Path(args.output),
        "python -m bench.idle_memory",
        "Memory per idle keep-alive connection",
        [
            f"- Command: `python -m bench.idle_memory --connections {count}`",
            f"- Gateway RSS before: {before:,} KiB; after {count:,} idle keep-alive "
            f"connections: {after_first:,} KiB; after {2 * count:,}: "
            f"{after_second:,} KiB",
            f"- **First {count:,}: {per_first:.1f} KiB per connection; next "
            f"{count:,}: {per_second:.1f} KiB per connection** (each answered one "
            "QoS 1 POST, then idle)",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
