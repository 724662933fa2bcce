"""
The PROXY protocol header parser: what versions 1 and 2 say about the client,
bytes arriving one at a time, and input that is not a header.
"""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase

from gateway.proxyheader import V1_MAX, BadHeader, ProxyHeader, parse_header
from tests.proxy.headers import v1, v2


class Version1Tests(SynchronousTestCase):
    def test_tcp4(self) -> None:
        """The client's and the balancer's addresses, and the header's length."""
        header = v1("192.0.2.7", "198.51.100.1", 40001, 443)
        self.assertEqual(
            parse_header(header + b"GET / HTTP/1.1\r\n"),
            ProxyHeader(
                IPv4Address("TCP", "192.0.2.7", 40001),
                IPv4Address("TCP", "198.51.100.1", 443),
                len(header),
            ),
        )

    def test_tcp6(self) -> None:
        """IPv6 addresses come out in their short form."""
        header = b"PROXY TCP6 2001:db8:0:0::7 2001:db8::1 65535 0\r\n"
        self.assertEqual(
            parse_header(header),
            ProxyHeader(
                IPv6Address("TCP", "2001:db8::7", 65535),
                IPv6Address("TCP", "2001:db8::1", 0),
                len(header),
            ),
        )

    def test_unknown(self) -> None:
        """UNKNOWN names no client, whatever follows it on the line."""
        header = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"
        self.assertEqual(parse_header(header + b"x"), ProxyHeader(None, None, 35))

    def test_byte_by_byte(self) -> None:
        """Every proper prefix of a header is incomplete, not bad."""
        header = v1("203.0.113.9", "127.0.0.1", 5, 8443)
        for end in range(len(header)):
            self.assertIsNone(parse_header(header[:end]), header[:end])
        self.assertEqual(parse_header(header).length, len(header))  # type: ignore[union-attr]

    def test_longest(self) -> None:
        """A line of 107 bytes with its CRLF is the longest there is."""
        line = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n"
        self.assertEqual(len(line), V1_MAX)
        self.assertEqual(parse_header(line), ProxyHeader(None, None, V1_MAX))
        with self.assertRaisesRegex(BadHeader, "longer than 107"):
            parse_header(line[:-2] + b"xx")

    def test_bad(self) -> None:
        """Lines that are not version 1 headers, each with why."""
        for line, why in [
            # Twisted's own parser raises ValueError from int() here.
            (b"PROXY TCP4 192.0.2.7 127.0.0.1 http 80\r\n", "bad port 'http'"),
            (b"PROXY TCP4 192.0.2.7 127.0.0.1 65536 80\r\n", "bad port '65536'"),
            (b"PROXY TCP4 192.0.2.7 127.0.0.1 1 -80\r\n", "bad port '-80'"),
            (b"PROXY TCP4 192.0.2.7 127.0.0.1 1_0 80\r\n", "bad port '1_0'"),
            (b"PROXY TCP4 192.0.2.7 127.0.0.1 \xd9\xa1 80\r\n", "bad port"),
            (b"PROXY TCP4 192.0.2.777 127.0.0.1 1 80\r\n", "bad address"),
            (b"PROXY TCP4 localhost 127.0.0.1 1 80\r\n", "bad address 'localhost'"),
            (b"PROXY TCP4 ::1 127.0.0.1 1 80\r\n", "bad address '::1'"),
            (b"PROXY TCP6 127.0.0.1 ::1 1 80\r\n", "bad address '127.0.0.1'"),
            (b"PROXY TCP6 fe80::1%eth0 ::1 1 80\r\n", "bad address 'fe80::1%eth0'"),
            (b"PROXY TCP4 \xff 127.0.0.1 1 80\r\n", "bad address"),
            (b"PROXY TCP4 192.0.2.7 127.0.0.1 1\r\n", "malformed"),
            (b"PROXY TCP4 192.0.2.7 127.0.0.1 1 80 9\r\n", "malformed"),
            (b"PROXY TCP4  192.0.2.7 127.0.0.1 1 80\r\n", "malformed"),
            (b"PROXY UDP4 192.0.2.7 127.0.0.1 1 80\r\n", "malformed"),
            (b"PROXY \r\n", "malformed"),
            (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
            (b"\x16\x03\x01\x02\x00", "no PROXY protocol header"),
            (b"proxy TCP4", "no PROXY protocol header"),
        ]:
            with self.assertRaisesRegex(BadHeader, why, msg=line):
                parse_header(line)


class Version2Tests(SynchronousTestCase):
    def test_inet(self) -> None:
        """PROXY over IPv4, the client's bytes after it."""
        header = v2("192.0.2.7", "198.51.100.1", 40001, 443)
        self.assertEqual(len(header), 28)
        self.assertEqual(
            parse_header(header + b"\x16\x03\x01"),
            ProxyHeader(
                IPv4Address("TCP", "192.0.2.7", 40001),
                IPv4Address("TCP", "198.51.100.1", 443),
                28,
            ),
        )

    def test_inet6(self) -> None:
        """PROXY over IPv6; TLVs after the addresses belong to the header."""
        header = v2("2001:db8::7", "2001:db8::1", 1, 2, tlvs=b"\x04\x00\x01x")
        self.assertEqual(
            parse_header(header),
            ProxyHeader(
                IPv6Address("TCP", "2001:db8::7", 1),
                IPv6Address("TCP", "2001:db8::1", 2),
                16 + 36 + 4,
            ),
        )

    def test_ipv4_mapped(self) -> None:
        """A dual-stack balancer's IPv4 client is that IPv4 address."""
        header = v2("::ffff:192.0.2.7", "::ffff:127.0.0.1", 1, 2)
        self.assertEqual(
            parse_header(header).source,  # type: ignore[union-attr]
            IPv4Address("TCP", "192.0.2.7", 1),
        )

    def test_local(self) -> None:
        """LOCAL (HAProxy's health checks) names no client, even with addresses."""
        for header in (v2(command=0), v2("192.0.2.7", "127.0.0.1", 1, 2, command=0)):
            self.assertEqual(parse_header(header), ProxyHeader(None, None, len(header)))

    def test_no_address(self) -> None:
        """AF_UNSPEC and AF_UNIX name no IP client."""
        unix = v2(family=0x3, tlvs=b"\x00" * 216)
        for header in (v2(), v2(transport=0), unix):
            self.assertEqual(parse_header(header), ProxyHeader(None, None, len(header)))

    def test_byte_by_byte(self) -> None:
        """Every proper prefix of a header is incomplete, not bad."""
        header = v2("192.0.2.7", "198.51.100.1", 40001, 443, tlvs=b"\x01\x00\x02h2")
        for end in range(len(header)):
            self.assertIsNone(parse_header(header[:end]), header[:end])
        self.assertEqual(parse_header(header).length, len(header))  # type: ignore[union-attr]

    def test_bad(self) -> None:
        """Headers that are not version 2 headers, each with why."""
        inet = ("192.0.2.7", "127.0.0.1", 1, 2)
        for header, why in [
            (v2(*inet, version=1), "unknown PROXY protocol version 1"),
            (v2(*inet, version=3), "unknown PROXY protocol version 3"),
            (v2(*inet, command=2), "unknown version 2 command 2"),
            (v2(*inet, family=4), "unknown version 2 address family 4"),
            (v2(*inet, transport=2), "transport 2, not TCP"),
            (v2(*inet, length=11), "too short for its addresses"),
            (v2("::1", "::1", 1, 2, length=35), "too short for its addresses"),
        ]:
            with self.assertRaisesRegex(BadHeader, why, msg=repr(header)):
                parse_header(header + b"\x00" * 64)


def _not_mapped(ip: str) -> bool:
    # An IPv4-mapped address reads back as the IPv4 address it maps.
    return not ip.startswith("::ffff:")


addresses = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str).filter(_not_mapped)
)
ports = st.integers(0, 65535)


