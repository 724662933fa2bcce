# -*- test-case-name: tests.proxy.test_proxyheader -*-
"""
The PROXY protocol header (versions 1 and 2, as HAProxy's C{send-proxy} and
C{send-proxy-v2} and cloud network load balancers send it) that a load balancer
puts before the client's bytes: which client the connection is really from.

L{parse_header} is pure: it reads the bytes received so far and says whether a
header is complete, still arriving, or not a header at all. It is strict where
the peer is a balancer that only ever sends well-formed headers: addresses must be
IP addresses of the stated family and ports decimal numbers up to 65535.
"""

from __future__ import annotations

import ipaddress
import re
import struct

import attrs
from twisted.internet.address import IPv4Address, IPv6Address

__all__ = ["V1_MAX", "V2_SIGNATURE", "BadHeader", "ProxyHeader", "parse_header"]

#: How version 2 headers begin.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
#: The longest version 1 header, CRLF included.
V1_MAX = 107
_PORT = re.compile(rb"[0-9]{1,5}")

# Version 2: the command (low nibble of byte 12), the address family (high nibble
# of byte 13) and the transport (low nibble of byte 13).
_LOCAL, _PROXY = 0x0, 0x1
_UNSPEC, _INET, _INET6, _UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1
_ADDRESSES = {_INET: struct.Struct("!4s4sHH"), _INET6: struct.Struct("!16s16sHH")}


class BadHeader(Exception):
    """
    The bytes received are not a PROXY protocol header; the message says why.
    """


@attrs.frozen
class ProxyHeader:
    """
    A complete PROXY protocol header.

    @ivar source: the client's address, or C{None} when the header names none
        (version 2 C{LOCAL}, a balancer's own health check; C{UNKNOWN} or
        C{AF_UNSPEC}; a UNIX socket): then the connection is the balancer's own.
    @ivar destination: the address the client connected to, or C{None} likewise.
    @ivar length: how many bytes the header took; the client's bytes follow.
    """

    source: IPv4Address | IPv6Address | None
    destination: IPv4Address | IPv6Address | None
    length: int


def parse_header(data: bytes) -> ProxyHeader | None:
    """
    The PROXY protocol header at the start of C{data}, the bytes received so far.

    @return: the header once it is complete, or C{None} while the bytes so far
        may still become one.
    @raise BadHeader: when they cannot.
    """
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data.startswith(_V1_PREFIX):
        return _parse_v1(data)
    if V2_SIGNATURE.startswith(data) or _V1_PREFIX.startswith(data):
        return None
    raise BadHeader("no PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise BadHeader(f"a version 1 header longer than {V1_MAX} bytes")
        return None
    line = data[:end]
    fields = line.split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:
        return ProxyHeader(None, None, end + 2)
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise BadHeader(f"a malformed version 1 header {_shown(line)}")
    version = 4 if fields[1] == b"TCP4" else 6
    source = _address(_v1_host(fields[2], version), _v1_port(fields[4]))
    destination = _address(_v1_host(fields[3], version), _v1_port(fields[5]))
    return ProxyHeader(source, destination, end + 2)


_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _v1_host(text: bytes, version: int) -> _IP:
    try:
        host = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        raise BadHeader(f"a bad address {_shown(text)} in a version 1 header") from None
    # "%" would be an IPv6 zone, which says nothing about the client.
    if host.version != version or b"%" in text:
        raise BadHeader(f"a bad address {_shown(text)} in a version 1 header")
    return host


def _v1_port(text: bytes) -> int:
    if _PORT.fullmatch(text) is None or int(text) > 65535:
        raise BadHeader(f"a bad port {_shown(text)} in a version 1 header")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    version, command = data[12] >> 4, data[12] & 0xF
    if version != 2:
        raise BadHeader(f"an unknown PROXY protocol version {version}")
    if command not in (_LOCAL, _PROXY):
        raise BadHeader(f"an unknown version 2 command {command}")
    family, transport = data[13] >> 4, data[13] & 0xF
    (size,) = struct.unpack_from("!H", data, 14)
    length = 16 + size
    if len(data) < length:
        return None
    # LOCAL: the balancer speaks for itself; whatever addresses follow are moot.
    if command == _LOCAL or family in (_UNSPEC, _UNIX):
        return ProxyHeader(None, None, length)
    layout = _ADDRESSES.get(family)
    if layout is None:
        raise BadHeader(f"an unknown version 2 address family {family}")
    if transport != _STREAM:
        raise BadHeader(f"a version 2 header for transport {transport}, not TCP")
    if size < layout.size:
        raise BadHeader("a version 2 header too short for its addresses")
    source, destination, source_port, destination_port = layout.unpack_from(data, 16)
    return ProxyHeader(
        _address(ipaddress.ip_address(source), source_port),
        _address(ipaddress.ip_address(destination), destination_port),
        length,
    )


def _address(host: _IP, port: int) -> IPv4Address | IPv6Address:
    """
    Twisted's address for C{host} and C{port}: an IPv4-mapped IPv6 address (a
    dual-stack balancer's IPv4 client) is the IPv4 address it maps.
    """
    if isinstance(host, ipaddress.IPv6Address):
        if host.ipv4_mapped is None:
            return IPv6Address("TCP", str(host), port)
        host = host.ipv4_mapped
    return IPv4Address("TCP", str(host), port)


def _shown(text: bytes) -> str:
    """C{text} for a log line: printable, and at most 40 characters of it."""
    shown = text[:40].decode("ascii", "backslashreplace")
    return repr(shown + ("..." if len(text) > 40 else ""))
