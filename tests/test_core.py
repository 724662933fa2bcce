"""
The one message path (gateway.core): authorize, rate-limit, publish, in that
order, whichever API the message came by; a refused message reaches no broker.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.identify import Authenticator, Claim
from gateway.config import LimitsConfig
from gateway.core import Gateway
from gateway.errors import Code, GatewayError
from gateway.limits import RateLimiter
from gateway.model import Connection, Identity, Message, PublishResult
from tests.fakes import FakePublisher, TopicACL

DEVICE = Identity(client_id="dev-1")


class GatewayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.publisher = FakePublisher()

    def gateway(self, **limits: float) -> Gateway:
        return Gateway(
            self.publisher,
            Authenticator(None, allow_anonymous=True),
            self.clock,
            TopicACL(lambda topic: topic == "ok"),
            limiter=RateLimiter(LimitsConfig(**limits)) if limits else None,  # type: ignore[arg-type]
        )

    def publish(self, core: Gateway, topic: str = "ok") -> Deferred[PublishResult]:
        (sent,) = core.publish_each(DEVICE, [Message(topic, b"x")])
        return sent

    def refusal(self, d: Deferred[PublishResult]) -> GatewayError:
        error: GatewayError = self.failureResultOf(d, GatewayError).value
        return error

    def test_existing_call_sites(self) -> None:
        """The four positional arguments of tap.py still build a gateway, with
        no rate limit."""
        core = Gateway(
            self.publisher, Authenticator(None, allow_anonymous=True), self.clock
        )
        self.assertIsNone(core.limiter)
        for _ in range(100):
            self.successResultOf(self.publish(core, "any"))
        self.assertEqual(len(self.publisher.calls), 100)

    def test_rate_limited(self) -> None:
        """Over [limits] rate/burst: 429 RateLimited with Retry-After, and nothing
        published; after the wait, messages pass again."""
        core = self.gateway(rate=2, burst=2)
        self.successResultOf(self.publish(core))
        self.successResultOf(self.publish(core))
        error = self.refusal(self.publish(core))
        self.assertEqual(
            (error.status, error.code, error.retry_after), (429, Code.RateLimited, 1)
        )
        self.assertEqual(len(self.publisher.calls), 2)
        self.clock.advance(0.5)
        self.successResultOf(self.publish(core))

    def test_client_limit_by_client_id(self) -> None:
        """The per-client limit counts the sender's client id, whichever API or
        connection the message came by."""
        core = self.gateway(rate=0, burst=0, client_rate=1, client_burst=1)
        self.successResultOf(
            core.publish_each(
                Identity("dev-1", connection=Connection("c1")), [Message("ok", b"")]
            )[0]
        )
        error = self.refusal(
            core.publish_each(
                Identity("dev-1", connection=Connection("c2")), [Message("ok", b"")]
            )[0]
        )
        self.assertEqual(error.retry_after, 1)
        self.successResultOf(
            core.publish_each(Identity("dev-2"), [Message("ok", b"")])[0]
        )

    def test_authorized_first(self) -> None:
        """A message the ACL refuses is a 403 and uses up no rate."""
        core = self.gateway(rate=1, burst=1)
        for _ in range(5):
            self.assertEqual(self.refusal(self.publish(core, "denied")).status, 403)
        self.successResultOf(self.publish(core))

    def test_limiter_swappable(self) -> None:
        """Replacing the limiter (SIGHUP) applies the new limits at once."""
        core = self.gateway(rate=1, burst=1)
        self.successResultOf(self.publish(core))
        self.refusal(self.publish(core))
        core.limiter = RateLimiter(LimitsConfig(rate=100, burst=5))
        for _ in range(5):
            self.successResultOf(self.publish(core))
        self.refusal(self.publish(core))
        core.limiter = None
        self.successResultOf(self.publish(core))

    def test_identify_uses_clock(self) -> None:
        """identify hands the claim and the clock's time to the authenticator."""
        seen: list[float] = []

        class Recording(Authenticator):
            def authenticate(self, claim: Claim, now: float) -> Identity:
                seen.append(now)
                return super().authenticate(claim, now)

        core = Gateway(
            self.publisher, Recording(None, allow_anonymous=True), self.clock
        )
        identity = core.identify(Claim(connection=Connection("abc")))
        self.assertEqual((identity.client_id, seen), ("http-abc", [1000.0]))
