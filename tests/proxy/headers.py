"""
PROXY protocol headers as load balancers write them, for the tests.
"""

from __future__ import annotations

import ipaddress
import struct

from gateway.proxyheader import V2_SIGNATURE


def v1(source: str, destination: str, source_port: int, destination_port: int) -> bytes:
    """A version 1 header (HAProxy's C{send-proxy}) for a TCP connection."""
    family = "TCP6" if ":" in source else "TCP4"
    line = f"PROXY {family} {source} {destination} {source_port} {destination_port}"
    return line.encode("ascii") + b"\r\n"


def v2(
    source: str = "",
    destination: str = "",
    source_port: int = 0,
    destination_port: int = 0,
    *,
    command: int = 0x1,
    version: int = 2,
    family: int | None = None,
    transport: int = 0x1,
    tlvs: bytes = b"",
    length: int | None = None,
) -> bytes:
    """
    A version 2 header (HAProxy's C{send-proxy-v2}): C{command} 1 is PROXY, 0
    is LOCAL; without addresses, family C{AF_UNSPEC}.
    """
    if source:
        ips = ipaddress.ip_address(source), ipaddress.ip_address(destination)
        addresses = b"".join(ip.packed for ip in ips) + struct.pack(
            "!HH", source_port, destination_port
        )
        default_family = 0x1 if ips[0].version == 4 else 0x2
    else:
        addresses, default_family = b"", 0x0
    if family is None:
        family = default_family
    body = addresses + tlvs
    return (
        V2_SIGNATURE
        + bytes([version << 4 | command, family << 4 | transport])
        + struct.pack("!H", len(body) if length is None else length)
        + body
    )
