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
from collections.abc import Callable

import attrs
from twisted.logger import Logger

_log = Logger()


class Connection:
    """
    One client connection (an HTTP connection), as a handle the message path
    carries: its id, and the way to hear that it closed.

    Whatever is kept for the connection (broker mode's per-sender sessions)
    registers with L{when_closed}; the server that owns the connection calls
    L{close} once it is gone.

    @ivar id: unique to the connection, stable across the requests it carries.
    """

    __slots__ = ("_callbacks", "_closed", "id")

    def __init__(self, id: str) -> None:
        self.id = id
        self._closed = False
        self._callbacks: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"<Connection {self.id}{' closed' if self._closed else ''}>"

    @property
    def closed(self) -> bool:
        """Whether the connection has closed."""
        return self._closed

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Call C{callback} once the connection closes (now, if it has)."""
        if self._closed:
            callback()
        else:
            self._callbacks.append(callback)

    def close(self) -> None:
        """
        For the connection's owner: it has closed. Each callback runs once; one
        that raises is logged and does not stop the others.
        """
        if self._closed:
            return
        self._closed = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                _log.failure("A callback on a closed connection failed")


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
    @ivar connection: the handle of that connection (whose closing broker mode
        hears), or C{None}.
    """

    client_id: str
    username: str | None = None
    proof: Proof = Proof.ANONYMOUS
    peer: str = ""
    password: bytes | None = attrs.field(default=None, repr=False)
    connection_id: str = ""
    keep_alive: bool = False
    connection: Connection | None = attrs.field(default=None, eq=False, repr=False)


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
