"""
Does wrk resume TLS sessions when it reconnects? A TLS server (Python's C{ssl},
the gateway's certificate, session tickets on: TLS 1.3's default) that answers
every request with C{200} and C{Connection: close} and counts the handshakes
that resumed a session; wrk's own output cannot tell.

Run as its own process: C{python -m bench.tlsprobe --port P --cert C --key K};
on SIGTERM it prints C{tlsprobe: full N resumed M version V} and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from types import FrameType

_REPORT = re.compile(r"^tlsprobe: full (\d+) resumed (\d+) version (\S+)$", re.M)


class _Stop(Exception):
    pass


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _serve_one(connection: ssl.SSLSocket) -> None:
    """Read one request (headers and a Content-Length body), answer, close."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
    length = int(match.group(1)) if match else 0
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            return
        body += chunk
    connection.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM, then print the counts."""
    parser = argparse.ArgumentParser(prog="python -m bench.tlsprobe")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    counts = {False: 0, True: 0}
    version = "-"
    signal.signal(signal.SIGTERM, _stop)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(128)
    print(f"tlsprobe: listening on 127.0.0.1:{args.port}", flush=True)
    try:
        while True:
            raw, _ = listener.accept()
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(5)
            try:
                connection = context.wrap_socket(raw, server_side=True)
            except (OSError, ValueError):
                raw.close()
                continue
            with contextlib.suppress(OSError, ValueError):
                counts[bool(connection.session_reused)] += 1
                version = connection.version() or version
                _serve_one(connection)
            with contextlib.suppress(OSError):
                connection.close()
    except _Stop:
        pass
    print(
        f"tlsprobe: full {counts[False]} resumed {counts[True]} version {version}",
        flush=True,
    )
    return 0


def parse_report(log: str) -> tuple[int, int, str] | None:
    """(full handshakes, resumed ones, TLS version) from the probe's output."""
    match = _REPORT.search(log)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), match.group(3)


if __name__ == "__main__":
    sys.exit(main())
