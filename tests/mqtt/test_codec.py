"""
Tests for L{gateway.mqtt.codec}: the byte layouts of the MQTT 3.1.1 and 5.0
specifications, round trips, malformed input, and agreement with the C{mqtt5} and
C{paho-mqtt} packages.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import mqtt5
from attrs import evolve as attrs_evolve
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from twisted.trial.unittest import SynchronousTestCase

from gateway.mqtt.codec import (
    MQTT_3_1_1,
    MQTT_5,
    NO_PROPERTIES,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    MalformedPacket,
    Packet,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Will,
    encode,
)
from tests.strategies import mqtt_text

LEVELS = (MQTT_3_1_1, MQTT_5)


def decode(data: bytes, level: int = MQTT_5, **kwargs: Any) -> list[Packet]:
    return Decoder(level, **kwargs).feed(data)


def decode_one(data: bytes, level: int = MQTT_5) -> Packet:
    [packet] = decode(data, level)
    return packet


# -- strategies.  Which properties each packet may carry is restated here from the
# MQTT 5 specification, section 2.2.2.2, rather than taken from the codec.

CONNECT_PROPERTIES = (
    "session_expiry_interval",
    "authentication_method",
    "authentication_data",
    "request_problem_information",
    "request_response_information",
    "receive_maximum",
    "topic_alias_maximum",
    "user_properties",
    "maximum_packet_size",
)
CONNACK_PROPERTIES = (
    "session_expiry_interval",
    "assigned_client_identifier",
    "server_keep_alive",
    "authentication_method",
    "authentication_data",
    "response_information",
    "server_reference",
    "reason_string",
    "receive_maximum",
    "topic_alias_maximum",
    "maximum_qos",
    "retain_available",
    "user_properties",
    "maximum_packet_size",
    "wildcard_subscription_available",
    "subscription_identifier_available",
    "shared_subscription_available",
)
MESSAGE_PROPERTIES = (
    "payload_format_indicator",
    "message_expiry_interval",
    "content_type",
    "response_topic",
    "correlation_data",
    "user_properties",
)
PUBLISH_PROPERTIES = (*MESSAGE_PROPERTIES, "subscription_identifiers", "topic_alias")
WILL_PROPERTIES = (*MESSAGE_PROPERTIES, "will_delay_interval")
ACK_PROPERTIES = ("reason_string", "user_properties")
DISCONNECT_PROPERTIES = (
    "session_expiry_interval",
    "server_reference",
    "reason_string",
    "user_properties",
)

texts = mqtt_text(max_size=12)
topics = mqtt_text(min_size=1, max_size=12).filter(lambda t: not set(t) & {"+", "#"})
blobs = st.binary(max_size=24)
flags = st.integers(0, 1)
u16 = st.integers(0, 65535)
u32 = st.integers(0, 2**32 - 1)

PROPERTY_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "payload_format_indicator": flags,
    "message_expiry_interval": u32,
    "content_type": texts,
    "response_topic": topics,
    "correlation_data": blobs,
    "subscription_identifiers": st.lists(st.integers(1, 268_435_455), max_size=3).map(
        tuple
    ),
    "session_expiry_interval": u32,
    "assigned_client_identifier": texts,
    "server_keep_alive": u16,
    "authentication_method": texts,
    "authentication_data": blobs,
    "request_problem_information": flags,
    "will_delay_interval": u32,
    "request_response_information": flags,
    "response_information": texts,
    "server_reference": texts,
    "reason_string": texts,
    "receive_maximum": st.integers(1, 65535),
    "topic_alias_maximum": u16,
    "topic_alias": st.integers(1, 65535),
    "maximum_qos": flags,
    "retain_available": flags,
    "user_properties": st.lists(st.tuples(texts, texts), max_size=4).map(tuple),
    "maximum_packet_size": st.integers(1, 2**32 - 1),
    "wildcard_subscription_available": flags,
    "subscription_identifier_available": flags,
    "shared_subscription_available": flags,
}


def properties(level: int, names: tuple[str, ...]) -> st.SearchStrategy[Properties]:
    if level == MQTT_3_1_1:
        return st.just(NO_PROPERTIES)
    optional = {
        name: PROPERTY_VALUES[name]
        if name in ("subscription_identifiers", "user_properties")
        else st.none() | PROPERTY_VALUES[name]
        for name in names
    }
    return st.builds(Properties, **optional)


def wills(level: int) -> st.SearchStrategy[Will]:
    return st.builds(
        Will,
        topics,
        blobs,
        st.integers(0, 2),
        st.booleans(),
        properties(level, WILL_PROPERTIES),
    )


def connects(level: int) -> st.SearchStrategy[Connect]:
    strategy = st.builds(
        Connect,
        texts,
        st.just(level),
        st.booleans(),
        u16,
        st.none() | texts,
        st.none() | blobs,
        st.none() | wills(level),
        properties(level, CONNECT_PROPERTIES),
    )
    if level == MQTT_3_1_1:
        return strategy.filter(lambda c: c.password is None or c.username is not None)
    return strategy


@st.composite
def publishes(draw: st.DrawFn, level: int) -> Publish:
    props = draw(properties(level, PUBLISH_PROPERTIES))
    qos = draw(st.integers(0, 2))
    aliased = props.topic_alias is not None
    return Publish(
        draw(st.just("") | topics if aliased else topics),
        draw(blobs),
        qos,
        draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(st.integers(1, 65535)) if qos else None,
        props,
    )


def packets(level: int) -> st.SearchStrategy[Packet]:
    reasons = st.integers(0, 255) if level == MQTT_5 else st.just(0)
    acks = [
        st.builds(
            cls, st.integers(1, 65535), reasons, properties(level, ACK_PROPERTIES)
        )
        for cls in (PubAck, PubRec, PubRel, PubComp)
    ]
    return st.one_of(
        connects(level),
        st.builds(
            Connack,
            st.booleans(),
            st.integers(0, 255),
            properties(level, CONNACK_PROPERTIES),
        ),
        publishes(level),
        *acks,
        st.just(PingReq()),
        st.just(PingResp()),
        st.builds(Disconnect, reasons, properties(level, DISCONNECT_PROPERTIES)),
    )


levels_and_packets = st.sampled_from(LEVELS).flatmap(
    lambda level: st.tuples(st.just(level), packets(level))
)
levels_and_streams = st.sampled_from(LEVELS).flatmap(
    lambda level: st.tuples(st.just(level), st.lists(packets(level), max_size=6))
)


class LayoutTests(SynchronousTestCase):
    """
    L{encode} produces, and L{Decoder} reads, the layouts of the MQTT 3.1.1 and
    MQTT 5.0 specifications byte for byte.
    """

    def assertLayout(self, packet: Packet, level: int, expected: bytes) -> None:
        self.assertEqual(encode(packet, level), expected)
        self.assertEqual(decode(expected, level), [packet])

    def test_connect_3_1_1(self) -> None:
        """A 3.1.1 CONNECT: protocol name, level 4, flags, keepalive, client id."""
        self.assertLayout(
            Connect("abc", protocol_level=MQTT_3_1_1, keepalive=10),
            MQTT_3_1_1,
            b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x0a\x00\x03abc",
        )

    def test_connect_5(self) -> None:
        """An MQTT 5 CONNECT has a property length after the keepalive."""
        self.assertLayout(
            Connect("abc", keepalive=10),
            MQTT_5,
            b"\x10\x10\x00\x04MQTT\x05\x02\x00\x0a\x00\x00\x03abc",
        )

    def test_connect_level_from_packet(self) -> None:
        """A CONNECT is encoded at its own level, whatever level is asked for."""
        connect = Connect("abc", protocol_level=MQTT_3_1_1, keepalive=10)
        self.assertEqual(encode(connect, MQTT_5), encode(connect, MQTT_3_1_1))

    def test_connect_everything_5(self) -> None:
        """
        The flags and the payload order of an MQTT 5 CONNECT with a will, a user
        name and a password: properties, client id, will properties, will
        topic, will payload, user name, password.
        """
        connect = Connect(
            "c",
            clean_start=False,
            keepalive=300,
            username="u",
            password=b"p",
            will=Will(
                "w",
                b"bye",
                qos=1,
                retain=True,
                properties=Properties(will_delay_interval=5),
            ),
            properties=Properties(session_expiry_interval=60),
        )
        self.assertLayout(
            connect,
            MQTT_5,
            b"\x10\x27\x00\x04MQTT\x05\xec\x01\x2c"
            b"\x05\x11\x00\x00\x00\x3c"
            b"\x00\x01c"
            b"\x05\x18\x00\x00\x00\x05"
            b"\x00\x01w\x00\x03bye\x00\x01u\x00\x01p",
        )

    def test_connack(self) -> None:
        """CONNACK: acknowledge flags, return/reason code, MQTT 5 properties."""
        self.assertLayout(Connack(True, 0), MQTT_3_1_1, b"\x20\x02\x01\x00")
        self.assertLayout(Connack(False, 5), MQTT_3_1_1, b"\x20\x02\x00\x05")
        self.assertLayout(Connack(True, 0), MQTT_5, b"\x20\x03\x01\x00\x00")
        self.assertLayout(
            Connack(properties=Properties(server_keep_alive=30, maximum_qos=1)),
            MQTT_5,
            b"\x20\x08\x00\x00\x05\x13\x00\x1e\x24\x01",
        )

    def test_publish_qos_1(self) -> None:
        """A QoS 1 PUBLISH: flags 0b0010, topic, packet id, payload."""
        packet = Publish("a/b", b"hi", qos=1, packet_id=10)
        self.assertLayout(packet, MQTT_3_1_1, b"\x32\x09\x00\x03a/b\x00\x0ahi")
        self.assertLayout(packet, MQTT_5, b"\x32\x0a\x00\x03a/b\x00\x0a\x00hi")

    def test_publish_flags(self) -> None:
        """DUP is bit 3, QoS bits 1 and 2, RETAIN bit 0."""
        packet = Publish("t", b"", qos=2, retain=True, dup=True, packet_id=1)
        self.assertLayout(packet, MQTT_3_1_1, b"\x3d\x05\x00\x01t\x00\x01")
        self.assertLayout(Publish("t", b"", retain=True), 4, b"\x31\x03\x00\x01t")

    def test_publish_properties(self) -> None:
        """
        PUBLISH properties are encoded in identifier order, user properties in
        their own order.
        """
        props = Properties(
            user_properties=(("z", "1"), ("a", "2")),
            topic_alias=7,
            content_type="c",
            payload_format_indicator=1,
            message_expiry_interval=9,
            response_topic="r",
            correlation_data=b"d",
            subscription_identifiers=(1, 200),
        )
        self.assertLayout(
            Publish("t", b"x", properties=props),
            MQTT_5,
            b"\x30\x2e\x00\x01t\x29"
            b"\x01\x01\x02\x00\x00\x00\x09\x03\x00\x01c\x08\x00\x01r\x09\x00\x01d"
            b"\x0b\x01\x0b\xc8\x01\x23\x00\x07"
            b"\x26\x00\x01z\x00\x011\x26\x00\x01a\x00\x012"
            b"x",
        )

    def test_acks(self) -> None:
        """
        At level 4 an acknowledgement is its packet id; at level 5 the reason
        code and the properties are left out when they are 0 and empty.
        """
        for cls, first in ((PubAck, 0x40), (PubRec, 0x50), (PubRel, 0x62)):
            header = bytes((first,))
            self.assertLayout(cls(10), MQTT_3_1_1, header + b"\x02\x00\x0a")
            self.assertLayout(cls(10), MQTT_5, header + b"\x02\x00\x0a")
            self.assertLayout(cls(10, 0x10), MQTT_5, header + b"\x03\x00\x0a\x10")
            self.assertLayout(
                cls(10, 0, Properties(reason_string="ok")),
                MQTT_5,
                header + b"\x09\x00\x0a\x00\x05\x1f\x00\x02ok",
            )
        self.assertLayout(PubComp(65535), MQTT_5, b"\x70\x02\xff\xff")

    def test_acks_long_forms(self) -> None:
        """Level 5 acks with an explicit 0 reason code or property length decode."""
        self.assertEqual(decode_one(b"\x40\x03\x00\x0a\x00"), PubAck(10))
        self.assertEqual(decode_one(b"\x40\x04\x00\x0a\x00\x00"), PubAck(10))

    def test_level_4_leaves_out_reason_codes(self) -> None:
        """At level 4 the reason codes of acks and DISCONNECT are not sent."""
        self.assertEqual(encode(PubAck(1, 0x80), MQTT_3_1_1), b"\x40\x02\x00\x01")
        self.assertEqual(encode(Disconnect(0x8E), MQTT_3_1_1), b"\xe0\x00")

    def test_ping_and_disconnect(self) -> None:
        """PINGREQ, PINGRESP and DISCONNECT are two bytes at both levels."""
        for level in LEVELS:
            self.assertLayout(PingReq(), level, b"\xc0\x00")
            self.assertLayout(PingResp(), level, b"\xd0\x00")
            self.assertLayout(Disconnect(), level, b"\xe0\x00")

    def test_disconnect_5(self) -> None:
        """An MQTT 5 DISCONNECT carries a reason code and then properties."""
        self.assertLayout(Disconnect(0x8E), MQTT_5, b"\xe0\x01\x8e")
        self.assertLayout(
            Disconnect(0x04, Properties(reason_string="x")),
            MQTT_5,
            b"\xe0\x06\x04\x04\x1f\x00\x01x",
        )

    def test_remaining_length_boundaries(self) -> None:
        """
        The remaining length is a variable byte integer whose length changes
        after 127, 16383 and 2097151, up to 268435455.
        """
        for length, encoded in [
            (0, b"\x00"),
            (127, b"\x7f"),
            (128, b"\x80\x01"),
            (16383, b"\xff\x7f"),
            (16384, b"\x80\x80\x01"),
            (2097151, b"\xff\xff\x7f"),
            (2097152, b"\x80\x80\x80\x01"),
            (268435455, b"\xff\xff\xff\x7f"),
        ]:
            packet = Publish("t", b"x" * (length - 3)) if length else Disconnect()
            first = b"\x30" if length else b"\xe0"
            data = encode(packet, MQTT_3_1_1)
            self.assertEqual(data[: 1 + len(encoded)], first + encoded)
            self.assertEqual(len(data), 1 + len(encoded) + length)
            self.assertEqual(decode(data, MQTT_3_1_1), [packet])
            del data

    def test_too_long_to_encode(self) -> None:
        """A remaining length over 268435455 cannot be encoded."""
        self.assertRaises(
            ValueError, encode, Publish("t", b"x" * (268435456 - 3)), MQTT_3_1_1
        )

    def test_property_varint_boundaries(self) -> None:
        """Subscription identifiers are variable byte integers too."""
        props = Properties(subscription_identifiers=(127, 128, 16384, 268435455))
        data = encode(Publish("t", b"", properties=props), MQTT_5)
        self.assertEqual(
            data[5:],
            b"\x0e\x0b\x7f\x0b\x80\x01\x0b\x80\x80\x01\x0b\xff\xff\xff\x7f",
        )
        self.assertEqual(decode(data), [Publish("t", b"", properties=props)])

    def test_topic_alias_without_topic(self) -> None:
        """An MQTT 5 PUBLISH may leave the topic empty when it names an alias."""
        packet = Publish("", b"", properties=Properties(topic_alias=3))
        self.assertLayout(packet, MQTT_5, b"\x30\x06\x00\x00\x03\x23\x00\x03")


class RoundTripTests(SynchronousTestCase):
    """Whatever L{encode} makes, L{Decoder} turns back into the same packets."""

    @given(levels_and_packets)
    def test_round_trip(self, case: tuple[int, Packet]) -> None:
        """Each packet of each level decodes to itself."""
        level, packet = case
        self.assertEqual(decode(encode(packet, level), level), [packet])

    @given(levels_and_streams, st.lists(st.integers(0, 10_000), max_size=8))
    def test_stream_split_anywhere(
        self, case: tuple[int, list[Packet]], cuts: list[int]
    ) -> None:
        """
        Several packets in one stream come out in order however the stream is
        cut into pieces, with nothing left over.
        """
        level, sent = case
        stream = b"".join(encode(packet, level) for packet in sent)
        points = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
        decoder = Decoder(level)
        received = []
        for start, end in itertools.pairwise(points):
            received += decoder.feed(stream[start:end])
        self.assertEqual(received, sent)
        self.assertEqual(decoder.feed(b""), [])

    def test_connect_sets_level(self) -> None:
        """After a CONNECT, the decoder reads the stream at the CONNECT's level."""
        decoder = Decoder(MQTT_5)
        connect = Connect("c", protocol_level=MQTT_3_1_1)
        data = encode(connect, MQTT_3_1_1) + b"\x40\x02\x00\x01"
        self.assertEqual(decoder.feed(data), [connect, PubAck(1)])
        self.assertEqual(decoder.protocol_level, MQTT_3_1_1)

    def test_byte_by_byte(self) -> None:
        """Fed one byte at a time, a packet appears with its last byte."""
        data = encode(Publish("a", b"xyz", qos=1, packet_id=2), MQTT_5)
        decoder = Decoder()
        for i in range(len(data) - 1):
            self.assertEqual(decoder.feed(data[i : i + 1]), [])
        self.assertEqual(
            decoder.feed(data[-1:]), [Publish("a", b"xyz", qos=1, packet_id=2)]
        )


