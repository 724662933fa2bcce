# -*- test-case-name: tests.web.test_server -*-
"""
The framing rules of RFC 9112 the server holds requests to strictly, because a
proxy in front that read a lenient request differently could be made to pass
a second, hidden request (request smuggling).

L{framing_error} looks at a request's head only (no I/O), after the parser
(llhttp) has refused what it refuses itself: two Content-Length headers,
Content-Length with Transfer-Encoding, bad characters or overflowing numbers in
Content-Length and chunk sizes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.errors import Code, GatewayError

__all__ = ["framing_error"]

_CHUNKED = b"chunked"

# Host = uri-host [ ":" port ] (RFC 9110 section 7.2, RFC 3986 section 3.2.2):
# an IP literal in brackets, or a reg-name / IPv4 address; empty is allowed.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")


def framing_error(
    version: str, headers: Sequence[tuple[bytes, bytes]]
) -> GatewayError | None:
    """
    What is wrong with the framing of a request head, or C{None}.

      - Host: an HTTP/1.1 request needs exactly one (its value may be empty),
        any request at most one, and a value that is a host with an optional
        port (RFC 9112 section 3.2) -> 400.
      - Authorization at most once (which one would count is ambiguous) -> 400.
      - Transfer-Encoding: only in HTTP/1.1, in one header, and a lone
        C{chunked} (case-insensitive). Any other coding before C{chunked}
        (C{identity, chunked}, C{gzip, chunked}) -> 501, as RFC 9112 section 6.1
        has it for a coding the server does not implement; C{chunked} not last,
        twice, an empty element, two headers or an HTTP/1.0 request with the
        header -> 400 (the body's length cannot be known).

    @param version: C{"1.0"} or C{"1.1"}.
    @param headers: the header lines, names lower case, in order.
    """
    hosts = authorizations = 0
    host = b""
    codings: list[bytes] = []
    encodings = 0
    for name, value in headers:
        if name == b"host":
            hosts += 1
            host = value
        elif name == b"authorization":
            authorizations += 1
        elif name == b"transfer-encoding":
            encodings += 1
            codings.extend(part.strip().lower() for part in value.split(b","))
    if hosts > 1:
        return _bad("the Host header is given more than once")
    if hosts == 0 and version == "1.1":
        return _bad("an HTTP/1.1 request needs a Host header")
    if hosts and _HOST.fullmatch(host.strip()) is None:
        return _bad("the Host header is not a host with an optional port")
    if authorizations > 1:
        return _bad("the Authorization header is given more than once")
    if not encodings:
        return None
    if version != "1.1":
        return _bad("Transfer-Encoding is not allowed in an HTTP/1.0 request")
    if codings == [_CHUNKED]:
        return None
    if encodings > 1:
        return _bad("the Transfer-Encoding header is given more than once")
    if codings[-1] != _CHUNKED or _CHUNKED in codings[:-1] or b"" in codings:
        return _bad("Transfer-Encoding must be chunked, given once")
    unknown = codings[0].decode("latin-1")[:64]
    return GatewayError(
        Code.BadRequest,
        f"the transfer coding {unknown!r} is not supported; send the body "
        "with Content-Length or Transfer-Encoding: chunked alone",
        status=501,
    )


def _bad(message: str) -> GatewayError:
    return GatewayError(Code.BadRequest, message)
