# -*- test-case-name: tests.auth.test_identify -*-
"""
Who sent a request: a verified client certificate, HTTP Basic
credentials checked against a mosquitto password file, or nobody.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import attrs
from twisted.python.failure import Failure

from gateway.errors import Code, GatewayError
from gateway.limits import Buckets, KeyedBuckets, retry_after
from gateway.model import Connection, Identity, Peer, Proof, no_connection
from gateway.mqtt.strings import string_problem

T = TypeVar("T")

#: Failed authentications per source address: this many at once ...
FAILURE_BURST = 5
#: ... then this many a second (one every 10 s).
FAILURE_RATE = 0.1


class PasswordChecker(Protocol):
    """What authentication needs of a password file."""

    def verify(self, user: str, password: bytes) -> bool:
        """Whether C{password} is C{user}'s."""


@attrs.frozen
class Claim:
    """
    What a request presents about its sender.

    @ivar basic: the user name and password of an C{Authorization: Basic} header.
    @ivar access_key: an AccessKeyId whose signature the API has verified, and its
        secret (the password of broker mode).
    @ivar certificate_cn: the subject CN of a verified client certificate.
    @ivar client_id: the C{client_id} parameter.
    @ivar username: the C{username} parameter.
    @ivar connection: the handle of the HTTP connection the request came on
        (its id names default client ids; its peer is counted by failed logins).
    """

    basic: tuple[str, bytes] | None = attrs.field(default=None, repr=False)
    access_key: tuple[str, bytes] | None = attrs.field(default=None, repr=False)
    certificate_cn: str | None = None
    client_id: str | None = None
    username: str | None = None
    connection: Connection = attrs.field(factory=no_connection, eq=False, repr=False)

    def identity(self, **fields: Any) -> Identity:
        """An identity for this claim's sender: C{fields}, and the claim's client
        id (or the connection's default one) and connection."""
        fields.setdefault("client_id", self.client_id or f"http-{self.connection.id}")
        return Identity(connection=self.connection, **fields)


def parse_basic(header: bytes | None) -> tuple[str, bytes] | None:
    """
    The user name and password of an C{Authorization: Basic ...} header value, or
    C{None} when there is no such header.

    @raise GatewayError: 401 for a Basic header that cannot be decoded.
    """
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        raise unauthorized("only HTTP Basic authentication is supported")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
        user, colon, password = decoded.partition(b":")
        if not colon:
            raise ValueError
        name = user.decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError too
        raise unauthorized("malformed Basic credentials") from None
    _check_string("username", "the Basic user name", name)
    return name, password


def _check_string(parameter: str, what: str, text: str) -> None:
    """
    Refuse an identity string that cannot travel as an MQTT string (it becomes
    a user property, or the CONNECT of broker mode).

    @raise GatewayError: 400 C{InvalidParameter} naming C{parameter}.
    """
    problem = string_problem(text)
    if problem is not None:
        raise GatewayError(
            Code.InvalidParameter, f"{what} {problem}", parameter=parameter
        )


def unauthorized(message: str) -> GatewayError:
    """A 401 (which asks for Basic credentials)."""
    return GatewayError(Code.Unauthorized, message)