class MalformedTests(SynchronousTestCase):
    """The decoder rejects what the specifications forbid with L{MalformedPacket}."""

    def assertMalformed(
        self, data: bytes, reason_code: int = 0x81, level: int = MQTT_5, **kw: Any
    ) -> None:
        error = self.assertRaises(MalformedPacket, decode, data, level, **kw)
        self.assertEqual(error.reason_code, reason_code, str(error))
        self.assertTrue(str(error))

    @given(st.sampled_from(LEVELS), st.binary(max_size=64))
    def test_random_bytes(self, level: int, data: bytes) -> None:
        """Random bytes decode, or raise L{MalformedPacket} and nothing else."""
        with contextlib.suppress(MalformedPacket):
            decode(data, level)

    @given(
        levels_and_packets,
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
        st.integers(0, 10_000),
    )
    def test_mutated_packets(
        self, case: tuple[int, Packet], changes: list[tuple[int, int]], cut: int
    ) -> None:
        """
        Valid packets with bytes changed or cut off decode, or raise
        L{MalformedPacket} and nothing else.
        """
        level, packet = case
        data = bytearray(encode(packet, level))
        for position, value in changes:
            data[position % len(data)] = value
        decoder = Decoder(level)
        try:
            decoder.feed(bytes(data[: cut % (len(data) + 1)]))
            decoder.feed(bytes(data[cut % (len(data) + 1) :]))
        except MalformedPacket:
            pass

    def test_unusable_after_error(self) -> None:
        """Once the decoder has raised, it raises for everything after."""
        decoder = Decoder()
        self.assertRaises(MalformedPacket, decoder.feed, b"\x00\x00")
        self.assertRaises(MalformedPacket, decoder.feed, b"\xc0\x00")

    def test_five_byte_remaining_length(self) -> None:
        """A remaining length may have at most 4 bytes."""
        self.assertMalformed(b"\x30\xff\xff\xff\xff")
        self.assertMalformed(b"\x30\x80\x80\x80\x80\x01")

    def test_non_minimal_remaining_length(self) -> None:
        """A variable byte integer may not end with a needless 0 byte."""
        self.assertMalformed(b"\xc0\x80\x00")

    def test_too_large(self) -> None:
        """
        A packet larger than C{max_packet_size} is refused with reason 0x95 as
        soon as its fixed header has arrived; one of exactly that size is not.
        """
        self.assertMalformed(b"\x30\xe8\x07", 0x95, max_packet_size=1002)
        self.assertEqual(decode(b"\x30\xe8\x07", max_packet_size=1003), [])
        self.assertMalformed(b"\x30\xff\xff\xff\x7f", 0x95, max_packet_size=2**28)
        data = encode(Publish("t", b"x" * 100), MQTT_5)
        self.assertEqual(len(decode(data, max_packet_size=len(data))), 1)
        self.assertMalformed(data, 0x95, max_packet_size=len(data) - 1)

    def test_bad_utf8(self) -> None:
        """Strings must be well-formed UTF-8, without UTF-16 surrogates."""
        self.assertMalformed(b"\x30\x05\x00\x02\xc3\x28\x00")
        self.assertMalformed(b"\x30\x06\x00\x03\xed\xa0\x80\x00")

    def test_nul(self) -> None:
        """Strings may not contain U+0000."""
        self.assertMalformed(b"\x30\x06\x00\x03a\x00b\x00")
        self.assertRaises(ValueError, encode, Publish("a\x00", b""), MQTT_5)

    def test_wildcard_topic(self) -> None:
        """A PUBLISH topic may not contain C{+} or C{#}."""
        self.assertMalformed(b"\x30\x06\x00\x03a/+\x00")
        self.assertMalformed(b"\x30\x04\x00\x01#\x00")
        self.assertRaises(ValueError, encode, Publish("a/#", b""), MQTT_5)

    def test_empty_topic(self) -> None:
        """
        An empty topic is malformed at level 4 and a protocol error at level 5
        without a topic alias.
        """
        self.assertMalformed(b"\x30\x02\x00\x00", level=MQTT_3_1_1)
        self.assertMalformed(b"\x30\x03\x00\x00\x00", 0x82)
        self.assertRaises(ValueError, encode, Publish("", b""), MQTT_5)

    def test_qos_3(self) -> None:
        """QoS 3 does not exist."""
        self.assertMalformed(b"\x36\x06\x00\x01t\x00\x01\x00")
        self.assertRaises(ValueError, encode, Publish("t", b"", 3, packet_id=1), 5)

    def test_publish_packet_ids(self) -> None:
        """QoS 1 and 2 need a non-zero packet id; QoS 0 may not be DUP."""
        self.assertMalformed(b"\x32\x06\x00\x01t\x00\x00\x00", 0x82)
        self.assertMalformed(b"\x38\x04\x00\x01t\x00")
        self.assertRaises(ValueError, encode, Publish("t", b"", 1), MQTT_5)
        self.assertRaises(ValueError, encode, Publish("t", b"", 0, packet_id=1), 5)
        self.assertRaises(ValueError, encode, Publish("t", b"", 0, dup=True), 5)

    def test_fixed_header_flags(self) -> None:
        """PUBREL's flags are 0b0010; other packets but PUBLISH have 0."""
        self.assertMalformed(b"\x60\x02\x00\x01")
        self.assertMalformed(b"\x42\x02\x00\x01")
        self.assertMalformed(b"\xc1\x00")
        self.assertMalformed(b"\x00\x00")

    def test_unsupported_packets(self) -> None:
        """SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK and AUTH are protocol errors."""
        for first in (0x82, 0x90, 0xA2, 0xB0, 0xF0):
            self.assertMalformed(bytes((first, 0)), 0x82)

    def test_trailing_bytes(self) -> None:
        """Packets with bytes beyond their fields are malformed."""
        self.assertMalformed(b"\xc0\x01\x00")
        self.assertMalformed(b"\x40\x03\x00\x01\x00", level=MQTT_3_1_1)
        self.assertMalformed(b"\x20\x03\x00\x00\x00", level=MQTT_3_1_1)
        self.assertMalformed(b"\xe0\x01\x00", level=MQTT_3_1_1)
        self.assertMalformed(b"\x40\x06\x00\x01\x00\x00\x00\x00")

    def test_truncated_fields(self) -> None:
        """A field running past the end of its packet is malformed."""
        self.assertMalformed(b"\x30\x02\x00\x05")
        self.assertMalformed(b"\x40\x01\x00")
        self.assertMalformed(b"\x30\x05\x00\x01t\x05\x02")

    def test_connack_3_1_1_at_level_5(self) -> None:
        """
        A 3.1.1 CONNACK, as a 3.1.1 broker answers an MQTT 5 CONNECT, does not
        parse at level 5.
        """
        self.assertMalformed(b"\x20\x02\x00\x01")
        self.assertMalformed(b"\x20\x03\x02\x00\x00")

    def test_properties(self) -> None:
        """
        Properties must belong to the packet type, have valid values and
        appear once unless they may repeat.
        """
        # Session expiry in a PUBLISH.
        self.assertMalformed(b"\x30\x09\x00\x01t\x05\x11\x00\x00\x00\x01")
        # Payload format indicator 2, topic alias 0.
        self.assertMalformed(b"\x30\x06\x00\x01t\x02\x01\x02", 0x82)
        self.assertMalformed(b"\x30\x07\x00\x01t\x03\x23\x00\x00", 0x82)
        # Content type twice.
        self.assertMalformed(b"\x30\x0a\x00\x01t\x06\x03\x00\x00\x03\x00\x00", 0x82)
        # Property length beyond the packet.
        self.assertMalformed(b"\x30\x05\x00\x01t\x09\x01")

    def test_connect_malformed(self) -> None:
        """CONNECT's protocol name, level and flags are checked."""
        good = encode(Connect("c", protocol_level=MQTT_3_1_1), MQTT_3_1_1)
        self.assertEqual(decode(good), [Connect("c", protocol_level=MQTT_3_1_1)])
        self.assertMalformed(good.replace(b"MQTT", b"MQTX"))
        self.assertMalformed(good.replace(b"\x04\x02", b"\x03\x02"), 0x84)
        self.assertMalformed(good.replace(b"\x04\x02", b"\x04\x03"))  # reserved
        self.assertMalformed(
            good.replace(b"\x04\x02", b"\x04\x0a")
        )  # will QoS, no will
        self.assertMalformed(good.replace(b"\x04\x02", b"\x04\x42"))  # password only
        self.assertMalformed(
            b"\x10\x0f\x00\x06MQIsdp\x03\x02\x00\x0a\x00\x01c", 0x84, MQTT_3_1_1
        )


