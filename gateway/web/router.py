# -*- test-case-name:tests.web.test_topics,tests.web.test_aliyun,tests.web.test_emqx -*-
"""
Which API answers a request, decided by its path alone.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred

from gateway.errors import Code, GatewayError
from gateway.web.aliyun import ALIYUN_PATH, AliyunAPI
from gateway.web.emqx import EMQXAPI
from gateway.web.emqx import PATHS as EMQX_PATHS
from gateway.web.messages import AccessLogFields, HTTPRequest, HTTPResponse
from gateway.web.topics import TOPICS_PREFIX, TopicsAPI, error_response


@attrs.define(eq=False)
class Router:
    """
    The device-facing request handler: C{/topics/...} goes to API 1; C{/} goes to
    API 2 (Alibaba C{SendMessage}) when it is enabled; C{/api/v5/publish} and
    C{/api/v5/publish/bulk} go to API 3 (EMQX's publish API) when it is given;
    any other path is a 400 C{InvalidPath}.

    @ivar aliyun: API 2's adapter, or C{None} when C{[aliyun]} is off.
    @ivar emqx: API 3's adapter, or C{None} when it is not served.
    """

    topics: TopicsAPI
    aliyun: AliyunAPI | None = None
    emqx: EMQXAPI | None = None

    def handle(self, request: HTTPRequest) -> HTTPResponse | Deferred[HTTPResponse]:
        """Answer C{request} with the API its path names."""
        if request.path.startswith(TOPICS_PREFIX):
            return self.topics.handle(request)
        if self.emqx is not None and request.path in EMQX_PATHS:
            return self.emqx.handle(request)
        if self.aliyun is not None and request.path == ALIYUN_PATH:
            return self.aliyun.handle(request)
        return self.render_error(
            request, GatewayError(Code.InvalidPath, "incorrect URL path")
        )

    def render_error(self, request: HTTPRequest, error: GatewayError) -> HTTPResponse:
        """Render an error in the shape of the API the path names."""
        if self.emqx is not None and request.path in EMQX_PATHS:
            return self.emqx.render_error(request, error)
        if self.aliyun is not None and request.path == ALIYUN_PATH:
            return self.aliyun.render_error(request, error)
        return error_response(error, AccessLogFields())
