"""
HTTPS with device certificates: real TLS handshakes with
curl and Python's C{ssl} as clients against L{tls_factory} on a real port, and
the one-line errors for unusable C{[tls]} files.
"""

from __future__ import annotations

import datetime
import re
import socket
import ssl
import subprocess
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, cast

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.auth.certs import ServerTLSOptions, load_server_options, tls_factory
from gateway.auth.device_identity import device_certificate_problem, peer_common_name
from gateway.auth.tls_files import TLSConfigError
from gateway.auth.tls_reload import ReloadableServerTLS
from gateway.config import TLSConfig
from gateway.errors import GatewayError
from gateway.web.messages import HTTPRequest, HTTPResponse
from gateway.web.server import HTTPServerFactory
from tests.certs import DEVICE, PKI, Issued, make_pki, make_root
from tests.gateway import CurlResult, curl

T = TypeVar("T")

REQUEST = (
    b"POST /topics/home?qos=1 HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n\r\nx"
)
KEEP_ALIVE_REQUEST = REQUEST.replace(b"HTTP/1.0", b"HTTP/1.1")


class Handler:
    """Answers 200 with the sender's CN (or C{-}) and HTTP version as headers."""

    def __init__(self) -> None:
        self.requests: list[HTTPRequest] = []

    def handle(self, request: HTTPRequest) -> HTTPResponse:
        self.requests.append(request)
        certificate = request.peer_certificate
        cn = peer_common_name(certificate) if certificate is not None else None
        return HTTPResponse(
            200,
            (("X-Client-CN", cn or "-"), ("X-HTTP-Version", request.http_version)),
        )

    def render_error(self, request: HTTPRequest, error: GatewayError) -> HTTPResponse:
        return HTTPResponse(error.status)

    def connection_closed(self, connection_id: str) -> None:
        pass


@attrs.frozen
class Answer:
    """What the Python client saw on one connection."""

    response: bytes
    version: str | None
    alpn: str | None
    reused: bool
    session: ssl.SSLSession | None

    @property
    def status_line(self) -> bytes:
        return self.response.split(b"\r\n", 1)[0]

    def header(self, name: bytes) -> bytes | None:
        for line in self.response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