class EncodeErrorTests(SynchronousTestCase):
    """L{encode} refuses packets that cannot be sent with L{ValueError}."""

    def test_out_of_range(self) -> None:
        """Numbers, strings and binary fields must fit their encodings."""
        for packet in [
            PubAck(0),
            PubAck(65536),
            PubAck(1, 256),
            Connack(reason_code=-1),
            Connect("c", keepalive=65536),
            Connect("c", protocol_level=3),
            Publish("t" * 65536, b""),
            Publish("t", b"", properties=Properties(correlation_data=b"x" * 65536)),
            Publish("t", b"", properties=Properties(payload_format_indicator=2)),
            Publish("t", b"", properties=Properties(topic_alias=0)),
            Publish("t", b"", properties=Properties(message_expiry_interval=2**32)),
            Publish("\ud800", b""),
        ]:
            self.assertRaises(ValueError, encode, packet, MQTT_5)
        self.assertRaises(ValueError, encode, PingReq(), 6)

    def test_properties_at_level_4(self) -> None:
        """MQTT 3.1.1 packets cannot carry properties."""
        props = Properties(user_properties=(("a", "b"),))
        for packet in [
            Publish("t", b"", properties=props),
            PubAck(1, properties=props),
            Disconnect(properties=props),
            Connack(properties=props),
            Connect("c", MQTT_3_1_1, properties=props),
            Connect("c", MQTT_3_1_1, will=Will("t", b"", properties=props)),
        ]:
            self.assertRaises(ValueError, encode, packet, MQTT_3_1_1)

    def test_password_without_username_3_1_1(self) -> None:
        """MQTT 3.1.1 allows a password only together with a user name."""
        connect = Connect("c", MQTT_3_1_1, password=b"p")
        self.assertRaises(ValueError, encode, connect, MQTT_3_1_1)
        data = encode(Connect("c", MQTT_5, password=b"p"), MQTT_5)
        self.assertEqual(decode(data), [Connect("c", MQTT_5, password=b"p")])

    def test_foreign_properties(self) -> None:
        """A packet cannot carry properties its type does not allow."""
        for packet in [
            Publish("t", b"", properties=Properties(session_expiry_interval=1)),
            PubAck(1, properties=Properties(content_type="x")),
            Connect("c", will=Will("t", b"", properties=Properties(topic_alias=1))),
        ]:
            self.assertRaises(ValueError, encode, packet, MQTT_5)


