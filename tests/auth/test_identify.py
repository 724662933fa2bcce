"""
Who may publish: certificates, Basic credentials with the
effective-user rule, anonymous access, and limits on failed attempts.
"""

from __future__ import annotations

import base64

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.identify import Authenticator, Claim, parse_basic, unauthorized
from gateway.core import Gateway
from gateway.errors import REALM, Code, GatewayError
from gateway.model import Connection, Identity, Message, Peer, Proof
from tests.fakes import FakePublisher, Passwords, fails


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def _from(host: str, port: int) -> Connection:
    """The handle of a connection from C{host:port}."""
    return Connection("c", Peer(host, port))


class ParseBasicTests(SynchronousTestCase):
    def test_seed_header(self) -> None:
        """The seed's header is user0 / secret0."""
        self.assertEqual(
            parse_basic(b"Basic dXNlcjA6c2VjcmV0MA=="), ("user0", b"secret0")
        )
        self.assertEqual(parse_basic(b"basic " + basic("a", "b:c")[6:]), ("a", b"b:c"))
        self.assertIsNone(parse_basic(None))

    def test_malformed(self) -> None:
        """Undecodable or non-Basic headers are a 401 asking for Basic."""
        for header in (
            b"Bearer x",
            b"Basic !!!",
            b"Basic " + base64.b64encode(b"nocolon"),
        ):
            with self.assertRaises(GatewayError) as e:
                parse_basic(header)
            self.assertEqual(e.exception.status, 401)
            self.assertIn(("WWW-Authenticate", REALM), e.exception.response_headers())

    def test_user_name_not_an_mqtt_string(self) -> None:
        """A Basic user name a strict broker would disconnect on (it travels as
        the http-username property, or in broker mode's CONNECT) is a 400 naming
        the username."""
        for user in ("a\x00b", "a\x01b", "a\x7fb", "a\ufffeb", "x" * 65536):
            header = b"Basic " + base64.b64encode(user.encode() + b":pw")
            with self.assertRaises(GatewayError) as e:
                parse_basic(header)
            self.assertEqual(
                (e.exception.status, e.exception.code, e.exception.parameter),
                (400, Code.InvalidParameter, "username"),
            )


class AuthenticatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.passwords = Passwords(user0="secret0", alice="wonder")
        self.auth = Authenticator(self.passwords, allow_anonymous=False)

    def refused(self, claim: Claim, status: int, now: float = 0) -> GatewayError:
        with self.assertRaises(GatewayError) as e:
            self.auth.authenticate(claim, now)
        self.assertEqual(e.exception.status, status, e.exception.message)
        error: GatewayError = e.exception
        return error

    def test_basic(self) -> None:
        """Right Basic credentials: the user, a default client id, PASSWORD proof."""
        identity = self.auth.authenticate(
            Claim(
                basic=("user0", b"secret0"),
                connection=Connection("c1", Peer("10.0.0.1", 5)),
            ),
            0,
        )
        self.assertEqual(
            identity,
            Identity("http-c1", "user0", Proof.PASSWORD, b"secret0"),
        )
        self.assertEqual(identity.connection.peer, Peer("10.0.0.1", 5))

    def test_wrong_password(self) -> None:
        """A wrong password or unknown user is 401 with WWW-Authenticate."""
        error = self.refused(Claim(basic=("user0", b"nope")), 401)
        self.assertEqual(error.code, Code.Unauthorized)
        self.refused(Claim(basic=("mallory", b"secret0")), 401)

    def test_username_parameter_needs_its_own_password(self) -> None:
        """username= names the effective user; the password must be that user's,
        so one user cannot act as another."""
        self.refused(Claim(basic=("user0", b"secret0"), username="alice"), 401)
        identity = self.auth.authenticate(
            Claim(basic=("user0", b"wonder"), username="alice"), 0
        )
        self.assertEqual(identity.username, "alice")
        self.refused(Claim(username="alice"), 401)

    def test_anonymous(self) -> None:
        """No credentials: 401 unless anonymous access is allowed."""
        self.refused(Claim(), 401)
        self.auth.allow_anonymous = True
        identity = self.auth.authenticate(
            Claim(client_id="dev", connection=Connection("", Peer("p", 1))), 0
        )
        self.assertEqual(identity, Identity("dev", None, Proof.ANONYMOUS))
        self.assertEqual(identity.connection.peer, Peer("p", 1))

    def test_certificate(self) -> None:
        """A verified certificate's CN is client id and user name; a different
        client_id or username parameter is 403."""
        identity = self.auth.authenticate(Claim(certificate_cn="device-42"), 0)
        self.assertEqual(
            (identity.client_id, identity.username, identity.proof),
            ("device-42", "device-42", Proof.CERTIFICATE),
        )
        self.auth.authenticate(
            Claim(certificate_cn="device-42", client_id="device-42"), 0
        )
        self.refused(Claim(certificate_cn="device-42", client_id="device-43"), 403)
        self.refused(Claim(certificate_cn="device-42", username="root"), 403)
        # A CN a strict broker would refuse as a client id.
        error = self.refused(Claim(certificate_cn="device\x0a42"), 400)
        self.assertEqual(error.parameter, "client_id")

    def test_failed_attempts_limited(self) -> None:
        """After five failures from one address, even right credentials get 429
        until the bucket refills; other addresses are not affected."""
        for _ in range(5):
            self.refused(
                Claim(basic=("user0", b"x"), connection=_from("10.0.0.9", 1)), 401
            )
        error = self.refused(
            Claim(basic=("user0", b"secret0"), connection=_from("10.0.0.9", 2)), 429
        )
        self.assertEqual(error.retry_after, 10)
        self.auth.authenticate(
            Claim(basic=("user0", b"secret0"), connection=_from("10.0.0.8", 1)), 0
        )
        self.auth.authenticate(
            Claim(basic=("user0", b"secret0"), connection=_from("10.0.0.9", 3)), 10
        )

    def test_access_key(self) -> None:
        """A verified AccessKeyId is client id and user name, ACCESS_KEY proof,
        its secret the password (for broker mode)."""
        identity = self.auth.authenticate(
            Claim(
                access_key=("LTAI5t", b"s3cret"),
                connection=Connection("c1", Peer("p", 1)),
            ),
            0,
        )
        self.assertEqual(
            identity,
            Identity("LTAI5t", "LTAI5t", Proof.ACCESS_KEY, b"s3cret"),
        )
        self.assertEqual(
            (identity.connection.id, identity.connection.peer), ("c1", Peer("p", 1))
        )

    def test_attempt(self) -> None:
        """An API's own check counts its failures like wrong passwords, except
        those it says are not failed authentications; five, then 429."""

        class Clockless(GatewayError):
            failed_authentication = False

        def fails(error: GatewayError) -> None:
            raise error

        peer = Peer("10.0.0.7", 1)
        self.assertEqual(self.auth.attempt(peer, 0, lambda: "key"), "key")
        for _ in range(3):
            with self.assertRaises(Clockless):
                self.auth.attempt(
                    peer, 0, lambda: fails(Clockless(Code.Unauthorized, "clock"))
                )
        for _ in range(5):
            with self.assertRaises(GatewayError) as e:
                self.auth.attempt(peer, 0, lambda: fails(unauthorized("no")))
            self.assertEqual(e.exception.status, 401)
        with self.assertRaises(GatewayError) as e:
            self.auth.attempt(peer, 0, lambda: "key")
        self.assertEqual(e.exception.status, 429)

    def test_broker_checks_passwords(self) -> None:
        """In broker mode the password is passed on unchecked."""
        auth = Authenticator(None, allow_anonymous=False, check_passwords=False)
        identity = auth.authenticate(Claim(basic=("bob", b"pw")), 0)
        self.assertEqual((identity.username, identity.password), ("bob", b"pw"))


class BrokerModeFailureTests(SynchronousTestCase):
    def setUp(self) -> None:
        auth = Authenticator(None, allow_anonymous=False, check_passwords=False)
        refusing = FakePublisher(fails(GatewayError(Code.Unauthorized, "bad password")))
        self.core = Gateway(refusing, auth, Clock())
        self.claim = Claim(basic=("bob", b"guess"), connection=_from("10.0.0.5", 1))

    def assertGuarded(self) -> None:
        with self.assertRaises(GatewayError) as e:
            self.core.identify(self.claim)
        self.assertEqual(e.exception.status, 429)

    def test_broker_refusals_count(self) -> None:
        """In broker mode the broker's 401s count as failed authentications of the
        sender's address: after five, the gateway answers 429 itself."""
        for _ in range(5):
            (d,) = self.core.submit(self.claim, lambda: [Message("t", b"")]).results
            self.failureResultOf(d, GatewayError)
        self.assertGuarded()

    def test_batch_counts_once(self) -> None:
        """A request of five messages the broker refuses is one failed
        authentication, not five: four more requests are refused by the broker
        before the gateway answers 429."""
        identity = self.core.identify(self.claim)
        batch = self.core.publish_each(identity, [Message("t", b"")] * 5)
        for d in batch:
            self.failureResultOf(d, GatewayError)
        for _ in range(4):
            (d,) = self.core.submit(self.claim, lambda: [Message("t", b"")]).results
            self.assertEqual(self.failureResultOf(d, GatewayError).value.status, 401)
        self.assertGuarded()