def read_response(tls: ssl.SSLSocket) -> bytes:
    """One HTTP response with a Content-Length (or up to EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = None
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value)
    while length is None or len(body) < length:
        chunk = tls.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class PythonClient:
    """
    A blocking C{ssl} client for what curl cannot show: no ALPN or any ALPN,
    session resumption, one connection kept across a reload. Its methods run in
    a thread.
    """

    def __init__(
        self,
        pki: PKI,
        port: int,
        *,
        cert: tuple[str, str] | None = None,
        alpn: list[str] | None = None,
        tls_version: ssl.TLSVersion | None = None,
    ) -> None:
        self.port = port
        context = ssl.create_default_context(cafile=pki.ca)
        if cert is not None:
            context.load_cert_chain(*cert)
        if alpn is not None:
            context.set_alpn_protocols(alpn)
        if tls_version is not None:
            context.minimum_version = context.maximum_version = tls_version
        self.context = context
        self.tls: ssl.SSLSocket | None = None

    def connect(self, session: ssl.SSLSession | None = None) -> None:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        try:
            self.tls = self.context.wrap_socket(
                raw, server_hostname="127.0.0.1", session=session
            )
        except BaseException:
            raw.close()
            raise

    def request(self, data: bytes = REQUEST) -> Answer:
        tls = self.tls
        assert tls is not None
        tls.sendall(data)
        response = read_response(tls)
        return Answer(
            response,
            tls.version(),
            tls.selected_alpn_protocol(),
            bool(tls.session_reused),
            tls.session,
        )

    def close(self) -> None:
        if self.tls is not None:
            self.tls.close()
            self.tls = None

    def exchange(
        self, data: bytes = REQUEST, session: ssl.SSLSession | None = None
    ) -> Answer:
        """Connect, send C{data}, read the response, close."""
        self.connect(session)
        try:
            return self.request(data)
        finally:
            self.close()


def attempt(
    client: PythonClient, session: ssl.SSLSession | None = None
) -> Answer | Exception:
    """C{client.exchange()}, or the error it raised (an empty answer is one)."""
    try:
        answer = client.exchange(REQUEST, session)
    except (ssl.SSLError, OSError) as error:
        return error
    if not answer.response:
        return ConnectionError("closed without a response")
    return answer


def in_thread(f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
    return deferToThread(f, *args, **kwargs)


def tls_config(pki: PKI, **changes: Any) -> TLSConfig:
    settings: dict[str, Any] = {
        "listen": ("tcp:0",),
        "cert": pki.server_chain,
        "key": pki.server_key,
        "client_ca": pki.ca,
        "client_cert": "optional",
        "crl": None,
    }
    settings.update(changes)
    return TLSConfig(**settings)


class HTTPSTestCase(TestCase):
    """An HTTPS server on a free loopback port with a fresh PKI."""

    timeout = 20

    def setUp(self) -> None:
        self.pki = make_pki()
        self.addCleanup(self.pki.remove)

    async def serve(self, **changes: Any) -> None:
        from twisted.internet import reactor

        self.handler = Handler()
        self.http = HTTPServerFactory(self.handler)
        self.tls = ReloadableServerTLS(
            load_server_options(tls_config(self.pki, **changes))
        )
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        port: IListeningPort = await endpoint.listen(
            tls_factory(self.http, self.tls, reactor)
        )
        self.port = port.getHost().port  # type: ignore[attr-defined]
        self.addCleanup(self.closed)
        self.addCleanup(port.stopListening)

    async def closed(self, still_open: int = 0) -> None:
        """Wait until the server has seen every connection close but
        C{still_open} of them."""
        from twisted.internet import reactor

        for _ in range(200):
            if self.http.open_connections == still_open:
                return
            await deferLater(reactor, 0.01)
        self.fail(f"{self.http.open_connections} connections still open")

    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/topics/home?qos=1"

    def curl(
        self,
        *args: str,
        cert: tuple[str, str] | None = None,
        anonymous: bool = False,
    ) -> Deferred[CurlResult]:
        """
        The seed's command: curl --tlsv1.2 --cacert CA.crt --cert client.chain.crt
        --key client.pkcs8.key --request POST --data x https://.../topics/home?qos=1
        (C{cert}: another certificate; C{anonymous}: none).
        """
        if cert is None:
            cert = (self.pki.client_chain, self.pki.client_key)
        options = [] if anonymous else ["--cert", cert[0], "--key", cert[1]]
        return curl(
            "-v",
            "--tlsv1.2",
            "--cacert",
            self.pki.ca,
            *options,
            "--request",
            "POST",
            "--data",
            "x",
            *args,
            self.url(),
            timeout=5,
        )

    def client(self, **kwargs: Any) -> PythonClient:
        return PythonClient(self.pki, self.port, **kwargs)

    def device(self, name: str, issued: Issued) -> tuple[str, str]:
        """Write C{issued}'s chain and key; their paths for --cert/--key."""
        return self.pki.write_issued(name, issued)

    def assertOK(self, result: CurlResult, cn: str = DEVICE) -> None:
        self.assertEqual(
            (result.exit_code, result.status, result.headers.get("x-client-cn")),
            (0, 200, cn),
            result.stderr.decode(errors="replace")[-2000:],
        )

    async def assertRefused(
        self, *args: str, cert: tuple[str, str] | None = None, anonymous: bool = False
    ) -> None:
        """
        The seed's curl command (with C{args}, C{cert}) fails in the handshake:
        curl sees no HTTP response at all, the handler no request.
        """
        requests = len(self.handler.requests)
        result = await self.curl(*args, cert=cert, anonymous=anonymous)
        self.assertNotEqual(result.exit_code, 0)
        self.assertEqual(result.raw_head, "")
        self.assertEqual(len(self.handler.requests), requests)


