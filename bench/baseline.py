"""
The baseline: a bare twisted.web resource answering 200 (empty body) to every
POST, on the same default epoll reactor the gateway runs on.

Run as its own process: C{python -m bench.baseline --port 8081}. By default it is
C{Site(root)} with twisted.web's default settings, which parse the C{Content-Type}
of every POST with the stdlib C{email} package for form handling;
C{--no-form-parsing} gives C{Site(root, parsePOSTFormSubmission=False)}, the
faster figure DESIGN.md quotes ("when the body is not form-parsed").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class Ok(Resource):
    """Every path: 200 with an empty body to POST (other methods: twisted.web's 405)."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        """Answer 200 with no body; the request body is read and ignored."""
        return b""


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
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    site = make_site(args.form_parsing)
    site.noisy = False
    reactor.listenTCP(args.port, site, interface=args.interface)  # type: ignore[arg-type]
    options = "" if args.form_parsing else ", parsePOSTFormSubmission=False"
    print(f"baseline: Site(root{options}) on {args.interface}:{args.port}", flush=True)
    # The reactor stops by itself on SIGINT and SIGTERM.
    reactor.run()
    sys.exit(0)


if __name__ == "__main__":
    main()
