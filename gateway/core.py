# -*- test-case-name: tests.test_core -*-
"""
The one path every message takes, whichever HTTP API it came in by:
authenticate, authorize, rate-limit, publish.

Nothing here knows HTTP: the API adapters hand over a L{Claim} and a L{Message} and
get back a L{PublishResult} or a L{GatewayError}.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.auth.identify import Authenticator, Claim
from gateway.errors import Code, GatewayError
from gateway.interfaces import IPublisher
from gateway.limits import RateLimiter
from gateway.model import Identity, Message, Proof, PublishResult


class TopicPolicy(Protocol):
    """What authorization needs of an ACL."""

    def may_publish(self, topic: str, username: str | None, client_id: str) -> bool:
        """Whether the sender may publish to C{topic}."""


class Gateway:
    """
    The core.

    @ivar authenticator: who the sender is.
    @ivar acl: where the sender may publish (swappable), or C{None} for anywhere.
    @ivar limiter: the message rate limits (swappable, e.g. on C{SIGHUP}), or
        C{None} for none.
    @ivar publisher: where accepted messages go.
    """

    def __init__(
        self,
        publisher: IPublisher,
        authenticator: Authenticator,
        clock: IReactorTime,
        acl: TopicPolicy | None = None,
        *,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.publisher = publisher
        self.authenticator = authenticator
        self.acl = acl
        self.limiter = limiter
        self._clock = clock

    def identify(self, claim: Claim) -> Identity:
        """
        The sender of a request.

        @raise GatewayError: 401, 403 or 429 (see L{Authenticator.authenticate}).
        """
        return self.authenticator.authenticate(claim, self._clock.seconds())

    def authorize(self, identity: Identity, message: Message) -> None:
        """
        @raise GatewayError: 403 when the ACL does not let the sender publish there.
        """
        acl = self.acl
        if acl is not None and not acl.may_publish(
            message.topic, identity.username, identity.client_id
        ):
            raise GatewayError(
                Code.Forbidden, f"not authorized to publish to {message.topic!r}"
            )

    def limit(self, identity: Identity) -> None:
        """
        Count one message of C{identity} against the rate limits.

        @raise GatewayError: 429 C{RateLimited} with C{Retry-After} when over.
        """
        limiter = self.limiter
        if limiter is not None:
            limiter.check(identity, self._clock.seconds())

    def publish(self, identity: Identity, message: Message) -> Deferred[PublishResult]:
        """
        Authorize C{message} for an identified sender, count it against the rate
        limits and send it.

        @return: fires with the broker's L{PublishResult}, or fails with a
            L{GatewayError}; nothing reaches the broker when authorization or the
            rate limits refuse it (and a refused message uses up no rate).
        """
        try:
            self.authorize(identity, message)
            self.limit(identity)
            sent = self.publisher.publish(message, identity)
        except GatewayError as e:
            return fail(e)
        if identity.proof is Proof.PASSWORD and not self.authenticator.check_passwords:
            sent.addErrback(self._count_refused_password, identity)
        return sent

    def _count_refused_password(self, failure: Failure, identity: Identity) -> Failure:
        # Broker mode: the broker checked the password; its refusals count against
        # the sender's address like the gateway's own.
        if isinstance(failure.value, GatewayError) and failure.value.status == 401:
            self.authenticator.record_failure(identity.peer, self._clock.seconds())
        return failure
