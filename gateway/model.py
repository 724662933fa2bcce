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
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger

_log = Logger()


@attrs.frozen
class Peer:
    """
    Where a connection comes from: the client's address as the server saw it
    (or as a load balancer's PROXY header said).

    @ivar host: the IP address, which per-address limits count; C{"unix"} for
        every client of a UNIX socket.
    @ivar port: the client's port, if it has one.
    """

    host: str = ""
    port: int | None = None

    def __str__(self) -> str:
        """C{host:port} (C{[v6host]:port} for IPv6), or the host alone."""
        if self.port is None:
            return self.host
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def peer_of(address: IAddress) -> Peer:
    """
    The client's address of a transport's C{getPeer()}: IP address and port,
    C{"unix"} for every client of a UNIX socket.
    """
    if isinstance(address, IPv4Address | IPv6Address):
        return Peer(address.host, address.port)
    if isinstance(address, UNIXAddress):
        return Peer("unix")
    return Peer(str(address))


class Connection:
    """
    One client connection (an HTTP connection), as the handle the message path
    carries: its id, where it comes from, whether it stays open after the
    request being handled, and the way to hear that it closed.

    Whatever is kept for the connection (broker mode's per-sender sessions)
    registers with L{when_closed}; the server that owns the connection calls
    L{close} once it is gone.

    @ivar id: unique to the connection, stable across the requests it carries.
    @ivar peer: the client's address.
    @ivar keep_alive: whether the connection stays open for more requests after
        the one being handled (HTTP/1.1 keep-alive); broker mode keeps the
        sender's session that long.
    """

    __slots__ = ("_callbacks", "_closed", "id", "keep_alive", "peer")

    def __init__(
        self, id: str = "", peer: Peer | None = None, *, keep_alive: bool = True
    ) -> None:
        self.id = id
        self.peer = Peer() if peer is None else peer
        self.keep_alive = keep_alive
        self._closed = False
        self._callbacks: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        closed = " closed" if self._closed else ""
        return f"<Connection {self.id} from {self.peer}{closed}>"

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


def no_connection() -> Connection:
    """
    The handle of a message that came on no connection the gateway serves (made
    by a test or a benchmark): no id, no address, nothing to keep open for.
    """
    return Connection(keep_alive=False)


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
    @ivar password: the password the sender presented (kept for broker mode, never
        shown by C{repr}).
    @ivar connection: the handle of the connection the request came on: its id,
        the client's address, whether it stays open (whose closing broker mode
        hears).
    """

    client_id: str
    username: str | None = None
    proof: Proof = Proof.ANONYMOUS
    password: bytes | None = attrs.field(default=None, repr=False)
    connection: Connection = attrs.field(factory=no_connection, eq=False, repr=False)


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
