# -*- test-case-name: tests.test_memo -*-
"""
L{ShortMemo}: a bounded dict of results computed from short keys, for the
message path's repeated work (a device posts to the same few topics; the same
property names and client ids are encoded again and again).
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Generic, TypeVar

K = TypeVar("K", bound=Sized)
V = TypeVar("V")


class ShortMemo(dict[K, V], Generic[K, V]):
    """
    Results by key, looked up with the plain C{dict.get} (nothing more on the
    hit path), and kept by L{remember} only for keys of at most C{max_length};
    at C{max_entries} it is emptied before the next entry, so it never holds
    more than C{max_entries} keys of at most C{max_length} each.
    """

    def __init__(self, max_entries: int = 4096, max_length: int = 256) -> None:
        super().__init__()
        self.max_entries = max_entries
        self.max_length = max_length

    def remember(self, key: K, value: V) -> V:
        """Keep C{value} for C{key} if the key is short enough; return C{value}."""
        if len(key) <= self.max_length:
            if len(self) >= self.max_entries:
                self.clear()
            self[key] = value
        return value
