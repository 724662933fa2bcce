# -*- test-case-name: tests.auth.test_aliyun_signature -*-
"""
Alibaba Cloud OpenAPI request signatures, checked against configured AccessKeys.

Two schemes, as the official SDKs send them for an RPC-style action such as
OnsMqtt C{SendMessage}:

  - B{ACS3-HMAC-SHA256} (the V3 signature; the default of
    C{alibabacloud-onsmqtt20200420}; C{ACS3-HMAC-SM3} too where OpenSSL has SM3):
    C{Authorization: ACS3-HMAC-SHA256 Credential=<id>,SignedHeaders=<names>,
    Signature=<hex>} over a canonical request of the method, path, sorted query,
    the signed headers and the hash of the body; C{x-acs-date} and
    C{x-acs-signature-nonce} carry the time and the nonce.
  - B{HMAC-SHA1} (the RPC V2 signature; C{aliyun-python-sdk-core}, and the new SDK
    with C{signature_algorithm="v2"}): C{Signature}, C{SignatureNonce},
    C{Timestamp}, C{AccessKeyId} among the parameters, over every other parameter,
    empty ones included.

Both refuse a time more than L{WINDOW} seconds away from now and a nonce already
seen in that window. Everything here is pure: the time is passed in as a number
and the nonces seen live in a L{NonceCache} the caller owns.

Parameter values are bytes (the percent-decoded query), so that what is signed is
exactly what was sent, whatever its encoding; the spaces that the new SDK encodes
as C{+} and the old one as C{%20} decode to the same byte.

The schemes' canonical forms and HMACs are in L{gateway.auth.aliyun_schemes},
the nonces seen in L{gateway.auth.nonce_cache}, the refusals in
L{gateway.auth.aliyun_errors}.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Mapping

import attrs

from gateway.auth.aliyun_errors import Reason, SignatureError
from gateway.auth.aliyun_schemes import (
    ACS3_ALGORITHMS,
    acs3_canonical_request,
    acs3_signature,
    acs3_string_to_sign,
    rpc_signature,
    rpc_string_to_sign,
)
from gateway.auth.nonce_cache import NonceCache

#: Seconds a request's time may differ from ours, either way.
WINDOW = 15 * 60

_MAX_NONCE = 256


def parse_timestamp(text: str) -> float:
    """
    An ISO 8601 UTC time such as C{2024-05-01T12:00:00Z} as POSIX seconds.

    @raise SignatureError: C{BAD_TIMESTAMP} when it is not one, or has no zone.
    """
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None or "T" not in text:
        raise SignatureError(
            Reason.BAD_TIMESTAMP,
            f"the time {text!r} is not ISO 8601 UTC (yyyy-MM-ddTHH:mm:ssZ)",
        )
    return when.timestamp()


@attrs.frozen
class SignedRequest:
    """
    What a signature covers.

    @ivar method: C{"POST"} or C{"GET"}.
    @ivar path: the raw path, C{"/"}.
    @ivar query: the query string's parameters, percent-decoded.
    @ivar form: the parameters of a form-encoded body (signed by the HMAC-SHA1
        scheme; the ACS3 scheme signs the body's hash instead).
    @ivar headers: the headers, names lower-cased.
    @ivar body: the body.
    """

    method: str
    path: str
    query: Mapping[str, bytes]
    form: Mapping[str, bytes] = attrs.field(factory=dict)
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        """
        The value of the header C{name}, C{None} when absent.

        @raise SignatureError: C{MALFORMED} when it is given more than once.
        """
        values = [value for key, value in self.headers if key == name]
        if len(values) > 1:
            raise SignatureError(
                Reason.MALFORMED, f"the header {name.decode()!r} is given twice"
            )
        return values[0].strip() if values else None


@attrs.frozen
class Signed:
    """
    A request whose signature and time are good (see L{Verifier.check}).

    @ivar access_key_id: the AccessKeyId that signed it.
    @ivar nonce: its nonce, qualified by the key (nonces are unique per key).
    @ivar until: when a replay of it would be out of the window.
    """

    access_key_id: str
    nonce: str
    until: float


def nonce_used() -> SignatureError:
    """The refusal of a replayed request."""
    return SignatureError(Reason.NONCE_USED, "the signature nonce was used already")


@attrs.frozen
class _Claim:
    """What a signed request claims, and the signature its key would give."""

    access_key_id: str
    signature: str
    expected: str = attrs.field(repr=False)
    time: str
    nonce: str


def _text(value: bytes | None, what: str) -> str:
    if value is None or not value:
        raise SignatureError(Reason.MALFORMED, f"{what} is missing")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureError(Reason.MALFORMED, f"{what} is not UTF-8") from None


class Verifier:
    """
    Checks signed requests against AccessKeys.

    @ivar secrets: AccessKeyId -> AccessKeySecret.
    @ivar nonces: the nonces seen within the window.
    @ivar window: seconds a request's time may be off.
    """

    def __init__(
        self,
        secrets: Mapping[str, str],
        nonces: NonceCache | None = None,
        window: float = WINDOW,
    ) -> None:
        self.secrets = secrets
        self.nonces = NonceCache() if nonces is None else nonces
        self.window = window

    def verify(self, request: SignedRequest, now: float) -> str:
        """
        Check C{request}'s signature, time and nonce; remember the nonce.

        @return: the AccessKeyId that signed it.
        @raise SignatureError: the request is unsigned, signed with an unknown key
            or a wrong secret, too old or too new, or a replay.
        @raise GatewayError: 429 when the nonce cache is full.
        """
        signed = self.check(request, now)
        if not self.nonces.add(signed.nonce, signed.until, now):
            raise nonce_used()
        return signed.access_key_id

    def check(self, request: SignedRequest, now: float) -> Signed:
        """
        Check C{request}'s signature and time, not its nonce: the caller
        remembers L{Signed.nonce} until L{Signed.until} (as L{verify} does).

        @raise SignatureError: as L{verify}, but never for a replay.
        """
        params = {**request.query, **request.form}
        if "SecurityToken" in params or request.header(b"x-acs-security-token"):
            raise SignatureError(
                Reason.MALFORMED, "STS security tokens are not supported"
            )
        authorization = request.header(b"authorization")
        if authorization is not None and authorization.startswith(b"ACS3-"):
            claim = self._acs3(request, authorization)
        elif "Signature" in params:
            claim = self._rpc(request.method, params)
        elif authorization is not None:
            scheme = authorization.split(b" ", 1)[0].decode("latin-1")
            raise SignatureError(
                Reason.MALFORMED,
                f"the authorization scheme {scheme!r} is not supported; use "
                "ACS3-HMAC-SHA256 or the HMAC-SHA1 signature",
            )
        else:
            raise SignatureError(Reason.MALFORMED, "the request is not signed")
        if len(claim.nonce) > _MAX_NONCE:
            raise SignatureError(Reason.MALFORMED, "the signature nonce is too long")
        if not hmac.compare_digest(claim.signature.encode(), claim.expected.encode()):
            raise SignatureError(
                Reason.BAD_SIGNATURE,
                "the signature does not match; check the AccessKeySecret",
            )
        when = parse_timestamp(claim.time)
        if abs(now - when) > self.window:
            raise SignatureError(
                Reason.EXPIRED,
                f"the request time {claim.time} is more than {self.window / 60:g} "
                "minutes away from the gateway's clock",
            )
        # Kept while a replay would still be in the window; keyed by AccessKey, as
        # nonces need only be unique per key.
        return Signed(
            claim.access_key_id,
            f"{claim.access_key_id}\x00{claim.nonce}",
            when + self.window,
        )

    def _acs3(self, request: SignedRequest, authorization: bytes) -> _Claim:
        access_key_id, algorithm, signed_headers, signature = _acs3_authorization(
            authorization
        )
        time = _text(request.header(b"x-acs-date"), "the x-acs-date header")
        nonce = _text(
            request.header(b"x-acs-signature-nonce"),
            "the x-acs-signature-nonce header",
        )
        _check_acs3_signed_headers(request, signed_headers)
        secret = self._secret(access_key_id)
        # The hash of the body received, not the x-acs-content-sha256 claimed.
        payload_hash = hashlib.new(ACS3_ALGORITHMS[algorithm], request.body).hexdigest()
        canonical = acs3_canonical_request(
            request.method,
            request.path,
            request.query,
            headers=request.headers,
            signed_headers=signed_headers,
            payload_hash=payload_hash,
        )
        expected = acs3_signature(
            algorithm, secret, acs3_string_to_sign(algorithm, canonical)
        )
        return _Claim(access_key_id, signature.lower(), expected, time, nonce)

    def _rpc(self, method: str, params: Mapping[str, bytes]) -> _Claim:
        signature_method = _text(params.get("SignatureMethod"), "SignatureMethod")
        if signature_method != "HMAC-SHA1":
            raise SignatureError(
                Reason.MALFORMED,
                f"SignatureMethod {signature_method!r} is not supported; use HMAC-SHA1",
            )
        version = params.get("SignatureVersion")
        if version is not None and version != b"1.0":
            raise SignatureError(Reason.MALFORMED, "SignatureVersion must be 1.0")
        access_key_id = _text(params.get("AccessKeyId"), "AccessKeyId")
        signature = _text(params.get("Signature"), "Signature")
        time = _text(params.get("Timestamp"), "Timestamp")
        nonce = _text(params.get("SignatureNonce"), "SignatureNonce")
        secret = self._secret(access_key_id)
        expected = rpc_signature(secret, rpc_string_to_sign(method, params))
        return _Claim(access_key_id, signature, expected, time, nonce)

    def _secret(self, access_key_id: str) -> str:
        secret = self.secrets.get(access_key_id)
        if secret is None:
            raise SignatureError(Reason.UNKNOWN_KEY, "the AccessKeyId is not known")
        return secret


def _acs3_authorization(value: bytes) -> tuple[str, str, str, str]:
    """
    The AccessKeyId, algorithm, signed header names and signature of an
    C{Authorization: ACS3-... Credential=,SignedHeaders=,Signature=} value.
    """
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise SignatureError(
            Reason.MALFORMED, "the Authorization header is not ASCII"
        ) from None
    algorithm, _, rest = text.partition(" ")
    if algorithm not in ACS3_ALGORITHMS:
        raise SignatureError(
            Reason.MALFORMED,
            f"the signature algorithm {algorithm!r} is not supported; use "
            + " or ".join(ACS3_ALGORITHMS),
        )
    fields = {}
    for part in rest.split(","):
        name, _, field = part.strip().partition("=")
        fields[name] = field
    credential = fields.get("Credential", "")
    signed_headers = fields.get("SignedHeaders", "")
    signature = fields.get("Signature", "")
    if not (credential and signed_headers and signature):
        raise SignatureError(
            Reason.MALFORMED,
            "the Authorization header needs Credential, SignedHeaders and Signature",
        )
    return credential, algorithm, signed_headers, signature


def _check_acs3_signed_headers(request: SignedRequest, signed_headers: str) -> None:
    """
    The signature must cover the time, the nonce and every other C{x-acs-*}
    header (the action and version among them), or those could be changed.
    """
    signed = set(signed_headers.split(";"))
    for name, _ in request.headers:
        text = name.decode("latin-1")
        if text.startswith("x-acs-") and text not in signed:
            raise SignatureError(
                Reason.MALFORMED, f"the header {text!r} must be signed"
            )
