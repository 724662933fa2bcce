# -*- test-case-name: tests.auth.test_certs -*-
"""
A certificate hierarchy made at test time, for TLS tests.

L{make_pki} writes a root CA, an intermediate CA signed by it, a server
certificate for C{127.0.0.1}/C{localhost} and device certificates (good, expired,
from an unrelated CA, revoked) with their CRLs as PEM files into a new folder
outside the source tree. Private keys exist only there and in memory::

    pki = make_pki()
    self.addCleanup(pki.remove)
    TLSConfig(cert=pki.server_chain, key=pki.server_key, client_ca=pki.ca, ...)
    curl --cacert pki.ca --cert pki.client_chain --key pki.client_key ...

Keys are EC P-256: generating the whole hierarchy takes milliseconds.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEVICE = "device-42"
REVOKED_DEVICE = "device-13"

_DAY = datetime.timedelta(days=1)

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mqtt-http-gateway tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem(certificates: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


@dataclass(frozen=True)
class Issued:
    """
    A certificate with its key and the CA certificates above it.

    @ivar chain: the certificate, then the intermediates above it (not the root).
    """

    key: Key
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]

    def chain_pem(self) -> bytes:
        """The certificate and the intermediates above it, in PEM."""
        return _pem(self.chain)

    def key_pem(self, pkcs8: bool = True) -> bytes:
        """The private key in PEM, PKCS#8 or the traditional SEC1 form."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8
            if pkcs8
            else serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class CA(Issued):
    """
    A certificate authority that can issue certificates and CRLs.
    """

    def issue(
        self,
        common_name: str,
        *,
        server: bool = False,
        ca: bool = False,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        subject: x509.Name | None = None,
        rsa_key: bool = False,
    ) -> Issued:
        """
        A new certificate for C{common_name} signed by this CA.

        @param server: a server certificate for C{localhost} and C{127.0.0.1}
            (otherwise a TLS client certificate).
        @param ca: an intermediate CA (the result is then a L{CA}).
        @param subject: the whole subject, instead of one made of
            C{common_name}.
        @param rsa_key: an RSA 2048 key instead of EC P-256.
        """
        key: Key = (
            rsa.generate_private_key(65537, 2048)
            if rsa_key
            else ec.generate_private_key(ec.SECP256R1())
        )
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject or _name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _DAY)
            .not_valid_after(not_after or now + 30 * _DAY)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()
                ),
                critical=False,
            )
        )
        if ca:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=True, path_length=0), critical=True
            ).add_extension(_ca_key_usage(), critical=True)
        else:
            usage = (
                ExtendedKeyUsageOID.SERVER_AUTH
                if server
                else (ExtendedKeyUsageOID.CLIENT_AUTH)
            )
            builder = (
                builder.add_extension(
                    x509.BasicConstraints(ca=False, path_length=None), critical=True
                )
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=False,
                        crl_sign=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
            )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        certificate = builder.sign(self.key, hashes.SHA256())
        above = self.chain if self.chain[-1].issuer != self.chain[-1].subject else ()
        chain = (certificate, *above)
        if ca:
            return CA(key, certificate, chain)
        return Issued(key, certificate, chain)

    def crl(
        self,
        revoked: Iterable[x509.Certificate] = (),
        *,
        next_update: datetime.timedelta = 7 * _DAY,
    ) -> x509.CertificateRevocationList:
        """
        A CRL from this CA revoking C{revoked}, valid for C{next_update} from now
        (negative: already expired).
        """
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(min(now, now + next_update) - _DAY)
            .next_update(now + next_update)
            .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()
                ),
                critical=False,
            )
        )
        for certificate in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(certificate.serial_number)
                .revocation_date(now - _DAY)
                .build()
            )
        return builder.sign(self.key, hashes.SHA256())


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def make_root(common_name: str) -> CA:
    """
    A new self-signed root CA.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 365 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return CA(key, certificate, (certificate,))


@dataclass(frozen=True)
class PKI:
    """
    The hierarchy and the files written for it (absolute paths).

    @ivar ca: the root certificate alone (curl's C{--cacert}, C{tls.client_ca}).
    @ivar server_chain: the server certificate, then the intermediate.
    @ivar server_cert: the server certificate alone.
    @ivar server_key: its key, in the traditional (SEC1) PEM form.
    @ivar client_chain: C{device-42}'s certificate, then the intermediate.
    @ivar client_key: its key in PKCS#8 PEM (as C{client.pkcs8.key}).
    @ivar crl: the intermediate's CRL, revoking C{device-13} only.
    @ivar crls: the root's empty CRL and L{crl}, in one PEM file.
    """

    directory: str
    root: CA
    intermediate: CA
    server: Issued
    device: Issued
    expired: Issued
    revoked: Issued
    untrusted: Issued
    ca: str = field(init=False)
    intermediate_ca: str = field(init=False)
    server_chain: str = field(init=False)
    server_cert: str = field(init=False)
    server_key: str = field(init=False)
    client_chain: str = field(init=False)
    client_key: str = field(init=False)
    crl: str = field(init=False)
    crls: str = field(init=False)

    def __post_init__(self) -> None:
        def set_(name: str, value: str) -> None:
            object.__setattr__(self, name, value)

        set_("ca", self.write("CA.crt", _pem([self.root.certificate])))
        set_(
            "intermediate_ca",
            self.write("intermediate.crt", _pem([self.intermediate.certificate])),
        )
        set_("server_chain", self.write("server.chain.crt", self.server.chain_pem()))
        set_(
            "server_cert",
            self.write("server.crt", _pem([self.server.certificate])),
        )
        set_("server_key", self.write("server.key", self.server.key_pem(False)))
        set_("client_chain", self.write("client.chain.crt", self.device.chain_pem()))
        set_("client_key", self.write("client.pkcs8.key", self.device.key_pem()))
        crl = self.intermediate.crl([self.revoked.certificate])
        set_("crl", self.write_crls("revoked.crl", [crl]))
        set_("crls", self.write_crls("all.crl", [self.root.crl(), crl]))

    def path(self, name: str) -> str:
        """The absolute path of the file C{name} in L{directory}."""
        return os.path.join(self.directory, name)

    def write(self, name: str, data: bytes) -> str:
        """Write C{data} to the file C{name}; return its path."""
        path = self.path(name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def write_crls(
        self,
        name: str,
        crls: Iterable[x509.CertificateRevocationList],
        encoding: serialization.Encoding = serialization.Encoding.PEM,
    ) -> str:
        """Write C{crls} to the file C{name} (one PEM file, or DER); its path."""
        return self.write(name, b"".join(c.public_bytes(encoding) for c in crls))

    def write_issued(self, name: str, issued: Issued) -> tuple[str, str]:
        """Write C{issued}'s chain and PKCS#8 key as C{name.crt}, C{name.key}."""
        return (
            self.write(f"{name}.crt", issued.chain_pem()),
            self.write(f"{name}.key", issued.key_pem()),
        )

    def remove(self) -> None:
        """Delete L{directory} and everything in it."""
        shutil.rmtree(self.directory, ignore_errors=True)


def make_pki() -> PKI:
    """
    A new hierarchy in a new temporary folder (remove it with L{PKI.remove}).

    Root CA -> intermediate CA -> server (C{localhost}), C{device-42},
    C{device-13} (revoked by L{PKI.crl}) and an expired C{device-42}; an
    unrelated root CA -> another C{device-42}.
    """
    root = make_root("Test Root CA")
    intermediate = root.issue("Test Devices CA", ca=True)
    assert isinstance(intermediate, CA)
    now = _now()
    other = make_root("Unrelated Root CA")
    return PKI(
        directory=tempfile.mkdtemp(prefix="gateway-pki-"),
        root=root,
        intermediate=intermediate,
        server=intermediate.issue("localhost", server=True),
        device=intermediate.issue(DEVICE),
        expired=intermediate.issue(
            DEVICE, not_before=now - 30 * _DAY, not_after=now - _DAY
        ),
        revoked=intermediate.issue(REVOKED_DEVICE),
        untrusted=other.issue(DEVICE),
    )
