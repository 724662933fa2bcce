"""
Micro-measurements without a server: what checking a password costs, cold and
cached, and what the whole per-request path before publishing costs (parse the
request, read the claim, authenticate, authorize), in this process.

They show whether verifying a password could dominate the hot path: the
gateway's CPU time per request in the server runs is the yardstick.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

#: Each figure is the median of this many timings of a loop lasting about
#: L{LOOP_SECONDS}.
REPEATS = 7
LOOP_SECONDS = 0.2


@dataclass(frozen=True)
class Timing:
    """
    One micro-measurement.

    @ivar name: what was called.
    @ivar what: how, in a few words.
    @ivar us_per_call: microseconds per call (median of L{REPEATS} loops), or
        C{None} when it could not be measured.
    @ivar error: why not.
    """

    name: str
    what: str
    us_per_call: float | None
    error: str = ""


def time_call(call: Callable[[], object]) -> float:
    """Microseconds per C{call()}: the median of L{REPEATS} timed loops."""
    # Calibrate: as many calls as take about LOOP_SECONDS.
    number = 1
    while True:
        started = time.perf_counter()
        for _ in range(number):
            call()
        elapsed = time.perf_counter() - started
        if elapsed >= LOOP_SECONDS / 4:
            break
        number *= 4
    number = max(1, round(number * LOOP_SECONDS / max(elapsed, 1e-9)))
    results = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(number):
            call()
        results.append((time.perf_counter() - started) / number)
    return 1e6 * statistics.median(results)


def _measure(name: str, what: str, make: Callable[[], Callable[[], object]]) -> Timing:
    try:
        return Timing(name, what, time_call(make()))
    except Exception as e:  # the gateway's code is changing under the benchmark
        return Timing(name, what, None, f"{type(e).__name__}: {e}")


def run(password_file: Path, user: str, password: str) -> list[Timing]:
    """
    Measure password verification with the C{mosquitto_passwd} file
    C{password_file} (C{user} and its C{password}), and the request path.
    """
    from twisted.internet.task import Clock

    from gateway.auth.acl import ACL
    from gateway.auth.identify import Authenticator
    from gateway.auth.passwords import PasswordFile, VerificationCache
    from gateway.core import Gateway
    from gateway.interfaces import IPublisher
    from gateway.model import Connection, Peer
    from gateway.web.messages import HTTPRequest
    from gateway.web.topics import claim_of, parse_publish

    secret = password.encode()
    text = password_file.read_text()
    hash_kind = text.split(":", 1)[1].split("$")[1:3] if ":" in text else ["?", "?"]
    kind = f"${hash_kind[0]}$, {hash_kind[1]} iterations"
    timings = []

    def cold() -> Callable[[], object]:
        cache = VerificationCache()
        passwords = PasswordFile.parse(text, cache=cache)

        def call() -> object:
            cache.clear()
            assert passwords.verify(user, secret)
            return None

        return call

    def cached() -> Callable[[], object]:
        passwords = PasswordFile.parse(text, cache=VerificationCache())
        assert passwords.verify(user, secret)
        return lambda: passwords.verify(user, secret)

    def wrong() -> Callable[[], object]:
        passwords = PasswordFile.parse(text, cache=VerificationCache())
        return lambda: passwords.verify(user, b"not the password")

    def unknown() -> Callable[[], object]:
        passwords = PasswordFile.parse(text, cache=VerificationCache())
        return lambda: passwords.verify("nobody", secret)

    timings += [
        _measure(
            "PasswordFile.verify, cold",
            f"right password, cache cleared before every call ({kind}: PBKDF2)",
            cold,
        ),
        _measure(
            "PasswordFile.verify, wrong password",
            "never cached: every failed attempt pays PBKDF2",
            wrong,
        ),
        _measure(
            "PasswordFile.verify, unknown user",
            "checked against a decoy hash of the same kind",
            unknown,
        ),
        _measure(
            "PasswordFile.verify, cached",
            "right password, verified once before (VerificationCache hit)",
            cached,
        ),
    ]

    import base64

    authorization = b"Basic " + base64.b64encode(f"{user}:{password}".encode())
    acl = ACL.parse(f"user {user}\ntopic write bench/#\n")

    def request(basic: bool) -> HTTPRequest:
        headers = [(b"host", b"127.0.0.1:8080")]
        headers.append((b"content-type", b"application/octet-stream"))
        if basic:
            headers.append((b"authorization", authorization))
        return HTTPRequest(
            method="POST",
            path=b"/topics/bench/load",
            query=b"qos=1",
            headers=tuple(headers),
            body=b"001:" + b"0" * 60,
            connection=Connection("1", Peer("127.0.0.1", 40000)),
            keep_alive=True,
        )

    def path(basic: bool, cache_hits: bool) -> Callable[[], Callable[[], object]]:
        def make() -> Callable[[], object]:
            cache = VerificationCache()
            passwords = PasswordFile.parse(text, cache=cache) if basic else None
            authenticator = Authenticator(passwords, allow_anonymous=not basic)
            core = Gateway(
                cast("IPublisher", object()),
                authenticator,
                Clock(),
                acl if basic else None,
            )
            the_request = request(basic)

            def call() -> object:
                if not cache_hits:
                    cache.clear()
                asked = parse_publish(the_request)
                identity = core.identify(claim_of(the_request, asked))
                core.authorize(identity, asked.message)
                return identity

            call()
            return call

        return make

    timings += [
        _measure(
            "request path, anonymous",
            "parse_publish + claim_of + identify + authorize (no ACL): "
            "the anonymous scenario",
            path(basic=False, cache_hits=True),
        ),
        _measure(
            "request path, Basic, cached",
            "the same with Basic credentials (cache hit) and a two-line ACL "
            f"(user {user} / topic write bench/#)",
            path(basic=True, cache_hits=True),
        ),
        _measure(
            "request path, Basic, cold",
            "the same with the cache cleared before every call",
            path(basic=True, cache_hits=False),
        ),
    ]
    return timings
