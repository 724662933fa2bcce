# -*- test-case-name: tests.web.test_admin -*-
"""
The admin listener's request handler: health, readiness and
metrics, for the same L{HTTPServerFactory} as the device-facing APIs but served
only on C{[admin] listen}.

  - C{GET /healthz}: 200 while the process runs (the reactor answers);
  - C{GET /readyz}: 200 while a broker session is up (the publisher's
    L{PublisherStatus}; a parent's is up while every worker has one), else 503;
  - C{GET /metrics}: the metrics, Prometheus text (or OpenMetrics when the
    C{Accept} header asks for it);
  - C{GET /openapi.json}: the OpenAPI 3.1 description of every operation, the
    device-facing ones and these.

C{HEAD} is answered like C{GET} without a body; other methods are 405 with
C{Allow}, other paths 404. The query string is ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred

from gateway import openapi
from gateway.errors import GatewayError
from gateway.status import PublisherStatus
from gateway.web.messages import API, AccessLogFields, HTTPRequest, HTTPResponse

__all__ = ["AdminRouter"]

_TEXT = (("Content-Type", "text/plain; charset=utf-8"),)
_NO_STORE = ("Cache-Control", "no-store")
_ALLOWED = "GET, HEAD"


class Readiness(Protocol):
    """What C{/readyz} asks: an L{IPublisher}."""

    def status(self) -> PublisherStatus:
        """The state of its broker connection now."""


_LOG = AccessLogFields(api=API.ADMIN)


class MetricsSource(Protocol):
    """What C{/metrics} shows: a L{gateway.metrics.GatewayMetrics}."""

    def render(
        self, accept: str | None = None
    ) -> tuple[bytes, str] | Deferred[tuple[bytes, str]]:
        """
        The metrics body and its content type for an C{Accept} value, now or
        later (a parent asks its workers first).
        """


def _text(status: int, text: str, *headers: tuple[str, str]) -> HTTPResponse:
    return HTTPResponse(
        status=status,
        headers=(*_TEXT, _NO_STORE, *headers),
        body=text.encode("utf-8") + b"\n",
        log=_LOG,
    )


class AdminRouter:
    """
    Answers the admin paths; a L{RequestHandler} for L{HTTPServerFactory}.
    """

    def __init__(
        self, publisher: Readiness, metrics: MetricsSource | None = None
    ) -> None:
        """
        @param publisher: whose status decides readiness.
        @param metrics: what C{/metrics} shows; C{None}: C{/metrics} is a 404.
        """
        self.publisher = publisher
        self.metrics = metrics
        self._routes: dict[
            bytes, Callable[[HTTPRequest], HTTPResponse | Deferred[HTTPResponse]]
        ] = {
            b"/healthz": self._health,
            b"/readyz": self._ready,
            b"/openapi.json": self._openapi,
        }
        if metrics is not None:
            self._routes[b"/metrics"] = self._metrics

    def handle(self, request: HTTPRequest) -> HTTPResponse | Deferred[HTTPResponse]:
        """Answer C{request} at once."""
        route = self._routes.get(request.path)
        if route is None:
            return _text(404, "not found")
        if request.method not in ("GET", "HEAD"):
            return _text(405, "method not allowed", ("Allow", _ALLOWED))
        return route(request)

    def render_error(self, request: HTTPRequest, error: GatewayError) -> HTTPResponse:
        """A plain-text response with the error's status and message."""
        return _text(error.status, error.message)

    def _health(self, request: HTTPRequest) -> HTTPResponse:
        return _text(200, "ok")

    def _ready(self, request: HTTPRequest) -> HTTPResponse:
        if self.publisher.status().connected:
            return _text(200, "ready")
        return _text(503, "not ready: no broker session", ("Retry-After", "1"))

    def _openapi(self, request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(
            status=200,
            headers=(("Content-Type", "application/json"),),
            body=openapi.as_json(),
            log=_LOG,
        )

    def _metrics(self, request: HTTPRequest) -> HTTPResponse | Deferred[HTTPResponse]:
        assert self.metrics is not None
        accept = request.header(b"accept")
        rendered = self.metrics.render(
            accept.decode("latin-1") if accept is not None else None
        )
        if isinstance(rendered, Deferred):
            return rendered.addCallback(self._metrics_response)
        return self._metrics_response(rendered)

    def _metrics_response(self, rendered: tuple[bytes, str]) -> HTTPResponse:
        body, content_type = rendered
        return HTTPResponse(
            status=200,
            headers=(("Content-Type", content_type), _NO_STORE),
            body=body,
            log=_LOG,
        )
