# -*- test-case-name: tests.auth.test_aliyun_signature -*-
"""
L{NonceCache}: the nonces of accepted signed requests, kept as long as a replay
of them would still be in the time window.
"""

from __future__ import annotations

import hashlib
import math
import os

from gateway.errors import Code, GatewayError


class NonceCache:
    """
    The nonces of accepted requests, each kept until its request's time is out of
    the window, so that a replay within the window is recognised.

    Bounded in time (whole slots of C{slot} seconds are dropped as they expire)
    and in size: beyond C{max_entries} live nonces, L{add} refuses new ones rather
    than forget live ones, which would let their requests be replayed. Nonces are
    kept as 64-bit keyed digests (about 60 bytes each), the key random per process.
    """

    def __init__(self, max_entries: int = 1_000_000, slot: float = 60.0) -> None:
        self.max_entries = max_entries
        self.slot = slot
        self._slots: dict[int, set[int]] = {}
        self._size = 0
        self._key = os.urandom(16)

    def __len__(self) -> int:
        return self._size

    def add(self, nonce: str, until: float, now: float) -> bool:
        """
        Remember C{nonce} until at least C{until}.

        @return: C{False} if it is remembered already (a replay), else C{True}.
        @raise GatewayError: 429 C{RateLimited} when the cache is full.
        """
        self._expire(now)
        digest = int.from_bytes(
            hashlib.blake2b(
                nonce.encode("utf-8"), digest_size=8, key=self._key
            ).digest(),
            "big",
        )
        for members in self._slots.values():
            if digest in members:
                return False
        if self._size >= self.max_entries:
            first = min(self._slots) * self.slot
            raise GatewayError(
                Code.RateLimited,
                "too many signed requests within the replay window",
                retry_after=max(1, math.ceil(first - now)),
            )
        index = math.ceil(until / self.slot)
        self._slots.setdefault(index, set()).add(digest)
        self._size += 1
        return True

    def _expire(self, now: float) -> None:
        for index in [i for i in self._slots if i * self.slot < now]:
            self._size -= len(self._slots.pop(index))