class ALPNTests(HTTPSTestCase):
    """
     HTTPS serves HTTP/1.0 and 1.1 alike, whatever ALPN the client offers
    .
    """

    async def test_seed_command(self) -> None:
        """
        The seed's curl command (ALPN h2,http/1.1) gets 200; the device's CN
        reaches the request.
        """
        await self.serve()
        result = await self.curl()
        self.assertOK(result)
        self.assertIn(b"ALPN: server accepted http/1.1", result.stderr)
        self.assertEqual(result.headers["x-http-version"], "1.1")

    async def test_http10(self) -> None:
        """
        C{curl --http1.0} offers only ALPN http/1.0 and gets it.
        """
        await self.serve()
        result = await self.curl("--http1.0")
        self.assertOK(result)
        self.assertIn(b"ALPN: server accepted http/1.0", result.stderr)
        self.assertEqual(result.headers["x-http-version"], "1.0")

    async def test_no_alpn(self) -> None:
        """
        A client that offers no ALPN is served.
        """
        await self.serve()
        client = self.client(cert=(self.pki.client_chain, self.pki.client_key))
        answer = await in_thread(client.exchange)
        self.assertEqual(answer.status_line, b"HTTP/1.1 200 OK")
        self.assertEqual(answer.header(b"x-client-cn"), DEVICE.encode())
        self.assertIsNone(answer.alpn)

    async def test_no_common_protocol(self) -> None:
        """
        A client offering only protocols we do not speak (C{h2}, or AWS IoT's
        C{x-amzn-http-ca}) gets no ALPN answer rather than an alert, and is
        served over HTTP/1.x.
        """
        await self.serve()
        for offer in (["h2"], ["x-amzn-http-ca"]):
            client = self.client(alpn=offer)
            answer = await in_thread(client.exchange)
            self.assertEqual(answer.status_line, b"HTTP/1.1 200 OK", offer)
            self.assertIsNone(answer.alpn)

    async def test_server_preference(self) -> None:
        """
        A client offering both HTTP/1.x protocols gets the factory's first.
        """
        await self.serve()
        client = self.client(alpn=["http/1.0", "http/1.1"])
        answer = await in_thread(client.exchange)
        self.assertEqual(answer.alpn, "http/1.1")


class ClientCertificateTests(HTTPSTestCase):
    """
    Device certificates: verified against client_ca (chain allowed) and the CRL;
    a certificate that does not verify never gets an HTTP response.
    """

    async def test_optional_without_certificate(self) -> None:
        """
        With C{client_cert = "optional"} a client without a certificate is
        served, with no certificate on the request.
        """
        await self.serve()
        self.assertOK(await self.curl(anonymous=True), cn="-")
        self.assertIsNone(self.handler.requests[0].peer_certificate)

    async def test_optional_untrusted(self) -> None:
        """
        A certificate from a CA not in client_ca fails the handshake, even with
        a familiar CN.
        """
        await self.serve()
        cert = self.device("untrusted", self.pki.untrusted)
        await self.assertRefused(cert=cert)
        self.assertEqual(self.tls.refused_certificates, 1)

    async def test_optional_expired(self) -> None:
        """
        An expired certificate fails the handshake.
        """
        await self.serve()
        cert = self.device("expired", self.pki.expired)
        await self.assertRefused(cert=cert)

    async def test_optional_revoked(self) -> None:
        """
        A certificate revoked by the CRL fails the handshake; others pass.
        """
        await self.serve(crl=self.pki.crl)
        self.assertEqual(self.tls.options.crl_check, "leaf")  # type: ignore[attr-defined]
        cert = self.device("revoked", self.pki.revoked)
        await self.assertRefused(cert=cert)
        self.assertOK(await self.curl())

    async def test_required_without_certificate(self) -> None:
        """
        With C{client_cert = "required"} a client without a certificate never
        gets a response; one with a valid certificate does.
        """
        await self.serve(client_cert="required")
        await self.assertRefused(anonymous=True)
        self.assertOK(await self.curl())

    async def test_none(self) -> None:
        """
        With C{client_cert = "none"} no certificate is requested: a client
        that has one is served without it.
        """
        await self.serve(client_cert="none", client_ca=None)
        self.assertOK(await self.curl(), cn="-")
        self.assertIsNone(self.handler.requests[0].peer_certificate)

    async def test_intermediate_anchor(self) -> None:
        """
        An intermediate alone in client_ca is a trust anchor: its devices pass,
        others fail.
        """
        await self.serve(client_ca=self.pki.intermediate_ca)
        self.assertOK(await self.curl())
        self.handler.requests.clear()
        cert = self.device("untrusted", self.pki.untrusted)
        await self.assertRefused(cert=cert)

    async def test_chain_wide_crl(self) -> None:
        """
        With the root's CRL and the intermediate's in one file, the whole chain
        is checked: revoked devices fail, and so do all devices of an
        intermediate the root revoked.
        """
        await self.serve(crl=self.pki.crls)
        self.assertEqual(self.tls.options.crl_check, "chain")  # type: ignore[attr-defined]
        self.assertOK(await self.curl())
        await self.assertRefused(cert=self.device("revoked", self.pki.revoked))
        crls = self.pki.write_crls(
            "intermediate-revoked.crl",
            [
                self.pki.root.crl([self.pki.intermediate.certificate]),
                self.pki.intermediate.crl(),
            ],
        )
        self.tls.swap(load_server_options(tls_config(self.pki, crl=crls)))
        self.handler.requests.clear()
        await self.assertRefused()

    async def test_der_crl(self) -> None:
        """
        A CRL file in DER works like PEM.
        """
        der = self.pki.write_crls(
            "revoked.der",
            [self.pki.intermediate.crl([self.pki.revoked.certificate])],
            serialization.Encoding.DER,
        )
        await self.serve(crl=der)
        await self.assertRefused(cert=self.device("revoked", self.pki.revoked))