# -- the mqtt5 package (a Rust codec) and paho-mqtt


def to_mqtt5(packet: Publish | Connect) -> Any:
    """The C{mqtt5} package's equivalent of C{packet}, its defaults filled in."""
    props = packet.properties
    if isinstance(packet, Publish):
        return mqtt5.PublishPacket(
            packet.topic,
            packet.payload,
            qos=mqtt5.QoS(packet.qos),
            retain=packet.retain,
            packet_id=packet.packet_id,
            duplicate=packet.dup,
            subscription_ids=list(props.subscription_identifiers),
            topic_alias=props.topic_alias,
            **message_to_mqtt5(props),
        )
    will = packet.will
    return mqtt5.ConnectPacket(
        packet.client_id,
        username=packet.username,
        password=packet.password,
        clean_start=packet.clean_start,
        keep_alive=packet.keepalive,
        session_expiry_interval=props.session_expiry_interval or 0,
        authentication_method=props.authentication_method,
        authentication_data=props.authentication_data,
        request_problem_info=props.request_problem_information != 0,
        request_response_info=bool(props.request_response_information),
        receive_max=props.receive_maximum or 65535,
        topic_alias_max=props.topic_alias_maximum or 0,
        max_packet_size=props.maximum_packet_size,
        user_properties=list(props.user_properties),
        will=None
        if will is None
        else mqtt5.Will(
            will.topic,
            payload=will.payload,
            qos=mqtt5.QoS(will.qos),
            retain=will.retain,
            will_delay_interval=will.properties.will_delay_interval or 0,
            **message_to_mqtt5(will.properties),
        ),
    )


