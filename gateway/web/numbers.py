# -*- test-case-name: tests.web.test_numbers -*-
"""
Decimal numbers from untrusted input, parsed with a bound.

Python refuses C{int()} of more than 4,300 digits with a C{ValueError}, and even
below that a long number costs time quadratic in its length. L{bounded_integer}
looks at the digits first: a value of any length gets an answer in time linear
in its length, and C{int()} only ever sees as many digits as the bound has.
"""

from __future__ import annotations

from typing import AnyStr

__all__ = ["bounded_integer"]

_DIGITS = frozenset("0123456789")
_DIGIT_BYTES = frozenset(b"0123456789")


def bounded_integer(text: AnyStr, low: int, high: int) -> int | None:
    """
    The value of C{text} when it is ASCII decimal digits only (leading zeros
    allowed, no sign, no spaces) and from C{low} to C{high}; otherwise C{None}.

    @param text: the digits, as C{str} or C{bytes}.
    @param low: the smallest value accepted (0 or more).
    @param high: the largest value accepted.
    """
    if not text:
        return None
    if isinstance(text, bytes):
        if not _DIGIT_BYTES.issuperset(text):
            return None
        digits = text.lstrip(b"0").decode("ascii")
    else:
        if not _DIGITS.issuperset(text):
            return None
        digits = text.lstrip("0")
    if len(digits) > len(str(high)):
        return None
    value = int(digits) if digits else 0
    return value if low <= value <= high else None
