# -*- test-case-name: tests.web.test_server -*-
"""
The request and response values the API adapters work on.

They are plain values so that the adapters are independent of the HTTP server that
parses the bytes and of the transport (plain TCP or TLS) under it.
"""

from __future__ import annotations

import enum
import math
from json.encoder import encode_basestring_ascii as _quote  # type: ignore[attr-defined]
from typing import Any

import attrs

from gateway.model import Connection, no_connection


class API(enum.Enum):
    """
    Which API answered a request: the adapter that answered says so, nothing
    works it out from the path again.
    """

    TOPICS = "topics"
    ALIYUN = "aliyun"
    EMQX = "emqx"
    ADMIN = "admin"
    NONE = "none"


@attrs.frozen
class HTTPRequest:
    """
    One parsed HTTP request.

    @ivar method: the method, e.g. C{"POST"}.
    @ivar path: the raw (still percent-encoded) path of the request target.
    @ivar query: the raw query string (without C{?}), C{b""} when absent.
    @ivar headers: header names lower-cased, values as sent, in order.
    @ivar body: the complete body (chunked bodies already decoded).
    @ivar http_version: C{"1.0"} or C{"1.1"}.
    @ivar peer_certificate: the verified client certificate (a
        C{cryptography.x509.Certificate}) on TLS connections that presented one.
    @ivar keep_alive: whether the connection stays open after the response.
    @ivar connection: the handle of the connection the request came on: its id,
        the client's address, its closing.
    """

    method: str
    path: bytes
    query: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    http_version: str = "1.1"
    peer_certificate: Any = None
    keep_alive: bool = True
    connection: Connection = attrs.field(factory=no_connection, eq=False, repr=False)

    def header(self, name: bytes) -> bytes | None:
        """
        The value of the first header called C{name} (lower case), or C{None}.
        """
        for key, value in self.headers:
            if key == name:
                return value
        return None


@attrs.frozen
class AccessLogFields:
    """
    What an adapter adds to the access log line of its request: which API it is
    and whom the request was for.
    """

    api: API = API.NONE
    client_id: str | None = None
    user: str | None = None
    message_id: str | None = None


@attrs.frozen
class HTTPResponse:
    """
    A complete HTTP response.

    The server adds C{Content-Length}, C{Date}, C{Server} and C{Connection}.
    """

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    log: AccessLogFields = AccessLogFields()


@attrs.frozen
class AccessRecord:
    """
    What the server records of one response written: the keys of the access
    log (L{as_dict}) and the API that answered.
    """

    time: str
    peer: str
    method: str
    path: str
    http_version: str
    status: int
    bytes: int
    duration_ms: float
    client_id: str | None
    user: str | None
    message_id: str | None
    api: API = API.NONE

    def as_dict(self) -> dict[str, object]:
        """The access log's JSON object (the API is not one of its keys)."""
        return {
            "time": self.time,
            "peer": self.peer,
            "method": self.method,
            "path": self.path,
            "http_version": self.http_version,
            "status": self.status,
            "bytes": self.bytes,
            "duration_ms": self.duration_ms,
            "client_id": self.client_id,
            "user": self.user,
            "message_id": self.message_id,
        }

    def as_json(self) -> str:
        """
        L{as_dict} as one JSON line, exactly as C{json.dumps(record.as_dict(),
        separators=(", ", ": "))} writes it, without building the dict: this runs
        once per request.
        """
        return (
            f'{{"time": {_quote(self.time)}, "peer": {_quote(self.peer)}, '
            f'"method": {_quote(self.method)}, "path": {_quote(self.path)}, '
            f'"http_version": {_quote(self.http_version)}, "status": {self.status!r}, '
            f'"bytes": {self.bytes!r}, "duration_ms": {_number(self.duration_ms)}, '
            f'"client_id": {_optional(self.client_id)}, '
            f'"user": {_optional(self.user)}, '
            f'"message_id": {_optional(self.message_id)}}}'
        )


def _optional(text: str | None) -> str:
    return "null" if text is None else _quote(text)


def _number(value: float) -> str:
    # What json.dumps writes for an int or a float (NaN and infinities included).
    if isinstance(value, int) or math.isfinite(value):
        return repr(value)
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
