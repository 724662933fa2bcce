# -*- test-case-name: tests.web.test_pipeline,tests.web.test_server -*-
"""
The ordered response side of the HTTP server (HTTP/1.1 pipelining), with no I/O.

Requests on one connection may be answered out of order by their handlers;
L{ResponsePipeline} releases the responses strictly in request order, and
L{encode_response} turns one into the bytes of a single write.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from http import HTTPStatus

from gateway.web.messages import HTTPRequest, HTTPResponse

__all__ = ["ResponsePipeline", "Slot", "encode_response"]

_STATUS_LINES: dict[int, bytes] = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii"))
    for status in HTTPStatus
}

# Headers the server writes itself; a handler's own would break the framing or
# duplicate ours.
_RESERVED_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "date", "server"}
)
_NO_CRLF = str.maketrans("\r\n", "  ")


class Slot:
    """
    One request waiting for (or holding) its response, in request order.

    @ivar close: the connection closes after this response.
    @ivar linger: before closing, input is read and dropped for a moment.
    """

    __slots__ = ("close", "linger", "request", "response", "start")

    def __init__(
        self, request: HTTPRequest, start: float, close: bool, linger: bool
    ) -> None:
        self.request = request
        self.start = start
        self.close = close
        self.linger = linger
        self.response: HTTPResponse | None = None


class ResponsePipeline:
    """
    The requests of one connection still owed a response, oldest first.
    """

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: deque[Slot] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def add(
        self, request: HTTPRequest, start: float, close: bool, linger: bool = False
    ) -> Slot:
        """Queue a slot for C{request} behind those already waiting."""
        slot = Slot(request, start, close, linger)
        self._queue.append(slot)
        return slot

    def last(self) -> Slot:
        """The newest slot (there must be one)."""
        return self._queue[-1]

    def clear(self) -> None:
        """Forget every slot (the connection is gone)."""
        self._queue.clear()

    def complete(self, slot: Slot, response: HTTPResponse) -> Iterator[Slot]:
        """
        Give C{slot} its response (at once); return the slots now ready to be
        written, in request order (none while an older one still waits), each
        taken off the pipeline as it is iterated over.
        """
        slot.response = response
        queue = self._queue
        if not queue or queue[0] is not slot:
            return iter(())
        return self._ready()

    def _ready(self) -> Iterator[Slot]:
        queue = self._queue
        while queue and queue[0].response is not None:
            yield queue.popleft()


def encode_response(
    request: HTTPRequest, response: HTTPResponse, close: bool, standard: bytes
) -> tuple[bytes, int]:
    """
    The bytes of C{response} to C{request} and the length of the body sent.

    C{standard} is the C{Date} and C{Server} lines; C{close} adds
    C{Connection: close}. The handler's own framing headers are dropped, CR and
    LF in its headers become spaces, and no body goes with 1xx, 204, 304 or a
    response to C{HEAD}.
    """
    status = response.status
    body = response.body
    parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
    for name, value in response.headers:
        if name.lower() not in _RESERVED_HEADERS:
            parts.append(_header_line(name, value))
    if status < 200 or status in (204, 304):
        body = b""
    else:
        parts.append(b"Content-Length: %d\r\n" % len(body))
        if request.method == "HEAD":
            body = b""
    parts.append(standard)
    parts.append(b"Connection: close\r\n\r\n" if close else b"\r\n")
    parts.append(body)
    return b"".join(parts), len(body)


def _header_line(name: str, value: str) -> bytes:
    """
    C{name: value} and CRLF, with any CR or LF in them replaced by spaces.
    """
    line = f"{name}: {value}"
    if "\r" in line or "\n" in line:
        line = line.translate(_NO_CRLF)
    return (line + "\r\n").encode("utf-8")
