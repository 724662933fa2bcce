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
"""

from __future__ import annotations

import base64
import datetime
import enum
import hashlib
import hmac
import math
import os
from collections.abc import Mapping
from urllib.parse import quote

import attrs

from gateway.errors import Code, GatewayError

#: Seconds a request's time may differ from ours, either way.
WINDOW = 15 * 60

#: The ACS3 algorithms verified: name -> hash name for hashlib/hmac.
ACS3_ALGORITHMS: dict[str, str] = {"ACS3-HMAC-SHA256": "sha256"}
if "sm3" in hashlib.algorithms_available:  # pragma: no branch
    ACS3_ALGORITHMS["ACS3-HMAC-SM3"] = "sm3"

_MAX_NONCE = 256


class Reason(enum.Enum):
    """Why a request's signature was refused."""

    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown-key"
    BAD_SIGNATURE = "bad-signature"
    BAD_TIMESTAMP = "bad-timestamp"
    EXPIRED = "expired"
    NONCE_USED = "nonce-used"


class SignatureError(GatewayError):
    """
    A request whose signature does not prove that it comes from a configured
    AccessKey, now.

    @ivar reason: which check failed.
    """

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(Code.Unauthorized, message)
        self.reason = reason

    @property
    def failed_authentication(self) -> bool:
        """
        Whether this looks like guessing or replaying rather than a client with a
        wrong clock: an unknown key, a wrong signature or a reused nonce.
        """
        return self.reason in (
            Reason.UNKNOWN_KEY,
            Reason.BAD_SIGNATURE,
            Reason.NONCE_USED,
        )


def percent_encode(value: bytes | str) -> str:
    """
    RFC 3986 percent-encoding as Alibaba signs it: everything but
    C{A-Z a-z 0-9 - _ . ~} is C{%XX} (upper-case hex), a space is C{%20}.
    """
    return quote(value, safe="~")


def canonical_query(params: Mapping[str, bytes]) -> str:
    """
    C{name=value} pairs, percent-encoded, sorted by encoded name, joined by C{&};
    empty values are kept (C{name=}).
    """
    pairs = sorted((percent_encode(k), percent_encode(v)) for k, v in params.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


def rpc_string_to_sign(method: str, params: Mapping[str, bytes]) -> str:
    """
    The HMAC-SHA1 scheme's string to sign: C{METHOD&%2F&} and the percent-encoded
    canonical query of every parameter but C{Signature}.
    """
    signed = {k: v for k, v in params.items() if k != "Signature"}
    return f"{method}&{percent_encode('/')}&{percent_encode(canonical_query(signed))}"


def rpc_signature(secret: str, string_to_sign: str) -> str:
    """Base64 of HMAC-SHA1 keyed with C{secret + "&"}."""
    digest = hmac.digest(
        (secret + "&").encode("utf-8"), string_to_sign.encode("utf-8"), "sha1"
    )
    return base64.b64encode(digest).decode("ascii")


def canonical_headers(
    headers: tuple[tuple[bytes, bytes], ...], names: list[bytes]
) -> bytes:
    r"""
    C{name:value\n} for each of C{names} (lower case) in that order; values
    stripped, several values of one name sorted and joined by C{,}.

    @raise SignatureError: a signed header is not in the request.
    """
    lines = []
    for name in names:
        values = sorted(value.strip() for key, value in headers if key == name)
        if not values:
            raise SignatureError(
                Reason.MALFORMED, f"the signed header {name.decode()!r} is missing"
            )
        lines.append(name + b":" + b",".join(values) + b"\n")
    return b"".join(lines)


def acs3_canonical_request(
    method: str,
    path: str,
    query: Mapping[str, bytes],
    *,
    headers: tuple[tuple[bytes, bytes], ...],
    signed_headers: str,
    payload_hash: str,
) -> bytes:
    """
    The ACS3 canonical request: method, path, canonical query, canonical signed
    headers, the signed header names and the hex hash of the body, one per line.
    """
    names = [name.encode("ascii") for name in signed_headers.split(";")]
    return b"\n".join(
        [
            method.encode("ascii"),
            path.encode("utf-8"),
            canonical_query(query).encode("ascii"),
            canonical_headers(headers, names),
            signed_headers.encode("ascii"),
            payload_hash.encode("ascii"),
        ]
    )


def acs3_string_to_sign(algorithm: str, canonical_request: bytes) -> str:
    r"""C{ALGORITHM\n} and the hex hash of the canonical request."""
    digest = hashlib.new(ACS3_ALGORITHMS[algorithm], canonical_request).hexdigest()
    return f"{algorithm}\n{digest}"


def acs3_signature(algorithm: str, secret: str, string_to_sign: str) -> str:
    """Hex HMAC of C{string_to_sign} keyed with C{secret}."""
    return hmac.new(
        secret.encode("utf-8"),
        string_to_sign.encode("utf-8"),
        ACS3_ALGORITHMS[algorithm],
    ).hexdigest()


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


class NonceCache:
    """
    The nonces of accepted requests, each kept until its request's time is out of
    the window, so that a replay within the window is recognised.

    Bounded in time (whole slots of C{slot} seconds are dropped as they expire)
    and in size: beyond C{max_entries} live nonces, L{add} refuses new ones rather
    than forget live ones, which would let their requests be replayed. Nonces are
    kept as 64-bit keyed digests (about 60 bytes each), the key random per process.
    """

    def __init__(self, max_entries: int = 1_000_000, slot: float = 60.0) -> None:
        self.max_entries = max_entries
        self.slot = slot
        self._slots: dict[int, set[int]] = {}
        self._size = 0
        self._key = os.urandom(16)

    def __len__(self) -> int:
        return self._size

    def add(self, nonce: str, until: float, now: float) -> bool:
        """
        Remember C{nonce} until at least C{until}.

        @return: C{False} if it is remembered already (a replay), else C{True}.
        @raise GatewayError: 429 C{RateLimited} when the cache is full.
        """
        self._expire(now)
        digest = int.from_bytes(
            hashlib.blake2b(
                nonce.encode("utf-8"), digest_size=8, key=self._key
            ).digest(),
            "big",
        )
        for members in self._slots.values():
            if digest in members:
                return False
        if self._size >= self.max_entries:
            first = min(self._slots) * self.slot
            raise GatewayError(
                Code.RateLimited,
                "too many signed requests within the replay window",
                retry_after=max(1, math.ceil(first - now)),
            )
        index = math.ceil(until / self.slot)
        self._slots.setdefault(index, set()).add(digest)
        self._size += 1
        return True

    def _expire(self, now: float) -> None:
        for index in [i for i in self._slots if i * self.slot < now]:
            self._size -= len(self._slots.pop(index))


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
