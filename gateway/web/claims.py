# -*- test-case-name: tests.web.test_topics,tests.web.test_emqx -*-
"""
What an HTTP request says about its sender, the same for every API that takes Basic
credentials or a client certificate (API 1 and the EMQX-compatible API).
"""

from __future__ import annotations

import functools
from typing import Any

from gateway.auth.device_identity import peer_common_name
from gateway.auth.identify import Claim, parse_basic
from gateway.web.messages import HTTPRequest


def request_claim(
    request: HTTPRequest, client_id: str | None = None, username: str | None = None
) -> Claim:
    """
    The claim of C{request}: its Basic credentials, the verified client
    certificate's CN, the client id and user name it asks for (C{None}: none
    asked), its connection and source address.

    @raise GatewayError: 401 for an unreadable C{Authorization} header.
    """
    certificate = request.peer_certificate
    return Claim(
        basic=parse_basic(request.header(b"authorization")),
        certificate_cn=None if certificate is None else _common_name(certificate),
        client_id=client_id,
        username=username,
        connection=request.connection,
    )


# A keep-alive TLS connection presents the same certificate object with every
# request: its CN is read from the subject once, not per request.
@functools.lru_cache(maxsize=1024)
def _common_name(certificate: Any) -> str | None:
    return peer_common_name(certificate)