def subject(*common_names: str) -> x509.Name:
    """A subject with an organization and C{common_names} (no validation, so
    an empty one is possible)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mqtt-http-gateway tests"),
            *(
                x509.NameAttribute(NameOID.COMMON_NAME, cn, _validate=False)
                for cn in common_names
            ),
        ]
    )


class DeviceCertificateProblemTests(SynchronousTestCase):
    """What makes a certificate unfit to be a device's, read without TLS."""

    def test_problems(self) -> None:
        """One CN on an end-entity certificate is fine; two CNs, none, an
        empty one or CA:TRUE are each refused with a reason."""
        pki = make_pki()
        self.addCleanup(pki.remove)
        ca = pki.intermediate
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            empty = ca.issue(DEVICE, subject=subject(""))
        cases = [
            (pki.device, None),
            (ca.issue(DEVICE, subject=subject(DEVICE, "admin")), "2 common names"),
            (ca.issue(DEVICE, subject=subject()), "0 common names"),
            (empty, "common name (CN) is empty"),
            (ca.issue("device-ca", ca=True), "CA certificate (CA:TRUE)"),
            (pki.intermediate, "CA certificate (CA:TRUE)"),
        ]
        for issued, expected in cases:
            with warnings.catch_warnings():
                # cryptography warns when it reads the empty CN back.
                warnings.simplefilter("ignore", UserWarning)
                problem = device_certificate_problem(issued.certificate)
            if expected is None:
                self.assertIsNone(problem)
            else:
                assert problem is not None
                self.assertIn(expected, problem)


