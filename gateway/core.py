# -*- test-case-name: tests.test_core -*-
"""
The one path every message takes, whichever HTTP API it came in by:
authenticate, authorize, rate-limit, publish.

Nothing here knows HTTP: the API adapters hand over a L{Claim} and a L{Message} and
get back a L{PublishResult} or a L{GatewayError}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime

from gateway.auth.identify import Authenticator, Claim
from gateway.errors import Code, GatewayError
from gateway.interfaces import IPublisher
from gateway.limits import RateLimiter
from gateway.model import Identity, Message, Peer, PublishResult

T = TypeVar("T")


class TopicPolicy(Protocol):
    """What authorization needs of an ACL."""

    def may_publish(self, topic: str, username: str | None, client_id: str) -> bool:
        """Whether the sender may publish to C{topic}."""


@attrs.frozen
class Submitted:
    """
    What the front door made of one request: who sent it, and for each of its
    messages a L{Deferred} firing with the broker's L{PublishResult} or failing
    with a L{GatewayError}.
    """

    identity: Identity
    results: list[Deferred[PublishResult]]


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

    def submit(
        self, claim: Claim, messages: Callable[[], Sequence[Message]]
    ) -> Submitted:
        """
        The front door of every API: identify the sender of C{claim} once, then
        read its C{messages} (only then: the body of a sender who cannot be
        identified is never parsed), and authorize, rate-limit and publish each
        of them for it (L{publish_each}).

        @raise GatewayError: 401, 403 or 429 when the sender cannot be identified
            (see L{identify}), or what C{messages} raises; nothing is published
            then.
        """
        identity = self.identify(claim)
        return Submitted(identity, self.publish_each(identity, messages()))

    def publish_each(
        self, identity: Identity, messages: Sequence[Message]
    ) -> list[Deferred[PublishResult]]:
        """
        Authorize each message of one request of a sender identified once (by
        L{identify}), count it against the rate limits and send it.

        @return: for each message, a L{Deferred} that fires with the broker's
            L{PublishResult} or fails with a L{GatewayError}; nothing reaches the
            broker when authorization or the rate limits refuse a message (and a
            refused message uses up no rate). In broker mode the broker's refusal
            of the password counts once for the request, however many of its
            messages it refuses.
        """
        refused = self.authenticator.refusal_counter(identity, self._clock.seconds)
        sent = [self._send(identity, message) for message in messages]
        if refused is not None:
            for d in sent:
                d.addErrback(refused)
        return sent

    def _send(self, identity: Identity, message: Message) -> Deferred[PublishResult]:
        try:
            self.authorize(identity, message)
            self.limit(identity)
            return self.publisher.publish(message, identity)
        except GatewayError as e:
            return fail(e)

    def attempt(self, peer: Peer, now: float, check: Callable[[], T]) -> T:
        """
        An API's own authentication of C{peer} at C{now} (e.g. a signature):
        refused while the address has failed too often, counted when it fails
        (see L{Authenticator.attempt}).
        """
        return self.authenticator.attempt(peer, now, check)
