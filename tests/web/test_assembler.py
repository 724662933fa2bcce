"""
The request assembler on its own, with no transport or reactor: requests come out
whole and in order however the bytes are split, and the limits answer as soon as
they are broken.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.errors import Code, GatewayError
from gateway.model import Connection, Peer
from gateway.web.assembler import RequestAssembler, split_target
from gateway.web.messages import HTTPRequest

POST = (
    b"POST /topics/a/b?qos=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"X-Long: " + b"v" * 40 + b"\r\n\r\nhello"
)
CHUNKED = (
    b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"
)
GET_CLOSE = b"GET /g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


class Recorder:
    """Records the assembler's events as tuples."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []
        self.requests: list[HTTPRequest] = []
        self.errors: list[GatewayError] = []

    def request_started(self) -> None:
        self.events.append(("started",))

    def continue_expected(self) -> None:
        self.events.append(("continue",))

    def body_received(self) -> None:
        if self.events[-1] != ("body",):
            self.events.append(("body",))

    def request_received(self, request: HTTPRequest, start: float) -> None:
        self.events.append(("request", start))
        self.requests.append(request)

    def request_failed(self, error: GatewayError) -> None:
        self.events.append(("failed", error.status))
        self.errors.append(error)


def assembler(
    events: Recorder,
    max_body: int = 1000,
    max_header_bytes: int = 1000,
    max_target_bytes: int = 1000,
) -> RequestAssembler:
    return RequestAssembler(
        events,
        max_body=max_body,
        max_header_bytes=max_header_bytes,
        max_target_bytes=max_target_bytes,
        connection=Connection("c1", Peer("127.0.0.1", 5)),
    )


def feed_bytewise(target: RequestAssembler, data: bytes) -> None:
    for i in range(len(data)):
        target.feed(data[i : i + 1], float(i))


