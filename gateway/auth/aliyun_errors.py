# -*- test-case-name: tests.auth.test_aliyun_signature,tests.web.test_aliyun -*-
"""
Why a signed Alibaba Cloud OpenAPI request was refused: L{SignatureError} and its
L{Reason}.
"""

from __future__ import annotations

import enum

from gateway.errors import Code, GatewayError


class Reason(enum.Enum):
    """Why a request's signature was refused."""

    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown-key"
    BAD_SIGNATURE = "bad-signature"
    BAD_TIMESTAMP = "bad-timestamp"
    EXPIRED = "expired"
    NONCE_USED = "nonce-used"


class SignatureError(GatewayError):
    """
    A request whose signature does not prove that it comes from a configured
    AccessKey, now.

    @ivar reason: which check failed.
    """

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(Code.Unauthorized, message)
        self.reason = reason

    @property
    def failed_authentication(self) -> bool:
        """
        Whether this looks like guessing or replaying rather than a client with a
        wrong clock: an unknown key, a wrong signature or a reused nonce.
        """
        return self.reason in (
            Reason.UNKNOWN_KEY,
            Reason.BAD_SIGNATURE,
            Reason.NONCE_USED,
        )
