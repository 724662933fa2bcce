# -*- test-case-name: tests.web.test_topics,tests.web.test_aliyun -*-
"""
The fields of C{application/x-www-form-urlencoded} text (a query string or a form
body), split but not yet decoded: each API decodes names and values by its own
rules.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["form_fields"]


def form_fields(encoded: bytes) -> Iterator[tuple[bytes, bytes]]:
    """
    Each C{name=value} field of C{encoded}, in order: still percent-encoded, with
    C{+} already turned into a space. Empty fields are skipped; a field without
    C{=} has an empty value.
    """
    for field in encoded.replace(b"+", b" ").split(b"&"):
        if field:
            name, _, value = field.partition(b"=")
            yield name, value