class HostileCertificateTests(HTTPSTestCase):
    """
    Certificates the device CA signed but that are not one device's: two CNs
    (which would name it?), or a CA:TRUE certificate. Each fails the handshake
    with a log line saying why; a proper device still passes.
    """

    async def assertRefusedFor(self, issued: Issued, reason: str) -> None:
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        try:
            await self.assertRefused(cert=self.device("hostile", issued))
        finally:
            globalLogPublisher.removeObserver(observer)
        lines = [formatEvent(e) for e in events if "Refused the TLS" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(reason, lines[0])

    async def test_two_common_names(self) -> None:
        """A subject with CN=device-42 and CN=admin is refused."""
        await self.serve(client_cert="required")
        hostile = self.pki.intermediate.issue(DEVICE, subject=subject(DEVICE, "admin"))
        await self.assertRefusedFor(hostile, "its subject has 2 common names (CN)")
        self.assertOK(await self.curl())

    async def test_no_common_name(self) -> None:
        """A subject without a CN is refused, also where certificates are
        optional."""
        await self.serve()
        hostile = self.pki.intermediate.issue(DEVICE, subject=subject())
        await self.assertRefusedFor(hostile, "its subject has 0 common names (CN)")

    async def test_ca_certificate(self) -> None:
        """A CA:TRUE certificate issued by the device CA is not a device, and
        neither is the device CA's own certificate (it is a trust anchor when
        client_ca holds it)."""
        await self.serve(client_cert="required")
        sub_ca = self.pki.intermediate.issue("device-43", ca=True)
        await self.assertRefusedFor(sub_ca, "it is a CA certificate (CA:TRUE)")
        await self.serve(client_cert="required", client_ca=self.pki.intermediate_ca)
        await self.assertRefusedFor(self.pki.intermediate, "CA:TRUE")
        self.assertOK(await self.curl())


def openssl_ciphers(selector: str) -> list[str]:
    """The TLS 1.2 suites this machine's OpenSSL has for C{selector}."""
    out = subprocess.run(
        ["openssl", "ciphers", "-tls1_2", "-s", f"{selector}:@SECLEVEL=0"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    return [name for name in out.strip().split(":") if name]


def negotiated(port: int, cipher: str) -> str | None:
    """The suite C{openssl s_client -tls1_2 -cipher CIPHER} negotiates, or
    C{None} when the handshake fails."""
    result = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-tls1_2",
            "-cipher",
            f"{cipher}:@SECLEVEL=0",
            "-servername",
            "localhost",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        text=True,
        timeout=10,
    )
    match = re.search(r"Cipher is (\S+)", result.stdout)
    if result.returncode != 0 or match is None or match.group(1) == "(NONE)":
        return None
    return match.group(1)


class CipherTests(HTTPSTestCase):
    """
    TLS 1.2 negotiates AEAD suites with ECDHE only: no CBC suite, whatever the
    client offers, with an ECDSA or an RSA server key; TLS 1.3 works as
    before.
    """

    async def check_suites(self, key: str, aead: list[str]) -> None:
        cbc = openssl_ciphers("ALL:COMPLEMENTOFALL:!AESGCM:!CHACHA20:!AESCCM:!ARIA")
        self.assertGreater(len(cbc), 20)
        self.assertIn("ECDHE-ECDSA-AES256-SHA384", cbc)
        self.assertIn("AES256-SHA", cbc)
        results = await in_thread(lambda: [negotiated(self.port, c) for c in cbc])
        self.assertEqual(
            {c: r for c, r in zip(cbc, results, strict=True) if r is not None}, {}
        )
        for suite in aead:
            self.assertEqual(await in_thread(negotiated, self.port, suite), suite, key)
        self.assertIsNone(
            await in_thread(negotiated, self.port, "DHE-RSA-AES128-GCM-SHA256")
        )
        self.assertIsNone(await in_thread(negotiated, self.port, "AES128-GCM-SHA256"))

    async def test_ecdsa(self) -> None:
        """With the EC server key: only ECDHE-ECDSA with AES-GCM or ChaCha20."""
        await self.serve()
        await self.check_suites(
            "ec",
            [
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
            ],
        )
        client = self.client(tls_version=ssl.TLSVersion.TLSv1_3)
        answer = await in_thread(client.exchange)
        self.assertEqual(answer.version, "TLSv1.3")

    async def test_rsa(self) -> None:
        """With an RSA server key: only ECDHE-RSA with AES-GCM or ChaCha20 (no
        RSA key exchange, no CBC such as AES256-SHA)."""
        server = self.pki.intermediate.issue("localhost", server=True, rsa_key=True)
        chain, key = self.pki.write_issued("rsa-server", server)
        await self.serve(cert=chain, key=key)
        await self.check_suites(
            "rsa",
            [
                "ECDHE-RSA-AES128-GCM-SHA256",
                "ECDHE-RSA-AES256-GCM-SHA384",
                "ECDHE-RSA-CHACHA20-POLY1305",
            ],
        )


class ServerTests(HTTPSTestCase):
    """
    The server side: its chain, protocol versions and session resumption.
    """

    async def test_chain_served(self) -> None:
        """
        The intermediates in the cert file are sent: a client trusting only the
        root verifies the server. Without them it cannot.
        """
        await self.serve()
        self.assertOK(await self.curl())
        await self.closed()
        self.tls.swap(
            load_server_options(tls_config(self.pki, cert=self.pki.server_cert))
        )
        result = await self.curl()
        self.assertEqual(result.exit_code, 60, result.stderr)

    async def test_tls11_refused(self) -> None:
        """
        TLS 1.1 is refused (a client able to speak it gets a protocol alert).
        """
        await self.serve()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            client = self.client(tls_version=ssl.TLSVersion.TLSv1_1)
        client.context.set_ciphers("ALL:@SECLEVEL=0")
        failure = await self.assertFailure(in_thread(client.exchange), ssl.SSLError)
        self.assertIn("VERSION", str(failure).upper())
        result = await self.curl("--tlsv1.1", "--tls-max", "1.1")
        self.assertNotEqual(result.exit_code, 0)
        self.assertEqual(result.raw_head, "")

    async def test_resumption(self) -> None:
        """
        Sessions resume (TLS 1.3 and 1.2), and a resumed session still carries
        the device's verified certificate.
        """
        await self.serve()
        cert = (self.pki.client_chain, self.pki.client_key)
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            client = self.client(cert=cert, tls_version=version)
            first = await in_thread(client.exchange)
            self.assertFalse(first.reused)
            assert first.session is not None
            self.assertTrue(first.session.has_ticket, version)
            second = await in_thread(client.exchange, REQUEST, first.session)
            self.assertEqual(second.version, first.version)
            self.assertTrue(second.reused, version)
            self.assertEqual(second.header(b"x-client-cn"), DEVICE.encode())

    async def test_resumption_without_tickets(self) -> None:
        """
        A TLS 1.2 client without session ticket support resumes by session id.
        """
        await self.serve()
        client = self.client(tls_version=ssl.TLSVersion.TLSv1_2)
        client.context.options |= ssl.OP_NO_TICKET
        first = await in_thread(client.exchange)
        second = await in_thread(client.exchange, REQUEST, first.session)
        self.assertTrue(second.reused)


def closed_by_server(client: PythonClient) -> bool:
    """Whether the server has closed C{client}'s connection: a request on it
    gets no response."""
    try:
        answer = client.request(KEEP_ALIVE_REQUEST)
    except (ssl.SSLError, OSError):
        return True
    return not answer.response


class ReloadTests(HTTPSTestCase):
    """
    swap() applies new settings to new connections, and closes the open
    connections whose device certificate the new settings refuse; the others
    keep working.
    """

    async def keep_alive(self, cert: tuple[str, str] | None) -> PythonClient:
        """An open keep-alive connection that has been served once."""
        client = self.client(cert=cert)
        await in_thread(client.connect)
        self.addCleanup(client.close)
        answer = await in_thread(client.request, KEEP_ALIVE_REQUEST)
        self.assertEqual(answer.status_line, b"HTTP/1.1 200 OK")
        return client

    async def test_revoked_connection_closed(self) -> None:
        """
        After a reload with a CRL revoking device-42, its open keep-alive
        connection is closed and its new handshakes (sessions from before are
        not resumed) fail; another device's connection and one without a
        certificate keep working.
        """
        await self.serve()
        cert = (self.pki.client_chain, self.pki.client_key)
        revoked = await self.keep_alive(cert)
        other = await self.keep_alive(
            self.device("device-7", self.pki.intermediate.issue("device-7"))
        )
        anonymous = await self.keep_alive(None)
        resumer = self.client(cert=cert)
        resumable = await in_thread(resumer.exchange)
        await self.closed(still_open=3)

        crl = self.pki.write_crls(
            "device-42.crl", [self.pki.intermediate.crl([self.pki.device.certificate])]
        )
        closed = self.tls.swap(load_server_options(tls_config(self.pki, crl=crl)))
        self.assertEqual(closed, 1)
        self.assertTrue(await in_thread(closed_by_server, revoked))
        requests = len(self.handler.requests)
        await self.assertRefused()
        stale = await in_thread(attempt, resumer, resumable.session)
        self.assertIsInstance(stale, (ssl.SSLError, ConnectionError))
        self.assertEqual(len(self.handler.requests), requests)
        self.assertEqual(self.tls.refused_certificates, 2)

        for client, cn in ((other, b"device-7"), (anonymous, b"-")):
            again = await in_thread(client.request, KEEP_ALIVE_REQUEST)
            self.assertEqual(again.status_line, b"HTTP/1.1 200 OK")
            self.assertEqual(again.header(b"x-client-cn"), cn)
        await self.closed(still_open=2)

    async def test_untrusted_connection_closed(self) -> None:
        """
        A new client CA that no longer trusts the device CA closes the
        device's open connection; without client certificates at all, every
        connection that has one is closed; a new server certificate with the
        same trust closes none.
        """
        await self.serve()
        cert = (self.pki.client_chain, self.pki.client_key)
        device = await self.keep_alive(cert)
        anonymous = await self.keep_alive(None)
        server = self.pki.intermediate.issue("localhost", server=True)
        chain, key = self.pki.write_issued("server-2", server)
        self.assertEqual(
            self.tls.swap(
                load_server_options(tls_config(self.pki, cert=chain, key=key))
            ),
            0,
        )
        self.assertFalse(await in_thread(closed_by_server, device))

        other = make_root("Other Root CA")  # it signed no device here
        other_root = self.pki.write(
            "other-root.crt", other.certificate.public_bytes(serialization.Encoding.PEM)
        )
        swapped = self.tls.swap(
            load_server_options(tls_config(self.pki, client_ca=other_root))
        )
        self.assertEqual(swapped, 1)
        self.assertTrue(await in_thread(closed_by_server, device))
        self.assertFalse(await in_thread(closed_by_server, anonymous))

        self.assertEqual(self.tls.swap(load_server_options(tls_config(self.pki))), 0)
        device = await self.keep_alive(cert)
        swapped = self.tls.swap(
            load_server_options(tls_config(self.pki, client_cert="none"))
        )
        self.assertEqual(swapped, 1)
        self.assertTrue(await in_thread(closed_by_server, device))
        self.assertFalse(await in_thread(closed_by_server, anonymous))


class LoadTests(SynchronousTestCase):
    """
    Unusable [tls] files are refused with one line naming the key and the file.
    """

    def setUp(self) -> None:
        self.pki = make_pki()
        self.addCleanup(self.pki.remove)

    def error(self, **changes: Any) -> str:
        with self.assertRaises(TLSConfigError) as caught:
            load_server_options(tls_config(self.pki, **changes))
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        return message

    def test_missing_file(self) -> None:
        missing = self.pki.path("nothing.crt")
        self.assertEqual(
            self.error(cert=missing),
            f"tls.cert: cannot read {missing}: No such file or directory",
        )
        self.assertEqual(
            self.error(key=missing),
            f"tls.key: cannot read {missing}: No such file or directory",
        )

    def test_garbage(self) -> None:
        garbage = self.pki.write("garbage.pem", b"not a certificate\n")
        self.assertEqual(
            self.error(cert=garbage), f"tls.cert: {garbage} holds no PEM certificate"
        )
        self.assertEqual(
            self.error(client_ca=garbage),
            f"tls.client_ca: {garbage} holds no PEM certificate",
        )
        self.assertEqual(
            self.error(key=garbage), f"tls.key: {garbage} holds no PEM private key"
        )
        broken = self.pki.write(
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n",
        )
        self.assertTrue(
            self.error(cert=broken).startswith(
                f"tls.cert: certificate 1 in {broken} is not valid: "
            )
        )

    def test_key_mismatch(self) -> None:
        other = self.pki.write("other.key", self.pki.device.key_pem())
        self.assertEqual(
            self.error(key=other),
            f"tls.key: {other} does not match the first certificate in "
            f"{self.pki.server_chain}",
        )

    def test_encrypted_key(self) -> None:
        encrypted = self.pki.write(
            "encrypted.key",
            self.pki.server.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
        )
        self.assertEqual(
            self.error(key=encrypted),
            f"tls.key: {encrypted} is encrypted; the key must have no passphrase",
        )

    def test_bad_crl(self) -> None:
        for data in (
            b"garbage",
            b"-----BEGIN X509 CRL-----\nabc\n-----END X509 CRL-----\n",
        ):
            bad = self.pki.write("bad.crl", data)
            self.assertEqual(
                self.error(crl=bad), f"tls.crl: {bad} is not a PEM or DER CRL"
            )
        certificate = self.pki.ca
        self.assertEqual(
            self.error(crl=certificate),
            f"tls.crl: {certificate} is not a PEM or DER CRL",
        )

    def test_expired_crl(self) -> None:
        expired = self.pki.write_crls(
            "expired.crl",
            [self.pki.intermediate.crl(next_update=-datetime.timedelta(hours=1))],
        )
        message = self.error(crl=expired)
        self.assertTrue(
            message.startswith(
                "tls.crl: the CRL from CN=Test Devices CA,O=mqtt-http-gateway tests"
                f" in {expired} expired at "
            ),
            message,
        )

    def test_client_ca_needed(self) -> None:
        self.assertEqual(
            self.error(client_ca=None),
            "tls.client_ca: not set; it is needed with client_cert = 'optional'",
        )

    def test_bad_mode(self) -> None:
        self.assertEqual(
            self.error(client_cert="maybe"),
            "tls.client_cert: must be one of none, optional, required, not 'maybe'",
        )

    def test_combined_pem(self) -> None:
        """
        One file holding the key and the chain serves as both cert and key.
        """
        combined = self.pki.write(
            "combined.pem", self.pki.server.key_pem() + self.pki.server.chain_pem()
        )
        options = load_server_options(tls_config(self.pki, cert=combined, key=combined))
        self.assertIsInstance(options, ServerTLSOptions)

    def test_crl_scope(self) -> None:
        """
        The chain is checked when every trust anchor is a root with a CRL in
        the file; otherwise only the device certificate.
        """
        cases = [
            (self.pki.ca, self.pki.crl, "leaf"),
            (self.pki.ca, self.pki.crls, "chain"),
            (self.pki.intermediate_ca, self.pki.crls, "leaf"),
            (self.pki.ca, None, "off"),
        ]
        other = make_root("Other Root CA")
        two_roots = self.pki.write(
            "two-roots.crt",
            self.pki.root.certificate.public_bytes(serialization.Encoding.PEM)
            + other.certificate.public_bytes(serialization.Encoding.PEM),
        )
        cases.append((two_roots, self.pki.crls, "leaf"))
        for client_ca, crl, scope in cases:
            options = load_server_options(
                tls_config(self.pki, client_ca=client_ca, crl=crl)
            )
            self.assertEqual(options.crl_check, scope, (client_ca, crl))


class PeerCommonNameTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = make_pki()
        self.addCleanup(self.pki.remove)

    def test_first_cn(self) -> None:
        self.assertEqual(peer_common_name(self.pki.device.certificate), DEVICE)

    def test_no_cn(self) -> None:
        certificate = self.pki.root.certificate
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(certificate.subject)
            .public_key(self.pki.device.key.public_key())
            .serial_number(1)
            .not_valid_before(certificate.not_valid_before_utc)
            .not_valid_after(certificate.not_valid_after_utc)
        )
        from cryptography.hazmat.primitives import hashes

        bare = builder.sign(self.pki.root.key, hashes.SHA256())
        self.assertIsNone(peer_common_name(bare))