class Authenticator:
    """
    Turns a L{Claim} into an L{Identity}, or refuses it; the one keeper of failed
    authentications per source address (its own, an API's signature checks through
    L{attempt}, the broker's in broker mode through L{refusal_counter}).

    @ivar passwords: the current password file (swappable), or C{None}.
    @ivar check_passwords: C{False} in broker mode, where the broker checks them.
    @ivar allow_anonymous: whether a request with no credentials may publish.
    @ivar failures: the failed authentications per address: local buckets of
        L{FAILURE_BURST} and L{FAILURE_RATE} unless given (e.g. shared by a
        fleet, L{gateway.cluster.logins}).
    """

    def __init__(
        self,
        passwords: PasswordChecker | None,
        *,
        allow_anonymous: bool,
        check_passwords: bool = True,
        failures: Buckets | None = None,
    ) -> None:
        self.passwords = passwords
        self.allow_anonymous = allow_anonymous
        self.check_passwords = check_passwords
        self.failures: Buckets = (
            KeyedBuckets(rate=FAILURE_RATE, burst=FAILURE_BURST)
            if failures is None
            else failures
        )

    def authenticate(self, claim: Claim, now: float) -> Identity:
        """
        The sender's identity.

        @raise GatewayError: 401 for missing or wrong credentials, 403 for a
            certificate holder claiming another client id or user, 429 when the
            source address has failed too often.
        """
        if claim.access_key is not None:
            key, secret = claim.access_key
            return claim.identity(
                client_id=key, username=key, proof=Proof.ACCESS_KEY, password=secret
            )
        if claim.certificate_cn is not None:
            return self._certificate(claim)
        if claim.basic is not None:
            return self._password(claim, now)
        if claim.username is not None:
            raise unauthorized("a username needs a password (HTTP Basic)")
        if not self.allow_anonymous:
            raise unauthorized("credentials are required")
        return claim.identity()

    def _certificate(self, claim: Claim) -> Identity:
        cn = claim.certificate_cn
        assert cn is not None
        _check_string("client_id", "the certificate's CN", cn)
        for name, value in (
            ("client_id", claim.client_id),
            ("username", claim.username),
        ):
            if value is not None and value != cn:
                raise GatewayError(
                    Code.Forbidden,
                    f"{name} {value!r} differs from the certificate's CN {cn!r}",
                    parameter=name,
                )
        return claim.identity(client_id=cn, username=cn, proof=Proof.CERTIFICATE)

    def attempt(self, peer: Peer, now: float, check: Callable[[], T]) -> T:
        """
        Run C{check}, an authentication of C{peer}, unless its address has failed
        too often; a C{GatewayError} it raises counts as a failed authentication
        unless its C{failed_authentication} is false (e.g. a wrong clock).

        @return: what C{check} returns.
        @raise GatewayError: 429 while the address has failed too often, or what
            C{check} raises.
        """
        self.guard(peer, now)
        try:
            return check()
        except GatewayError as e:
            if getattr(e, "failed_authentication", True):
                self.record_failure(peer, now)
            raise

    def refusal_counter(
        self, identity: Identity, clock: Callable[[], float]
    ) -> Callable[[Failure], Failure] | None:
        """
        An errback for every message of one request of C{identity}: in broker mode
        the broker checks passwords, and its first 401 for the request counts as
        one failed authentication of the sender's address (however many of the
        request's messages it refuses); C{None} when the gateway checks them.
        """
        if identity.proof is not Proof.PASSWORD or self.check_passwords:
            return None
        counted = False

        def count(failure: Failure) -> Failure:
            nonlocal counted
            error = failure.value
            if not counted and isinstance(error, GatewayError) and error.status == 401:
                counted = True
                self.record_failure(identity.connection.peer, clock())
            return failure

        return count

    def guard(self, peer: Peer, now: float) -> None:
        """
        Refuse an address that has failed to authenticate too often.

        @raise GatewayError: 429 with the wait until its next attempt.
        """
        wait = self.failures.wait(peer.host, now)
        if wait:
            raise GatewayError(
                Code.RateLimited,
                "too many failed authentications from this address",
                retry_after=retry_after(wait),
            )

    def record_failure(self, peer: Peer, now: float) -> None:
        """Count a failed authentication from C{peer}'s address."""
        self.failures.take(peer.host, now)

    def _password(self, claim: Claim, now: float) -> Identity:
        assert claim.basic is not None
        basic_user, password = claim.basic
        user = claim.username if claim.username is not None else basic_user
        # In broker mode the broker checks the password; the core reports its
        # refusals (see refusal_counter).
        self.attempt(claim.connection.peer, now, lambda: self._verify(user, password))
        return claim.identity(username=user, proof=Proof.PASSWORD, password=password)

    def _verify(self, user: str, password: bytes) -> None:
        if self.check_passwords and (
            self.passwords is None or not self.passwords.verify(user, password)
        ):
            raise unauthorized("wrong user name or password")
