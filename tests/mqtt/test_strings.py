"""
The MQTT string rule: what strict brokers (Mosquitto) accept in a topic, client id,
user name or property, checked before anything reaches the broker.
"""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.mqtt.strings import (
    MAX_STRING_BYTES,
    MAX_TOPIC_LEVELS,
    string_problem,
    topic_problem,
)
from tests.strategies import mqtt_text


def _forbidden(char: str) -> bool:
    """MQTT 5 section 1.5.4 as strict brokers apply it, written out plainly."""
    code = ord(char)
    return (
        code <= 0x1F
        or 0x7F <= code <= 0x9F
        or 0xD800 <= code <= 0xDFFF
        or 0xFDD0 <= code <= 0xFDEF
        or code & 0xFFFE == 0xFFFE
    )


class StringRuleTests(SynchronousTestCase):
    def test_each_forbidden_kind(self) -> None:
        """U+0000, C0, DEL, C1, surrogates and non-characters are each refused,
        and the message names the code point."""
        for char in "\x00\x01\x1f\x7f\x85\x9f\ud800\udfff\ufdd0\ufdef\ufffe\uffff":
            problem = string_problem(f"a{char}b")
            self.assertIsNotNone(problem, repr(char))
            assert problem is not None
            self.assertIn(f"U+{ord(char):04X}", problem)
        for plane in range(17):
            for low in (0xFFFE, 0xFFFF):
                self.assertIsNotNone(string_problem(chr(plane << 16 | low)))

    def test_ordinary_text(self) -> None:
        """Letters of any script, emoji, spaces, U+00A0 and U+FFFD are fine."""
        for text in (
            "home/a b",
            "\u00e9t\u00e9",
            "\u6e29\u5ea6",
            "\U0001f600",
            "\u00a0",
            "\ufffd",
            "\ufdcf\ufdf0",
            "",
        ):
            self.assertIsNone(string_problem(text), repr(text))

    def test_length_in_bytes(self) -> None:
        """At most 65535 UTF-8 bytes, counted as bytes, not code points."""
        self.assertIsNone(string_problem("x" * MAX_STRING_BYTES))
        self.assertIsNotNone(string_problem("x" * (MAX_STRING_BYTES + 1)))
        self.assertIsNone(string_problem("\u00e9" * (MAX_STRING_BYTES // 2)))
        self.assertIsNotNone(string_problem("\u00e9" * (MAX_STRING_BYTES // 2 + 1)))

    @given(st.text())
    def test_agrees_with_plain_definition(self, text: str) -> None:
        """For any text, refused exactly when a forbidden code point or the
        length says so."""
        expected = any(map(_forbidden, text)) or (
            len(text.encode("utf-8", "surrogatepass")) > MAX_STRING_BYTES
        )
        self.assertEqual(string_problem(text) is not None, expected)

    @given(st.characters())
    def test_every_code_point(self, char: str) -> None:
        """Each single code point: refused exactly when forbidden."""
        self.assertEqual(string_problem(char) is not None, _forbidden(char))

    @given(mqtt_text())
    def test_accepted_text_encodes(self, text: str) -> None:
        """What the rule accepts always has a UTF-8 form with no controls."""
        data = text.encode("utf-8")
        self.assertLessEqual(len(data), MAX_STRING_BYTES)
        self.assertFalse(any(unicodedata.category(c) == "Cc" for c in text))


class TopicRuleTests(SynchronousTestCase):
    def test_topics(self) -> None:
        """Empty, wildcards, bad strings and over 200 levels are refused."""
        for topic in (
            "",
            "a/+",
            "#",
            "a/b#",
            "a\x01b",
            "a\ufffe",
            "/".join(["x"] * (MAX_TOPIC_LEVELS + 1)),
        ):
            self.assertIsNotNone(topic_problem(topic), repr(topic[:20]))
        for topic in ("a", "/", "a//b", "/".join(["x"] * MAX_TOPIC_LEVELS)):
            self.assertIsNone(topic_problem(topic), repr(topic[:20]))

    @given(mqtt_text(min_size=1))
    def test_valid_strings_without_wildcards(self, topic: str) -> None:
        """Any valid MQTT string without wildcards and not too deep is a topic."""
        ok = not set(topic) & {"+", "#"} and topic.count("/") < MAX_TOPIC_LEVELS
        self.assertEqual(topic_problem(topic) is None, ok)


class EveryEntranceTests(SynchronousTestCase):
    """The rule guards every way a string reaches the broker."""

    @given(
        st.text(max_size=8),
        st.sampled_from(["ContentType", "client_id", "username", "ResponseTopic"]),
    )
    def test_api1_parameters(self, text: str, name: str) -> None:
        """A string parameter of API 1 is taken exactly when the rule takes it
        (else 400 naming it)."""
        from urllib.parse import quote

        from gateway.errors import GatewayError
        from gateway.web.messages import HTTPRequest
        from gateway.web.topics import parse_publish

        query = f"{name}={quote(text, safe='')}"
        request = HTTPRequest(method="POST", path=b"/topics/t", query=query.encode())
        bad = (
            string_problem(text) is not None
            or (name in ("client_id", "ResponseTopic") and not text)
            or (name == "ResponseTopic" and bool(set(text) & {"+", "#"}))
        )
        try:
            parse_publish(request)
        except GatewayError as e:
            self.assertTrue(bad, (text, e.message))
            self.assertEqual(e.parameter, name)
        else:
            self.assertFalse(bad, text)

    @given(st.text(max_size=8))
    def test_codec_never_writes_a_bad_string(self, text: str) -> None:
        """The codec refuses to encode a PUBLISH whose topic or user property the
        rule refuses, and encodes it otherwise."""
        from gateway.mqtt import codec

        packet = codec.Publish(
            "t",
            b"",
            properties=codec.Properties(user_properties=(("k", text),)),
        )
        if string_problem(text) is None:
            codec.encode(packet, codec.MQTT_5)
        else:
            with self.assertRaises(ValueError):
                codec.encode(packet, codec.MQTT_5)
