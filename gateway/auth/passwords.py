# -*- test-case-name: tests.auth.test_passwords -*-
"""
Password files in the format of Mosquitto's C{mosquitto_passwd}: one
C{user:hash} per line, the hash either C{$7$iterations$salt$digest}
(PBKDF2-HMAC-SHA512, Mosquitto 2's default) or the legacy C{$6$salt$digest}
(SHA-512 of the password followed by the salt); salt and digest in base64.

A L{PasswordFile} never changes once parsed: a reload parses the new file into a
new one, and the caller swaps it in only if that worked.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import os
import re
import threading
from collections.abc import Iterable

import attrs

from gateway.auth.files import FileError, read_text

# What C isspace() counts as blank; str.strip() would also strip Unicode spaces.
_BLANKS = " \t\n\v\f\r"
_DIGEST_SIZE = 64  # SHA-512
_MAX_ITERATIONS = 2**31 - 1  # Mosquitto reads the count into a C int
_MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd's default in Mosquitto 2.0
_HASH_TYPE = re.compile(r"[0-9a-z]{1,3}")


@attrs.frozen
class _Hash:
    """One parsed hash; C{text} (the hash as written) identifies it in the cache."""

    text: str = attrs.field(repr=False)
    iterations: int | None  # None: $6$
    salt: bytes = attrs.field(repr=False)
    digest: bytes = attrs.field(repr=False)

    def compute(self, password: bytes) -> bytes:
        if self.iterations is None:
            return hashlib.sha512(password + self.salt).digest()
        return hashlib.pbkdf2_hmac(
            "sha512", password, self.salt, self.iterations, _DIGEST_SIZE
        )


class VerificationCache:
    """
    A bounded memory of successful verifications, so that a device that sends
    one HTTP request per message pays for PBKDF2 once, not per message.

    It maps C{(user, HMAC-SHA256 of the password under a random key of this
    cache)} to the hash text the password was verified against; the plain
    password is never stored. An entry only counts while the user's current
    hash is that same text, so a changed password file is never fooled by it.
    The least recently used entry goes when C{maxsize} is reached. Safe to use
    from several threads.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._key = os.urandom(32)
        self._entries: collections.OrderedDict[tuple[str, bytes], str] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, user: str, password: bytes) -> tuple[str, bytes]:
        """The cache key for C{user} with C{password}."""
        return (user, hmac.digest(self._key, password, "sha256"))

    def verified(self, key: tuple[str, bytes], hash_text: str) -> bool:
        """Whether C{key} was verified against exactly C{hash_text}."""
        with self._lock:
            known = self._entries.get(key)
            if known is None:
                return False
            self._entries.move_to_end(key)
        return hmac.compare_digest(known, hash_text)

    def add(self, key: tuple[str, bytes], hash_text: str) -> None:
        """Remember that C{key} was verified against C{hash_text}."""
        with self._lock:
            self._entries[key] = hash_text
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every verification."""
        with self._lock:
            self._entries.clear()


# Shared by every PasswordFile, so that a reload keeps the verifications whose
# hashes did not change.
_shared_cache = VerificationCache()


class PasswordFile:
    """
    Users and their password hashes, as C{mosquitto_passwd} writes them;
    immutable once parsed (to reload, load a new one and swap). Made by
    L{parse} or L{load}.
    """

    def __init__(
        self,
        hashes: dict[str, _Hash],
        name: str = "passwords",
        cache: VerificationCache | None = None,
    ) -> None:
        self.name = name
        self._hashes = dict(hashes)
        self._cache = _shared_cache if cache is None else cache
        self._decoy = _decoy(self._hashes.values())

    @classmethod
    def parse(
        cls,
        text: str,
        name: str = "passwords",
        cache: VerificationCache | None = None,
    ) -> PasswordFile:
        """
        Parse the text of a password file: lines C{user:$7$iterations$salt$hash}
        or C{user:$6$salt$hash}; blank lines and lines starting with C{#} are
        skipped, and blanks around the user name and the hash are ignored, as
        Mosquitto does.

        Where Mosquitto logs a bad line and drops it, this refuses the whole file,
        so a reload with a typo keeps the old file in force.

        @param name: the file's name for error messages.
        @param cache: where successful verifications are remembered (by default
            one cache shared by every L{PasswordFile} of the process).
        @raise FileError: for any malformed or duplicate line, naming
            the line but never its password or hash.
        """
        hashes: dict[str, _Hash] = {}
        first_line: dict[str, int] = {}
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.strip(_BLANKS)
            if not line or line.startswith("#"):
                continue
            user, colon, hash_text = line.partition(":")
            user = user.strip(_BLANKS)
            if not colon:
                raise FileError(name, number, "expected user:hash")
            if not user:
                raise FileError(name, number, "empty user name")
            if user in first_line:
                raise FileError(
                    name,
                    number,
                    f"user {user!r} again (first on line {first_line[user]})",
                )
            try:
                hashes[user] = _parse_hash(hash_text.strip(_BLANKS))
            except _BadHash as e:
                raise FileError(name, number, f"user {user!r}: {e}") from None
            first_line[user] = number
        return cls(hashes, name, cache)

    @classmethod
    def load(cls, path: str, cache: VerificationCache | None = None) -> PasswordFile:
        """
        Read and parse the password file at C{path} (see L{parse}); error
        messages name C{path}.

        @raise FileError: if it cannot be read, is not UTF-8, or does not
            parse.
        """
        text = read_text(path)
        return cls.parse(text, path, cache)

    def __contains__(self, user: str) -> bool:
        """Whether C{user} has a password in this file."""
        return user in self._hashes

    def __len__(self) -> int:
        """The number of users."""
        return len(self._hashes)

    def __repr__(self) -> str:
        return f"<PasswordFile {self.name!r}: {len(self._hashes)} users>"

    def verify(self, user: str, password: bytes) -> bool:
        """
        Whether C{password} is C{user}'s password.

        The digests are compared in constant time. An unknown user costs the same
        hash computation as a known one with a wrong password, so the time taken
        does not reveal which users exist. A successful verification is
        remembered (see L{VerificationCache}), so repeating it is cheap.
        """
        known = self._hashes.get(user)
        hashed = self._decoy if known is None else known
        key = self._cache.key(user, password)
        # The decoy is never added, so a hit is always for a known user.
        if self._cache.verified(key, hashed.text):
            return True
        matched = hmac.compare_digest(hashed.compute(password), hashed.digest)
        if not matched or known is None:
            return False
        self._cache.add(key, known.text)
        return True


class _BadHash(Exception):
    """The reason a hash does not parse; never contains the hash."""


def _parse_hash(text: str) -> _Hash:
    fields = text.split("$")
    if len(fields) < 3 or fields[0]:
        raise _BadHash("not a $6$ or $7$ hash (make one with mosquitto_passwd)")
    kind = fields[1]
    iterations: int | None = None
    if kind == "7" and len(fields) == 5:
        iterations_text, salt_text, digest_text = fields[2:]
        if not (iterations_text.isascii() and iterations_text.isdigit()):
            raise _BadHash("$7$ iteration count is not a number")
        iterations = int(iterations_text)
        if not 1 <= iterations <= _MAX_ITERATIONS:
            raise _BadHash(f"$7$ iteration count out of range 1..{_MAX_ITERATIONS}")
    elif kind == "6" and len(fields) == 4:
        salt_text, digest_text = fields[2:]
    elif kind in ("6", "7"):
        raise _BadHash(f"malformed ${kind}$ hash")
    elif _HASH_TYPE.fullmatch(kind):
        raise _BadHash(f"unknown hash type ${kind}$")
    else:
        raise _BadHash("not a $6$ or $7$ hash (make one with mosquitto_passwd)")
    salt = _base64(salt_text)
    if not salt:
        raise _BadHash("salt is not base64")
    digest = _base64(digest_text)
    if digest is None or len(digest) != _DIGEST_SIZE:
        raise _BadHash(f"hash is not {_DIGEST_SIZE} bytes in base64")
    return _Hash(text, iterations, salt, digest)


def _base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


def _decoy(hashes: Iterable[_Hash]) -> _Hash:
    """
    A hash no password matches, of the file's most common kind, that an unknown
    user is checked against so that it takes as long as a known one.
    """
    kinds = collections.Counter(h.iterations for h in hashes)
    iterations = kinds.most_common(1)[0][0] if kinds else _MOSQUITTO_ITERATIONS
    salt, digest = os.urandom(12), os.urandom(_DIGEST_SIZE)
    text = "$decoy$" + base64.b64encode(salt + digest).decode("ascii")
    return _Hash(text, iterations, salt, digest)