class SplitTests(SynchronousTestCase):
    """However a request is split across reads, the same request comes out."""

    def whole(self, data: bytes) -> list[HTTPRequest]:
        events = Recorder()
        assembler(events).feed(data, 0.0)
        return events.requests

    def test_every_boundary(self) -> None:
        """Each split point of a request (head, header, body) gives the same
        request as one read."""
        for data in (POST, CHUNKED, GET_CLOSE):
            expected = self.whole(data)
            self.assertEqual(len(expected), 1)
            for cut in range(1, len(data)):
                events = Recorder()
                target = assembler(events)
                target.feed(data[:cut], 0.0)
                target.feed(data[cut:], 1.0)
                self.assertEqual(events.requests, expected, (data, cut))

    def test_byte_by_byte(self) -> None:
        """One byte per read: one request, started at its first byte's time."""
        for data in (POST, CHUNKED):
            events = Recorder()
            feed_bytewise(assembler(events), data)
            self.assertEqual(events.requests, self.whole(data))
            self.assertEqual(events.events[0], ("started",))
            self.assertEqual(events.events[-1], ("request", 0.0))

    def test_request_values(self) -> None:
        """Method, path, query, lower-cased headers and the body are kept;
        chunked bodies are decoded."""
        [post] = self.whole(POST)
        self.assertEqual(
            (post.method, post.path, post.query, post.body),
            ("POST", b"/topics/a/b", b"qos=1", b"hello"),
        )
        self.assertEqual(post.header(b"content-length"), b"5")
        self.assertEqual(
            (post.connection.id, post.connection.peer), ("c1", Peer("127.0.0.1", 5))
        )
        self.assertTrue(post.keep_alive)
        [chunked] = self.whole(CHUNKED)
        self.assertEqual(chunked.body, b"abc0123456789abcdef")

    def test_pipelined_in_one_read(self) -> None:
        """Several requests in one read come out in order; after one that
        closes the connection nothing is read."""
        events = Recorder()
        target = assembler(events)
        target.feed(POST + CHUNKED + GET_CLOSE + POST, 0.0)
        self.assertEqual(
            [r.path for r in events.requests], [b"/topics/a/b", b"/c", b"/g"]
        )
        self.assertFalse(events.requests[-1].keep_alive)
        target.feed(POST, 1.0)
        self.assertEqual(len(events.requests), 3)

    def test_http10(self) -> None:
        """HTTP/1.0 requests never keep the connection."""
        [request] = self.whole(b"POST /x HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual((request.http_version, request.keep_alive), ("1.0", False))

    def test_draining(self) -> None:
        """While draining, the next complete request is the last."""
        events = Recorder()
        target = assembler(events)
        target.draining = True
        target.feed(POST + POST, 0.0)
        self.assertEqual(len(events.requests), 1)
        self.assertFalse(events.requests[0].keep_alive)

    def test_continue(self) -> None:
        """Expect: 100-continue is reported once the head is complete, before
        the body."""
        events = Recorder()
        head = (
            b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 2\r\n\r\n"
        )
        feed_bytewise(assembler(events), head + b"ok")
        self.assertEqual(
            events.events, [("started",), ("continue",), ("body",), ("request", 0.0)]
        )

    def test_absolute_form(self) -> None:
        """Absolute-form targets lose scheme and authority."""
        self.assertEqual(split_target(b"http://h:1/p?q"), (b"/p", b"q"))
        self.assertEqual(split_target(b"http://h?q"), (b"/", b"q"))
        self.assertEqual(split_target(b"http://h"), (b"/", b""))


class LimitTests(SynchronousTestCase):
    """Limits and syntax errors are reported once and stop the reading."""

    def failed(self, data: bytes, bytewise: bool = False, **limits: int) -> Recorder:
        events = Recorder()
        target = assembler(events, **limits)
        if bytewise:
            feed_bytewise(target, data)
        else:
            target.feed(data, 0.0)
        self.assertEqual(len(events.errors), 1, events.events)
        target.feed(POST, 5.0)
        self.assertEqual(events.requests, [])
        return events

    def test_target_too_long(self) -> None:
        """414 once the target passes the limit, even a byte at a time."""
        for bytewise in (False, True):
            events = self.failed(POST, bytewise, max_target_bytes=8)
            self.assertEqual(events.errors[0].code, Code.UriTooLong)

    def test_headers_too_large(self) -> None:
        """431 once the header block passes the limit, even a byte at a time."""
        for bytewise in (False, True):
            events = self.failed(POST, bytewise, max_header_bytes=30)
            self.assertEqual(events.errors[0].code, Code.HeadersTooLarge)

    def test_one_huge_header(self) -> None:
        """One header larger than the head allows is refused while it arrives
        (llhttp holds it back until the next one)."""
        events = Recorder()
        target = assembler(events, max_header_bytes=10, max_target_bytes=10)
        target.feed(b"POST /x HTTP/1.1\r\nX: ", 0.0)
        for _ in range(5):
            target.feed(b"v" * 1000, 0.0)
        self.assertEqual([e.code for e in events.errors], [Code.HeadersTooLarge])

    def test_body_too_large(self) -> None:
        """413 from the Content-Length before the body, and for chunked
        bodies as they pass the limit."""
        events = self.failed(POST[: POST.index(b"\r\n\r\n") + 4], max_body=4)
        self.assertEqual(events.errors[0].code, Code.PayloadTooLarge)
        events = self.failed(CHUNKED, True, max_body=10)
        self.assertEqual(events.errors[0].code, Code.PayloadTooLarge)

    def test_malformed(self) -> None:
        """What llhttp refuses is a 400 saying why; the partial request keeps
        what was known."""
        events = Recorder()
        target = assembler(events)
        target.feed(b"POST /p?q HTTP/1.1\r\nContent-Length: x\r\n\r\n", 0.0)
        self.assertEqual(events.errors[0].status, 400)
        self.assertIn("malformed HTTP request", events.errors[0].message)
        partial = target.partial_request()
        self.assertEqual((partial.method, partial.path), ("POST", b"/p"))
        self.assertFalse(partial.keep_alive)

    def test_version(self) -> None:
        """Versions llhttp reads but the server does not speak are a 505."""
        events = self.failed(b"GET / HTTP/2.0\r\n\r\n")
        self.assertEqual(events.errors[0].status, 505)

    def test_upgrade(self) -> None:
        """Protocol upgrades are refused."""
        events = self.failed(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
        )
        self.assertIn("upgrade", events.errors[0].message)

    def test_framing(self) -> None:
        """The strict framing rules apply (a request without Host)."""
        events = self.failed(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(events.errors[0].status, 400)

    def test_nothing_started(self) -> None:
        """Before any byte the partial request is empty."""
        partial = assembler(Recorder()).partial_request()
        self.assertEqual(
            (partial.method, partial.path, partial.connection.peer),
            ("", b"", Peer("127.0.0.1", 5)),
        )
