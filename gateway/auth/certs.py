# -*- test-case-name: tests.auth.test_certs -*-
"""
HTTPS with device certificates: one immutable set of server TLS settings.

L{load_server_options} turns the C{[tls]} files (read by L{gateway.auth.tls_files})
into a L{ServerTLSOptions}; L{tls_factory} serves HTTPS with it on any stream server
endpoint. L{gateway.auth.tls_reload.ReloadableServerTLS} swaps sets on a reload, and
L{gateway.auth.device_identity} reads a sender's identity from its verified
certificate.

Choices made here:
  - TLS 1.2 is the minimum; renegotiation is off. TLS 1.2 offers AEAD suites
    with forward secrecy only (ECDHE with AES-GCM or ChaCha20-Poly1305): no CBC
    suite (LUCKY13 and its kin), no RSA key exchange. TLS 1.3 suites are all
    AEAD already and stay OpenSSL's.
  - A device certificate is an end-entity certificate (not CA:TRUE; a CA's
    certificate is not a device, whoever issued it) with exactly one non-empty
    common name (CN) in its subject: which of two CNs would name the device is
    ambiguous. Anything else fails the handshake like an untrusted certificate.
  - Session resumption is on: stateless session tickets (TLS 1.2 and 1.3) and a
    server-side session cache for TLS 1.2 clients without ticket support (BearSSL
    on many microcontrollers). A resumed session keeps the client certificate
    verified in its full handshake. Each loaded settings set has its own ticket
    keys and cache, so after a reload swaps the set (e.g. with a new CRL)
    every device makes a full, freshly verified handshake.
  - ALPN: the protocols come from the wrapped factory (its
    C{acceptableProtocols()}, in its order of preference). A client offering
    none of them (only C{h2}, or C{x-amzn-http-ca} like devices written for AWS
    IoT on port 443) is answered without ALPN and speaks HTTP/1.x, instead of
    being refused with an alert; a client offering no ALPN at all is served too.
  - Trust anchors: every certificate in C{client_ca} is one (a root, or an
    intermediate to trust only the devices below it). Devices may send their
    intermediates after their own certificate.
  - Revocation (C{crl}): the device certificate is always checked, so the file
    needs the CRL of every CA that issues device certificates
    (C{X509_V_FLAG_CRL_CHECK}, as mosquitto's C{crlfile}). When the file also
    holds a CRL from every trust anchor and all anchors are roots, the whole
    chain is checked (C{X509_V_FLAG_CRL_CHECK_ALL}): a revoked intermediate is
    refused too, and then every intermediate needs its CRL in the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import X509, X509StoreContext, X509StoreContextError, X509StoreFlags
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IProtocolNegotiationFactory,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from gateway.auth.device_identity import device_certificate_problem
from gateway.auth.tls_files import (
    SigningKey,
    TLSConfigError,
    first_line,
    read_certificates,
    read_crls,
    read_key,
    same_public_key,
)
from gateway.config import TLSConfig
from gateway.model import peer_of

__all__ = [
    "ServerTLSOptions",
    "load_server_options",
    "peer_address",
    "tls_factory",
]

_log = Logger()

CRLCheck = Literal["off", "leaf", "chain"]

CLIENT_CERT_MODES = ("none", "optional", "required")

# The session id context must be set for resumption when client certificates are
# requested (OpenSSL refuses to resume otherwise). Sessions never cross settings
# sets (each context has its own cache and ticket keys), so a constant will do.
_SESSION_ID_CONTEXT = b"mqtt-http-gateway"

# TLS 1.2: ECDHE (forward secrecy) with an AEAD cipher, for ECDSA and RSA server
# keys; AES-GCM first (hardware AES nearly everywhere), ChaCha20 for the rest.
_TLS12_CIPHERS = b":".join(
    (
        b"ECDHE-ECDSA-AES128-GCM-SHA256",
        b"ECDHE-RSA-AES128-GCM-SHA256",
        b"ECDHE-ECDSA-AES256-GCM-SHA384",
        b"ECDHE-RSA-AES256-GCM-SHA384",
        b"ECDHE-ECDSA-CHACHA20-POLY1305",
        b"ECDHE-RSA-CHACHA20-POLY1305",
    )
)

_VERIFY_ERRORS = {
    value: name.removeprefix("ERR_").replace("_", " ").lower()
    for name, value in vars(SSL.X509VerificationCodes).items()
    if name.startswith("ERR_") and isinstance(value, int)
}


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLSOptions:
    """
    One set of server TLS settings, shared by the connections made with it.

    Build it with L{load_server_options}; it never changes afterwards.

    @ivar client_cert: C{"none"}, C{"optional"} or C{"required"}.
    @ivar crl_check: C{"off"} (no CRL), C{"leaf"} (the device certificate is
        checked) or C{"chain"} (every certificate below the root is checked).
    @ivar refused_certificates: how many handshakes failed because the client's
        certificate did not verify (untrusted, expired, revoked, ...).
    """

    def __init__(
        self,
        chain: Sequence[x509.Certificate],
        key: SigningKey,
        *,
        client_cert: str = "none",
        anchors: Sequence[x509.Certificate] = (),
        crls: Sequence[x509.CertificateRevocationList] = (),
    ) -> None:
        """
        @param chain: the server certificate, then the intermediates to send.
        @param key: the server's private key (a C{cryptography} private key).
        @param client_cert: whether client certificates are requested
            (C{"optional"}) or needed (C{"required"}).
        @param anchors: the CA certificates client certificates must chain to.
        @param crls: the CRLs to check client certificates against.

        @raise OpenSSL.SSL.Error: if OpenSSL refuses the certificate or key.
        """
        self.client_cert = client_cert
        self.crl_check: CRLCheck = "off"
        self._store: Any = None
        self.refused_certificates = 0
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(
            SSL.OP_NO_COMPRESSION
            | SSL.OP_CIPHER_SERVER_PREFERENCE
            | SSL.OP_NO_RENEGOTIATION
        )
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        context.set_cipher_list(_TLS12_CIPHERS)
        context.use_certificate(chain[0])
        for certificate in chain[1:]:
            context.add_extra_chain_cert(certificate)
        context.use_privatekey(key)
        context.check_privatekey()
        context.set_session_id(_SESSION_ID_CONTEXT)
        context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        context.set_alpn_select_callback(_select_alpn)
        if client_cert == "none":
            context.set_verify(SSL.VERIFY_NONE)
        else:
            mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
            if client_cert == "required":
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            context.set_verify(mode, self._verified)
            store = context.get_cert_store()
            assert store is not None
            self._store = store
            for anchor in anchors:
                store.add_cert(X509.from_cryptography(anchor))
                context.add_client_ca(anchor)
            flags = 0
            if crls:
                for crl in crls:
                    store.add_crl(crl)
                self.crl_check = _crl_scope(anchors, crls)
                flags |= X509StoreFlags.CRL_CHECK
                if self.crl_check == "chain":
                    flags |= X509StoreFlags.CRL_CHECK_ALL
            if self.crl_check != "chain":
                # An intermediate in client_ca is a trust anchor of its own. Not
                # with a chain-wide CRL check: that would need a CRL for the
                # anchor from a CA that is not there.
                flags |= X509StoreFlags.PARTIAL_CHAIN
            store.set_flags(flags)
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """
        A new server-side TLS connection with these settings.
        """
        return SSL.Connection(self.context, None)

    def refusal(self, certificate: X509, chain: Sequence[X509] = ()) -> str | None:
        """
        Why these settings refuse C{certificate} (sent with the intermediates
        C{chain}) as a device certificate now, or C{None}: it does not chain to
        C{client_ca}, a CRL revokes it, it has expired, it is not a device's
        (L{device_certificate_problem}), or client certificates are not taken.
        For an open connection made with other settings.
        """
        if self.client_cert == "none":
            return "the TLS settings take no client certificates any more"
        try:
            X509StoreContext(self._store, certificate, list(chain)).verify_certificate()
        except X509StoreContextError as error:
            return f"its certificate is refused: {error}"
        return _device_problem(certificate)

    def _verified(
        self,
        connection: SSL.Connection,
        certificate: X509,
        error: int,
        depth: int,
        ok: int,
    ) -> bool:
        """
        OpenSSL's verdict on one certificate of a client's chain, and for the
        device's own certificate (depth 0) L{device_certificate_problem};
        refusals are counted and logged.
        """
        reason: str | None = None
        if not ok:
            reason = f"{_VERIFY_ERRORS.get(error, 'X509 error')} ({error})"
        elif depth == 0:
            reason = _device_problem(certificate)
        if reason is None:
            return True
        self.refused_certificates += 1
        _log.info(
            "Refused the TLS client certificate of {peer}: {reason} "
            "(depth {depth}: {subject})",
            peer=peer_address(connection),
            reason=reason,
            depth=depth,
            subject=_subject(certificate),
        )
        return False


def load_server_options(tls: TLSConfig) -> ServerTLSOptions:
    """
    The server TLS settings described by C{tls}, read from its files.

    C{cert} is PEM and may hold the chain (the server certificate first, then
    intermediates; all are sent). C{key} is a PEM private key without a
    passphrase (PKCS#8 or traditional; other PEM blocks around it are ignored).
    C{client_ca} is a PEM bundle of trust anchors. C{crl} is PEM (any number of
    CRLs) or DER (one). C{client_ca} and C{crl} are ignored when C{client_cert}
    is C{"none"}.

    @raise TLSConfigError: for a missing, unreadable or invalid file, a key that
        does not match the certificate, or a CRL that has expired (OpenSSL would
        refuse every certificate it covers).
    """
    mode = tls.client_cert
    if mode not in CLIENT_CERT_MODES:
        raise TLSConfigError(
            f"tls.client_cert: must be one of {', '.join(CLIENT_CERT_MODES)}, "
            f"not {mode!r}"
        )
    chain = read_certificates("tls.cert", tls.cert)
    key = read_key("tls.key", tls.key)
    if not same_public_key(key.public_key(), chain[0].public_key()):
        raise TLSConfigError(
            f"tls.key: {tls.key} does not match the first certificate in {tls.cert}"
        )
    anchors: list[x509.Certificate] = []
    crls: list[x509.CertificateRevocationList] = []
    if mode != "none":
        if tls.client_ca is None:
            raise TLSConfigError(
                f"tls.client_ca: not set; it is needed with client_cert = {mode!r}"
            )
        anchors = read_certificates("tls.client_ca", tls.client_ca)
        if tls.crl is not None:
            crls = read_crls("tls.crl", tls.crl)
    try:
        return ServerTLSOptions(
            chain, key, client_cert=mode, anchors=anchors, crls=crls
        )
    except SSL.Error as error:
        raise TLSConfigError(
            f"tls.cert: OpenSSL refuses {tls.cert} with {tls.key}: {error}"
        ) from error


def tls_factory(
    factory: IProtocolFactory,
    creator: IOpenSSLServerConnectionCreator,
    reactor: IReactorTime | None = None,
) -> IProtocolFactory:
    """
    C{factory} behind TLS made by C{creator}: listen with it on any stream
    server endpoint (C{tcp:}, C{systemd:}, ...) to serve HTTPS.

    ALPN offers the protocols of C{factory}'s C{acceptableProtocols()} when it
    provides L{IProtocolNegotiationFactory}.

    @param reactor: schedules the flushing of small writes; the global reactor
        if C{None}.
    """
    return TLSMemoryBIOFactory(creator, False, factory, clock=reactor)


def _device_problem(certificate: X509) -> str | None:
    """
    L{device_certificate_problem} of an OpenSSL certificate; one that cannot be
    read is refused too (a verify callback must not raise).
    """
    try:
        return device_certificate_problem(certificate.to_cryptography())
    except Exception as error:
        return f"its certificate cannot be read: {first_line(error)}"


def _select_alpn(connection: SSL.Connection, offered: list[bytes]) -> bytes | Any:
    """
    The wrapped factory's most preferred protocol among those C{offered}, or no
    ALPN answer at all when there is none.
    """
    tls_protocol = connection.get_app_data()
    wrapped = getattr(getattr(tls_protocol, "factory", None), "wrappedFactory", None)
    negotiation = IProtocolNegotiationFactory(wrapped, None)
    if negotiation is not None:
        for name in negotiation.acceptableProtocols():
            if name in offered:
                return name
    return SSL.NO_OVERLAPPING_PROTOCOLS


def _crl_scope(
    anchors: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
) -> CRLCheck:
    """
    C{"chain"} when every anchor is a root that has a CRL among C{crls},
    otherwise C{"leaf"}.
    """
    issuers = {crl.issuer for crl in crls}
    if anchors and all(
        anchor.subject == anchor.issuer and anchor.subject in issuers
        for anchor in anchors
    ):
        return "chain"
    return "leaf"


def _subject(certificate: X509) -> str:
    """
    C{certificate}'s subject for logs (a verify callback must not raise).
    """
    try:
        return certificate.to_cryptography().subject.rfc4514_string()
    except Exception:
        return "?"


def peer_address(connection: SSL.Connection) -> str:
    """
    The client's address as C{host:port}, for logs.
    """
    transport = getattr(connection.get_app_data(), "transport", None)
    if transport is None:
        return "?"
    return str(peer_of(transport.getPeer()))
