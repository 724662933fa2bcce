# -*- test-case-name: tests.auth.test_certs -*-
"""
Reading the C{[tls]} files: PEM certificates, a PEM private key and PEM or DER
CRLs, as C{cryptography} objects, each failure a one-line L{TLSConfigError}
naming the setting and the file.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from gateway.auth.files import read_bytes
from gateway.config import ConfigError

__all__ = [
    "SigningKey",
    "TLSConfigError",
    "first_line",
    "read_certificates",
    "read_crls",
    "read_key",
    "same_public_key",
]

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL
)

# The private key types OpenSSL (through pyOpenSSL) can serve a certificate with.
SigningKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)


#: A C{[tls]} file that cannot be used: a L{ConfigError} whose message is one
#: line naming the key and the file, e.g. C{tls.cert: cannot read
#: /etc/x/server.crt: No such file or directory}.
TLSConfigError = ConfigError


def _read(key: str, path: str | None) -> bytes:
    """
    The bytes of the file named by the setting C{key}.
    """
    if path is None:
        raise TLSConfigError(f"{key}: not set")
    return read_bytes(path, key)


def read_certificates(key: str, path: str | None) -> list[x509.Certificate]:
    """
    The PEM certificates in a file, in file order; at least one.
    """
    data = _read(key, path)
    blocks = [
        m.group(0) for m in _PEM_BLOCK.finditer(data) if m.group(1) == b"CERTIFICATE"
    ]
    if not blocks:
        raise TLSConfigError(f"{key}: {path} holds no PEM certificate")
    certificates = []
    for number, block in enumerate(blocks, 1):
        try:
            certificates.append(x509.load_pem_x509_certificate(block))
        except ValueError as error:
            raise TLSConfigError(
                f"{key}: certificate {number} in {path} is not valid: "
                f"{first_line(error)}"
            ) from error
    return certificates


def read_key(key: str, path: str | None) -> SigningKey:
    """
    The first PEM private key in a file.
    """
    data = _read(key, path)
    block = next(
        (
            m.group(0)
            for m in _PEM_BLOCK.finditer(data)
            if m.group(1).endswith(b"PRIVATE KEY")
        ),
        None,
    )
    if block is None:
        raise TLSConfigError(f"{key}: {path} holds no PEM private key")
    try:
        private_key = serialization.load_pem_private_key(block, password=None)
    except TypeError as error:
        raise TLSConfigError(
            f"{key}: {path} is encrypted; the key must have no passphrase"
        ) from error
    except (ValueError, UnsupportedAlgorithm) as error:
        raise TLSConfigError(
            f"{key}: {path} is not a valid private key: {first_line(error)}"
        ) from error
    if not isinstance(private_key, SigningKey):
        raise TLSConfigError(f"{key}: {path} holds a key that cannot sign")
    return private_key


def read_crls(key: str, path: str) -> list[x509.CertificateRevocationList]:
    """
    The CRLs in a PEM (one or more) or DER (one) file; none of them expired.
    """
    data = _read(key, path)
    try:
        if b"-----BEGIN" in data:
            crls = [
                x509.load_pem_x509_crl(m.group(0))
                for m in _PEM_BLOCK.finditer(data)
                if m.group(1) == b"X509 CRL"
            ]
        else:
            crls = [x509.load_der_x509_crl(data)]
    except ValueError as error:
        raise TLSConfigError(f"{key}: {path} is not a PEM or DER CRL") from error
    if not crls:
        raise TLSConfigError(f"{key}: {path} is not a PEM or DER CRL")
    now = datetime.datetime.now(datetime.UTC)
    for crl in crls:
        next_update = crl.next_update_utc
        if next_update is not None and next_update < now:
            raise TLSConfigError(
                f"{key}: the CRL from {crl.issuer.rfc4514_string()} in {path} "
                f"expired at {next_update:%Y-%m-%d %H:%M:%S} UTC; every "
                "certificate it covers would be refused"
            )
    return crls


def same_public_key(one: Any, other: Any) -> bool:
    """
    Whether two public keys are the same key (compared as DER
    SubjectPublicKeyInfo).
    """
    return _public_bytes(one) == _public_bytes(other)


def _public_bytes(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )


def first_line(error: Exception) -> str:
    """
    The first line of C{error}'s message (its type's name when it has none),
    for one-line errors and logs.
    """
    return str(error).splitlines()[0] if str(error) else type(error).__name__
