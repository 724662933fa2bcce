"""
Hand-built MQTT packets over a blocking socket, to see exactly what a broker
answers to one packet (paho would hide it or refuse to send it).

Independent of the gateway's codec on purpose: it builds what the tests say,
malformed strings and over-size packets included. Loopback only, short waits: fine
on the reactor thread against a broker in another process, but not through a
proxy on the same reactor.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def packet(kind: int, flags: int, body: bytes) -> bytes:
    """A fixed header (type, flags, remaining length) followed by C{body}."""
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


def connect(
    client_id: str,
    *,
    clean: bool = True,
    level: int = 4,
    keepalive: int = 30,
    properties: bytes = b"",
) -> bytes:
    """A CONNECT; level 5 adds the encoded C{properties} (none by default)."""
    flags = 0x02 if clean else 0x00
    body = _string(b"MQTT") + bytes([level, flags]) + struct.pack("!H", keepalive)
    if level == 5:
        body += _varint(len(properties)) + properties
    return packet(CONNECT, 0, body + _string(client_id.encode()))


#: An MQTT 5 Session Expiry Interval property of 60 s, for L{connect}.
SESSION_EXPIRY_60 = b"\x11\x00\x00\x00\x3c"


def publish(
    topic: bytes,
    payload: bytes,
    *,
    qos: int = 0,
    packet_id: int = 1,
    dup: bool = False,
    level: int = 4,
) -> bytes:
    """A PUBLISH with the raw topic bytes given (no validation at all)."""
    body = _string(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    if level == 5:
        body += b"\x00"
    flags = (0x08 if dup else 0) | qos << 1
    return packet(PUBLISH, flags, body + payload)


def subscribe(topic_filter: bytes, qos: int = 1, packet_id: int = 1) -> bytes:
    """A SUBSCRIBE to one filter (3.1.1)."""
    body = struct.pack("!H", packet_id) + _string(topic_filter) + bytes([qos])
    return packet(SUBSCRIBE, 2, body)


def ack(kind: int, packet_id: int) -> bytes:
    """A PUBACK, PUBREC, PUBREL (flags 2, as required) or PUBCOMP for C{packet_id}."""
    wanted = expected_ack(kind, packet_id)
    return packet(wanted.kind, wanted.flags, wanted.body)


@dataclass(frozen=True)
class Packet:
    """One packet read back: its type, the header flags and the body."""

    kind: int
    flags: int
    body: bytes

    @property
    def packet_id(self) -> int:
        """The packet identifier of an acknowledgement (first two body bytes)."""
        pid: int = struct.unpack("!H", self.body[:2])[0]
        return pid


def expected_ack(kind: int, packet_id: int) -> Packet:
    """The acknowledgement C{kind} for C{packet_id} as L{RawClient.read} returns it."""
    return Packet(kind, 2 if kind == PUBREL else 0, struct.pack("!H", packet_id))


class RawClient:
    """
    A blocking TCP connection to a broker that sends bytes and reads whole
    packets; L{read} returns C{None} once the broker has closed the connection.
    """

    def __init__(self, host: str, port: int, timeout: float = 2.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        """Send C{data} as it is."""
        self.sock.sendall(data)

    def _fill(self, n: int) -> bool:
        while len(self._buffer) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return False
            self._buffer += chunk
        return True

    def read(self) -> Packet | None:
        """
        The next packet, or C{None} if the connection ended first; raises
        C{TimeoutError} if nothing complete came within the timeout.
        """
        if not self._fill(2):
            return None
        length, shift, i = 0, 0, 1
        while True:
            if not self._fill(i + 1):
                return None
            byte = self._buffer[i]
            length |= (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                break
        if not self._fill(i + length):
            return None
        first = self._buffer[0]
        body = self._buffer[i : i + length]
        self._buffer = self._buffer[i + length :]
        return Packet(first >> 4, first & 0x0F, body)

    def replies(self, wait: float = 0.5) -> tuple[list[Packet], bool]:
        """
        Every packet that comes within C{wait} seconds of quiet, and whether the
        broker closed the connection (C{True}) or kept it open.
        """
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        packets: list[Packet] = []
        try:
            while (got := self.read()) is not None:
                packets.append(got)
        except TimeoutError:
            return packets, False
        finally:
            self.sock.settimeout(old)
        return packets, True

    def close(self) -> None:
        """Close the socket (no DISCONNECT: to the broker it is a lost link)."""
        self.sock.close()
