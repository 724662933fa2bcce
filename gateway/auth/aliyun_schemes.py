# -*- test-case-name: tests.auth.test_aliyun_signature -*-
"""
The two Alibaba Cloud OpenAPI signature schemes as pure functions: the canonical
forms that are signed and their HMACs, for ACS3-HMAC-SHA256 (and SM3) and for
the RPC HMAC-SHA1 scheme. L{gateway.auth.aliyun_signature} checks requests with
them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import quote

from gateway.auth.aliyun_errors import Reason, SignatureError

#: The ACS3 algorithms verified: name -> hash name for hashlib/hmac.
ACS3_ALGORITHMS: dict[str, str] = {"ACS3-HMAC-SHA256": "sha256"}
if "sm3" in hashlib.algorithms_available:  # pragma: no branch
    ACS3_ALGORITHMS["ACS3-HMAC-SM3"] = "sm3"


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
