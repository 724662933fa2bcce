"""
HTTPS end to end: devices with certificates, curl as the client,
the assembled gateway, a real Mosquitto and a paho subscriber.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import TestCase

from tests.brokers import Mosquitto, Subscriber, free_port
from tests.certs import PKI, make_pki
from tests.gateway import CurlResult, RunningGateway, curl, json_post, password_file

SEED_DATA = '{ "message": "Hello, world" }'
ACL = """\
user user0
topic write home

pattern write home
pattern write devices/%c/#
"""


class HTTPSTestCase(TestCase):
    timeout = 60
    client_cert = "optional"

    async def start(self) -> None:
        self.pki: PKI = make_pki()
        self.addCleanup(self.pki.remove)
        self.broker = Mosquitto()
        self.addCleanup(self.broker.stop)
        await self.broker.start()
        acl = self.pki.write("acl", ACL.encode())
        self.tls_port = free_port()
        self.gateway = RunningGateway(
            f'[mqtt]\nbrokers = ["mqtt://127.0.0.1:{self.broker.port}"]\n'
            "publish_timeout = 2\n"
            '[log]\naccess = ""\n'
            f'[tls]\nlisten = ["tcp:{self.tls_port}:interface=127.0.0.1"]\n'
            f'cert = "{self.pki.server_chain}"\nkey = "{self.pki.server_key}"\n'
            f'client_ca = "{self.pki.ca}"\ncrl = "{self.pki.crl}"\n'
            f'client_cert = "{self.client_cert}"\n'
            f'[auth]\npassword_file = "{password_file(user0="secret0")}"\n'
            f'acl_file = "{acl}"\n'
        )
        self.addCleanup(self.gateway.stop)
        await self.gateway.start()
        self.subscriber = Subscriber("127.0.0.1", self.broker.port, "#")
        self.addCleanup(self.subscriber.stop)
        await self.subscriber.start()

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return ensureDeferred(self.start())

    def url(self, topic: str = "home", query: str = "qos=1") -> str:
        return f"https://127.0.0.1:{self.tls_port}/topics/{topic}?{query}"

    def device(
        self, *args: str, cert: str | None = None, key: str | None = None
    ) -> Deferred[CurlResult]:
        """curl as the seed's device: the CA, the device's chain and PKCS#8 key."""
        return curl(
            "--tlsv1.2",
            "--cacert",
            self.pki.ca,
            "--cert",
            cert or self.pki.client_chain,
            "--key",
            key or self.pki.client_key,
            *args,
        )

    async def assertNothingPublished(self) -> None:
        # A marker published afterwards is the first message to arrive.
        marker = await curl(
            "--cacert",
            self.pki.ca,
            "-u",
            "user0:secret0",
            "-X",
            "POST",
            "--data",
            "marker",
            self.url("home"),
        )
        self.assertEqual(marker.status, 200, marker.raw_head)
        [first] = await self.subscriber.wait_for(1)
        self.assertEqual(first.payload, b"marker")

    def assertNoResponse(self, result: CurlResult) -> None:
        self.assertNotEqual(result.exit_code, 0)
        self.assertEqual(result.status, 0, result.raw_head)