def message_to_mqtt5(props: Properties) -> dict[str, Any]:
    return {
        "payload_format_indicator": props.payload_format_indicator or 0,
        "message_expiry_interval": props.message_expiry_interval,
        "content_type": props.content_type,
        "response_topic": props.response_topic,
        "correlation_data": props.correlation_data,
        "user_properties": list(props.user_properties),
    }


class CrossCheckTests(SynchronousTestCase):
    """The codec agrees with other MQTT implementations."""

    @given(st.one_of(publishes(MQTT_5), connects(MQTT_5)))
    def test_mqtt5_reads_ours(self, packet: Publish | Connect) -> None:
        """The C{mqtt5} package decodes what L{encode} makes as the same packet."""
        theirs, size = mqtt5.read(memoryview(encode(packet, MQTT_5)))
        self.assertEqual(theirs, to_mqtt5(packet))
        self.assertEqual(size, len(encode(packet, MQTT_5)))

    @given(st.one_of(publishes(MQTT_5), connects(MQTT_5)))
    def test_we_read_mqtt5(self, packet: Publish | Connect) -> None:
        """L{Decoder} decodes what the C{mqtt5} package encodes as the same packet."""
        [ours] = decode(to_mqtt5(packet).write())
        assert isinstance(ours, Publish | Connect)
        self.assertEqual(to_mqtt5(ours), to_mqtt5(packet))

    def test_mqtt5_user_properties_in_order(self) -> None:
        """User properties from C{mqtt5} come out in the order they were sent."""
        pairs = [("b", "1"), ("a", "2"), ("b", "3")]
        data = mqtt5.PublishPacket("t", b"", user_properties=pairs).write()
        [packet] = decode(data)
        assert isinstance(packet, Publish)
        self.assertEqual(packet.properties.user_properties, tuple(pairs))

    @given(properties(MQTT_5, PUBLISH_PROPERTIES))
    def test_paho_publish_properties(self, props: Properties) -> None:
        """
        PUBLISH properties are encoded exactly as paho-mqtt packs them, several
        user properties in order included, and paho-mqtt reads ours back.
        """
        paho = PahoProperties(PacketTypes.PUBLISH)
        for name, value in [
            ("PayloadFormatIndicator", props.payload_format_indicator),
            ("MessageExpiryInterval", props.message_expiry_interval),
            ("ContentType", props.content_type),
            ("ResponseTopic", props.response_topic),
            ("CorrelationData", props.correlation_data),
            ("TopicAlias", props.topic_alias),
        ]:
            if value is not None:
                setattr(paho, name, value)
        for identifier in props.subscription_identifiers:
            paho.SubscriptionIdentifier = identifier
        for pair in props.user_properties:
            paho.UserProperty = pair
        packed = paho.pack()
        topic = b"\x00\x01t" if props.topic_alias is None else b"\x00\x00"
        ours = encode(
            Publish("t" if props.topic_alias is None else "", b"p", properties=props),
            MQTT_5,
        )
        body = topic + packed + b"p"
        self.assertEqual(ours[-len(body) :], body)
        unpacked, _ = PahoProperties(PacketTypes.PUBLISH).unpack(packed)
        self.assertEqual(
            list(getattr(unpacked, "UserProperty", [])), list(props.user_properties)
        )

    def test_paho_user_properties(self) -> None:
        """Several user properties are packed as paho-mqtt packs them, in order."""
        paho = PahoProperties(PacketTypes.PUBLISH)
        paho.ContentType = "text/plain"
        paho.UserProperty = ("z", "last-name-first")
        paho.UserProperty = ("a", "1")
        paho.UserProperty = ("z", "again")
        props = Properties(
            content_type="text/plain",
            user_properties=(("z", "last-name-first"), ("a", "1"), ("z", "again")),
        )
        data = encode(Publish("t", b"", properties=props), MQTT_5)
        self.assertEqual(data[5:], paho.pack())


