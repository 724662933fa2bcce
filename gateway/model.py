# -*- test-case-name: tests.test_model -*-
"""
The values that travel the one message path: what is published (L{Message}), who asks
(L{Identity}) and what the broker said (L{PublishResult}).

Both HTTP APIs turn a request into an L{Identity} and a L{Message}; nothing here knows
HTTP or MQTT packets.
"""

from __future__ import annotations

import enum
import os

import attrs


class Proof(enum.Enum):
    """How the sender's identity was established."""

    ANONYMOUS = "anonymous"
    PASSWORD = "password"
    CERTIFICATE = "certificate"
    ACCESS_KEY = "access-key"


@attrs.frozen
class Identity:
    """
    The sender of a message.

    @ivar client_id: the MQTT client id the message is sent as (or on behalf of).
    @ivar username: the user name used for authentication and ACLs, or C{None}.
    @ivar proof: how the identity was established.
    @ivar peer: the source address, C{"host:port"}.
    @ivar password: the password the sender presented (kept for broker mode, never
        shown by C{repr}).
    @ivar connection_id: the HTTP connection the request came on.
    @ivar keep_alive: whether that connection stays open for more requests (HTTP/1.1
        keep-alive); broker mode keeps the sender's session that long.
    """

    client_id: str
    username: str | None = None
    proof: Proof = Proof.ANONYMOUS
    peer: str = ""
    password: bytes | None = attrs.field(default=None, repr=False)
    connection_id: str = ""
    keep_alive: bool = False


@attrs.frozen
class Message:
    """
    An MQTT application message as the sender asked for it.

    The MQTT 5 properties are C{None} (or empty) when not given;
    C{user_properties} keeps
    the sender's order.
    """

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()

    def has_mqtt5_properties(self) -> bool:
        """
        Whether the sender asked for anything only MQTT 5 can carry.
        """
        return bool(
            self.user_properties
            or self.payload_format_indicator is not None
            or self.message_expiry_interval is not None
            or self.content_type is not None
            or self.response_topic is not None
            or self.correlation_data is not None
        )


def new_message_id() -> str:
    """
    A fresh message id: 32 upper-case hex digits, unique per message.
    """
    return os.urandom(16).hex().upper()


@attrs.frozen
class PublishResult:
    """
    What the broker said to an accepted message.

    @ivar message_id: the gateway's id for the message (L{new_message_id}).
    @ivar reason_code: the broker's reason code (0 success, 0x10 no matching
        subscribers; always 0 for QoS 0 and for MQTT 3.1.1).
    """

    message_id: str
    reason_code: int = 0
