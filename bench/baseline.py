"""
The baseline: a bare twisted.web resource answering 200 (empty body) to every
POST, on the same default epoll reactor the gateway runs on.

Run as its own process: C{python -m bench.baseline --port 8081}. By default it is
C{Site(root)} with twisted.web's default settings, which parse the C{Content-Type}
of every POST with the stdlib C{email} package for form handling;
C{--no-form-parsing} gives C{Site(root, parsePOSTFormSubmission=False)}, the
faster figure quoted for twisted.web "when the body is not form-parsed".
C{--llhttp} serves L{LlhttpOk} instead: a bare llhttp (C{httptools}) parser in a
Twisted protocol answering 200 to every request, the floor of what any HTTP
server on this stack costs per request, which gateway figures are a ratio to.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import httptools
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class Ok(Resource):
    """Every path: 200 with an empty body to POST (other methods: twisted.web's 405)."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        """Answer 200 with no body; the request body is read and ignored."""
        return b""


_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nServer: llhttp-baseline\r\n\r\n"
_OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class LlhttpOk(Protocol):
    """
    One connection of the bare llhttp baseline: every complete request is
    answered 200 with an empty body at once (keep-alive as llhttp decides);
    nothing is checked, timed or logged.
    """

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)

    def dataReceived(self, data: bytes) -> None:
        """Parse C{data}; a malformed request closes the connection."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.loseConnection()

    def on_body(self, body: bytes) -> None:
        """The body is read and ignored."""

    def on_message_complete(self) -> None:
        """Answer the request."""
        assert self.transport is not None
        if self._parser.should_keep_alive():
            self.transport.write(_OK)
        else:
            self.transport.write(_OK_CLOSE)
            self.transport.loseConnection()


def make_site(form_parsing: bool = True) -> Site:
    """The baseline site: L{Ok} at the root, with or without form parsing."""
    if form_parsing:
        return Site(Ok())
    return Site(Ok(), parsePOSTFormSubmission=False)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the baseline on 127.0.0.1 until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument(
        "--no-form-parsing",
        dest="form_parsing",
        action="store_false",
        help="Site(root, parsePOSTFormSubmission=False)",
    )
    parser.add_argument(
        "--llhttp",
        action="store_true",
        help="the bare llhttp protocol (LlhttpOk) instead of twisted.web",
    )
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    factory: Any
    if args.llhttp:
        factory = ServerFactory.forProtocol(LlhttpOk)
        what = "bare llhttp protocol"
    else:
        factory = make_site(args.form_parsing)
        options = "" if args.form_parsing else ", parsePOSTFormSubmission=False"
        what = f"Site(root{options})"
    factory.noisy = False
    reactor.listenTCP(args.port, factory, interface=args.interface)  # type: ignore[attr-defined]
    print(f"baseline: {what} on {args.interface}:{args.port}", flush=True)
    # The reactor stops by itself on SIGINT and SIGTERM.
    reactor.run()
    sys.exit(0)


if __name__ == "__main__":
    main()
