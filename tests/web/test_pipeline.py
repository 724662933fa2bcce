"""
The response pipeline on its own: responses leave in request order whatever order
they are ready in, encoded as one write each.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.web.messages import HTTPRequest, HTTPResponse
from gateway.web.pipeline import ResponsePipeline, encode_response


def request(path: bytes, method: str = "POST") -> HTTPRequest:
    return HTTPRequest(method=method, path=path)


class OrderTests(SynchronousTestCase):
    """HTTP/1.1 pipelining: answers in the order the requests came."""

    def test_in_order(self) -> None:
        """A later response waits for the earlier ones, then all leave in
        order."""
        pipeline = ResponsePipeline()
        slots = [pipeline.add(request(b"/%d" % i), 0.0, False) for i in range(3)]
        self.assertEqual(list(pipeline.complete(slots[2], HTTPResponse(202))), [])
        self.assertEqual(list(pipeline.complete(slots[1], HTTPResponse(201))), [])
        self.assertEqual(len(pipeline), 3)
        ready = list(pipeline.complete(slots[0], HTTPResponse(200)))
        self.assertEqual(ready, slots)
        self.assertEqual(
            [s.response.status for s in ready if s.response], [200, 201, 202]
        )
        self.assertEqual(len(pipeline), 0)

    def test_gap(self) -> None:
        """Only the ready run at the head leaves; a gap holds the rest."""
        pipeline = ResponsePipeline()
        a, b, c = (pipeline.add(request(b"/"), 0.0, False) for _ in range(3))
        pipeline.complete(c, HTTPResponse(200))
        self.assertEqual(list(pipeline.complete(a, HTTPResponse(200))), [a])
        self.assertIs(pipeline.last(), c)
        self.assertEqual(list(pipeline.complete(b, HTTPResponse(200))), [b, c])

    def test_stop_early(self) -> None:
        """A consumer that stops (the connection closes) leaves the rest
        queued."""
        pipeline = ResponsePipeline()
        a = pipeline.add(request(b"/"), 0.0, True)
        b = pipeline.add(request(b"/"), 0.0, False)
        pipeline.complete(b, HTTPResponse(200))
        for ready in pipeline.complete(a, HTTPResponse(200)):
            self.assertIs(ready, a)
            break
        self.assertEqual(len(pipeline), 1)
        pipeline.clear()
        self.assertEqual(len(pipeline), 0)


class EncodeTests(SynchronousTestCase):
    """One response, one write."""

    def test_encode(self) -> None:
        """Status line, the handler's headers (framing ones dropped, CR/LF made
        spaces), Content-Length, the standard lines, the body."""
        data, sent = encode_response(
            request(b"/"),
            HTTPResponse(
                200,
                (("X-A", "1\r\n2"), ("Content-Length", "99"), ("Connection", "x")),
                b"body",
            ),
            False,
            b"Date: D\r\n",
        )
        self.assertEqual(
            data,
            b"HTTP/1.1 200 OK\r\nX-A: 1  2\r\nContent-Length: 4\r\nDate: D\r\n\r\nbody",
        )
        self.assertEqual(sent, 4)

    def test_no_body(self) -> None:
        """HEAD keeps the length but not the body; 204 has neither; close
        says so."""
        data, sent = encode_response(
            request(b"/", "HEAD"), HTTPResponse(200, (), b"body"), True, b""
        )
        self.assertEqual(
            data, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"
        )
        self.assertEqual(sent, 0)
        data, _ = encode_response(
            request(b"/"), HTTPResponse(204, (), b"x"), False, b""
        )
        self.assertEqual(data, b"HTTP/1.1 204 No Content\r\n\r\n")
        data, _ = encode_response(request(b"/"), HTTPResponse(599), False, b"")
        self.assertTrue(data.startswith(b"HTTP/1.1 599 Unknown\r\n"))
