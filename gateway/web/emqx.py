# -*- test-case-name: tests.web.test_emqx -*-
"""
API 3: EMQX 5's HTTP publish API, C{POST /api/v5/publish} (one JSON message) and
C{POST /api/v5/publish/bulk} (a JSON array of them), so that back-ends written for
EMQX change only their base URL.

L{gateway.web.emqx_requests} turns a body into L{Message}s without I/O; L{EMQXAPI}
hands them, with the sender's claim, to the same core as API 1 (Basic credentials or
a client certificate, the ACL, the rate limits, the delivery promise for every
message), and L{gateway.web.emqx_responses} is the one place this API's answers are
shaped:

  - a published message: C{{"id": "<32 hex>"}} (200);
  - one the broker took but no subscriber matched (MQTT 5 reason code 0x10):
    C{{"reason_code": 16, "message": "no_matching_subscribers"}} (202);
  - a refused request: C{{"code": "BAD_REQUEST", "message": "..."}} with its status
    (400, 401, 403, 413, 429, 503 ...);
  - in a batch, every message's own result in request order (a failed one as
    C{{"reason_code": ..., "message": ...}}), and the status of the whole: 200 when
    every message was delivered, 202 when some matched no subscriber and none
    failed, otherwise the status of the first failure.

Where EMQX's behaviour is not the gateway's, the gateway keeps its own promise: a 200
means the broker acknowledged the message (QoS 1 and 2) or it was written to the
broker (QoS 0), as for API 1.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults

from gateway.core import Gateway
from gateway.errors import GatewayError, method_not_allowed
from gateway.model import Message
from gateway.web.claims import request_claim
from gateway.web.emqx_requests import decode_json, parse_batch, parse_message
from gateway.web.emqx_responses import (
    ItemResult,
    batch_response,
    item_result,
    render_error,
    single_response,
)
from gateway.web.messages import API, AccessLogFields, HTTPRequest, HTTPResponse

#: The paths of the two operations.
PUBLISH_PATH = b"/api/v5/publish"
BULK_PATH = b"/api/v5/publish/bulk"
PATHS = (PUBLISH_PATH, BULK_PATH)


def _failed_item(failure: Any) -> ItemResult:
    failure.trap(GatewayError)
    return item_result(failure.value)


class EMQXAPI:
    """
    The adapter of API 3: request in, response out, the core in between.

    @ivar core: the one message path (the same as API 1's).
    @ivar max_batch: the most messages one bulk request may carry.
    """

    def __init__(self, core: Gateway, max_batch: int = 1000) -> None:
        self.core = core
        self.max_batch = max_batch

    def handle(self, request: HTTPRequest) -> HTTPResponse | Deferred[HTTPResponse]:
        """Answer one request to L{PUBLISH_PATH} or L{BULK_PATH}."""
        sent = request.header(b"authorization") is not None
        if request.method != "POST":
            return render_error(method_not_allowed(request.method))
        bulk = request.path == BULK_PATH

        def messages() -> list[Message]:
            value = decode_json(request.body)
            if bulk:
                return parse_batch(value, self.max_batch)
            return [parse_message(value)]

        try:
            # Identified once for the request, whose messages are sent each on
            # its own.
            submitted = self.core.submit(request_claim(request), messages)
        except GatewayError as e:
            return render_error(e, credentials_sent=sent)
        identity = submitted.identity
        log = AccessLogFields(
            api=API.EMQX, client_id=identity.client_id, user=identity.username
        )
        published = [
            d.addCallbacks(item_result, _failed_item) for d in submitted.results
        ]
        if not bulk:
            return published[0].addCallback(self._single, log)
        return gatherResults(published).addCallback(batch_response, log)

    @staticmethod
    def _single(result: ItemResult, log: AccessLogFields) -> HTTPResponse:
        message_id = result.body.get("id")
        if isinstance(message_id, str):
            log = attrs.evolve(log, message_id=message_id)
        return single_response(result, log)

    def render_error(self, request: HTTPRequest, error: GatewayError) -> HTTPResponse:
        """Render an error the HTTP server found before this adapter ran."""
        return render_error(
            error, credentials_sent=request.header(b"authorization") is not None
        )
