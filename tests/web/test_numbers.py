"""
Decimal numbers from requests are parsed with a bound: any length is an answer
(a value or a refusal), never Python's 4,300-digit C{ValueError}.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.web.numbers import bounded_integer


class BoundedIntegerTests(SynchronousTestCase):
    def test_in_range(self) -> None:
        """Digits within the bounds are their value, as str or bytes."""
        self.assertEqual(bounded_integer("0", 0, 1), 0)
        self.assertEqual(bounded_integer("4294967295", 0, 4294967295), 4294967295)
        self.assertEqual(bounded_integer(b"262144", 0, 262144), 262144)

    def test_refused(self) -> None:
        """Anything but plain ASCII digits within the bounds is None."""
        for text in (
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1_0",
            "1.0",
            "0x1",
            "\u0661",
            "\u00b2",
            "2",
        ):
            self.assertIsNone(bounded_integer(text, 0, 1), text)
        self.assertIsNone(bounded_integer(b"", 0, 1))
        self.assertIsNone(bounded_integer(b"12a", 0, 1000))
        self.assertIsNone(bounded_integer("0", 1, 10))

    def test_any_length(self) -> None:
        """5,000 and 100,000 digits are refused; leading zeros do not count."""
        self.assertIsNone(bounded_integer("9" * 5000, 0, 4294967295))
        self.assertIsNone(bounded_integer(b"1" * 100_000, 0, 10**9))
        self.assertEqual(bounded_integer("0" * 100_000 + "7", 0, 10), 7)
        self.assertEqual(bounded_integer(b"0" * 5000, 0, 10), 0)

    @given(st.integers(0, 10**12), st.integers(0, 10**12), st.integers(0, 30))
    def test_same_as_int(self, value: int, high: int, zeros: int) -> None:
        """Within Python's limit the answer is int()'s, checked against the
        bounds."""
        text = "0" * zeros + str(value)
        expected = value if value <= high else None
        self.assertEqual(bounded_integer(text, 0, high), expected)
        self.assertEqual(bounded_integer(text.encode(), 0, high), expected)