class FuzzTests(SynchronousTestCase):
    @given(st.binary(max_size=300))
    def test_any_bytes(self, data: bytes) -> None:
        """Any bytes are a header, not yet one, or BadHeader: nothing else."""
        try:
            header = parse_header(data)
        except BadHeader:
            return
        if header is not None:
            self.assertTrue(0 < header.length <= len(data))

    @given(st.sampled_from([b"PROXY ", b"\r\n\r\n\x00\r\nQUIT\n"]), st.binary())
    def test_after_a_signature(self, signature: bytes, rest: bytes) -> None:
        """Bytes after either signature never raise anything but BadHeader."""
        with contextlib.suppress(BadHeader):
            parse_header(signature + rest)

    @given(addresses, addresses, st.tuples(ports, ports), st.booleans(), st.binary())
    def test_round_trip(
        self,
        source: str,
        destination: str,
        port: tuple[int, int],
        version_2: bool,
        after: bytes,
    ) -> None:
        """The addresses written are the addresses read, in either version."""
        source_port, destination_port = port
        if (":" in source) != (":" in destination):
            destination = source
        write = v2 if version_2 else v1
        header = write(source, destination, source_port, destination_port)
        parsed = parse_header(header + after)
        assert parsed is not None
        kind = IPv6Address if ":" in source else IPv4Address
        self.assertEqual(
            (parsed.source, parsed.destination, parsed.length),
            (
                kind("TCP", source, source_port),
                kind("TCP", destination, destination_port),
                len(header),
            ),
        )