class MessageFastPathTests(SynchronousTestCase):
    """The message path's own PUBLISH encoder agrees with the general one."""

    @given(
        topics,
        blobs,
        st.integers(0, 2),
        st.booleans(),
        st.integers(1, 65535),
        st.one_of(st.none(), flags),
        st.one_of(st.none(), u32),
        st.one_of(st.none(), texts),
        st.one_of(st.none(), topics),
        st.one_of(st.none(), blobs),
        st.lists(st.tuples(texts, texts), max_size=3).map(tuple),
        st.sampled_from([MQTT_3_1_1, MQTT_5]),
    )
    def test_same_bytes(  # noqa: PLR0917 - one argument per strategy
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        packet_id: int,
        pfi: int | None,
        expiry: int | None,
        content_type: str | None,
        response_topic: str | None,
        correlation: bytes | None,
        user: tuple[tuple[str, str], ...],
        level: int,
    ) -> None:
        """Same bytes as encode() of the equivalent Publish, at both levels, and
        with DUP set by as_duplicate()."""
        from gateway.mqtt.codec import as_duplicate, encode_message, message_properties

        fields: dict[str, Any] = {
            "payload_format_indicator": pfi,
            "message_expiry_interval": expiry,
            "content_type": content_type,
            "response_topic": response_topic,
            "correlation_data": correlation,
            "user_properties": user,
        }
        if level == MQTT_3_1_1:
            fields = {}
        packet = Publish(
            topic,
            payload,
            qos=qos,
            retain=retain,
            packet_id=packet_id if qos else None,
            properties=Properties(**fields),
        )
        fast = encode_message(
            topic,
            payload,
            qos=qos,
            retain=retain,
            packet_id=packet_id if qos else None,
            properties=message_properties(**fields) if level == MQTT_5 else None,
        )
        self.assertEqual(fast, encode(packet, level))
        if qos:
            self.assertEqual(
                as_duplicate(fast), encode(attrs_evolve(packet, dup=True), level)
            )