class DeviceCertificateTests(HTTPSTestCase):
    async def test_seed_example(self) -> None:
        """The seed's device command, verbatim but for host and port: 200, and the
        message's sender is the certificate's CN."""
        result = await self.device(
            "--verbose", "--request", "POST", "--data", SEED_DATA, self.url()
        )
        self.assertEqual(result.status, 200, result.raw_head)
        self.assertRegex(result.headers["x-message-id"], "^[0-9A-F]{32}$")
        [message] = await self.subscriber.wait_for(1)
        self.assertEqual(
            (message.topic, message.payload, message.qos),
            ("home", SEED_DATA.encode(), 1),
        )
        self.assertEqual(
            message.properties["UserProperty"],
            [("http-client-id", "device-42"), ("http-username", "device-42")],
        )

    async def test_http10(self) -> None:
        """The same over HTTP/1.0 (ALPN http/1.0)."""
        result = await self.device(
            "--http1.0", "-X", "POST", "--data", "old", self.url()
        )
        self.assertEqual(result.status, 200, result.raw_head)
        [message] = await self.subscriber.wait_for(1)
        self.assertEqual(message.payload, b"old")

    async def test_pattern_acl(self) -> None:
        """ACL patterns see the CN as %c; other topics are 403."""
        ok = await self.device(
            "-X", "POST", "--data", "t", self.url("devices/device-42/t")
        )
        self.assertEqual(ok.status, 200)
        denied = await self.device(
            "-X", "POST", "--data", "x", self.url("devices/device-7/t")
        )
        self.assertEqual(denied.status, 403)
        [message] = await self.subscriber.wait_for(1)
        self.assertEqual(message.topic, "devices/device-42/t")

    async def test_emqx_bulk(self) -> None:
        """The EMQX-compatible bulk publish over HTTPS with a device certificate:
        the CN is the sender for the ACL (one message allowed, one denied) and for
        the user properties."""
        items = [
            {"topic": "devices/device-42/a", "payload": "mine", "qos": 1},
            {"topic": "devices/device-7/a", "payload": "theirs", "qos": 1},
        ]
        result = await self.device(
            *json_post(items),
            f"https://127.0.0.1:{self.tls_port}/api/v5/publish/bulk",
        )
        self.assertEqual(result.status, 403, result.raw_head)
        body = json.loads(result.body)
        self.assertRegex(body[0]["id"], "^[0-9A-F]{32}$")
        self.assertEqual(body[1], {"reason_code": 135, "message": "not_authorized"})
        [message] = await self.subscriber.wait_for(1)
        self.assertEqual(
            (message.topic, message.payload), ("devices/device-42/a", b"mine")
        )
        self.assertEqual(
            message.properties["UserProperty"],
            [("http-client-id", "device-42"), ("http-username", "device-42")],
        )

    async def test_other_client_id(self) -> None:
        """A client_id other than the CN is 403 and publishes nothing."""
        result = await self.device(
            "-X", "POST", "--data", "x", self.url(query="client_id=device-43")
        )
        self.assertEqual(result.status, 403, result.raw_head)
        same = await self.device(
            "-X", "POST", "--data", "y", self.url(query="client_id=device-42")
        )
        self.assertEqual(same.status, 200)
        [message] = await self.subscriber.wait_for(1)
        self.assertEqual(message.payload, b"y")

    async def test_bad_certificates(self) -> None:
        """Untrusted, expired and revoked certificates never get a response."""
        for name, issued in (
            ("untrusted", self.pki.untrusted),
            ("expired", self.pki.expired),
            ("revoked", self.pki.revoked),
        ):
            cert, key = self.pki.write_issued(name, issued)
            result = await self.device(
                "-X", "POST", "--data", "x", self.url(), cert=cert, key=key
            )
            self.assertNoResponse(result)
        await self.assertNothingPublished()

    async def test_without_certificate(self) -> None:
        """client_cert = "optional": without a certificate, Basic credentials are
        needed (401 otherwise)."""
        anonymous = await curl(
            "--cacert", self.pki.ca, "-X", "POST", "--data", "x", self.url()
        )
        self.assertEqual(anonymous.status, 401)
        self.assertEqual(
            anonymous.headers["www-authenticate"], 'Basic realm="mqtt-http-gateway"'
        )
        await self.assertNothingPublished()


class RequiredCertificateTests(HTTPSTestCase):
    client_cert = "required"

    async def test_no_certificate_no_response(self) -> None:
        """client_cert = "required": a client without a certificate never gets an
        HTTP response, even with valid Basic credentials; a device does."""
        result = await curl(
            "--cacert",
            self.pki.ca,
            "-u",
            "user0:secret0",
            "-X",
            "POST",
            "--data",
            "x",
            self.url(),
        )
        self.assertNoResponse(result)
        ok = await self.device("-X", "POST", "--data", "y", self.url())
        self.assertEqual(ok.status, 200)
        [message] = await self.subscriber.wait_for(1)
        self.assertEqual(message.payload, b"y")
