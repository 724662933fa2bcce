"""
Alibaba request signatures: the canonical strings of both schemes
built from the recipe, agreement with the official SDKs' own signing code, and the
refusals: wrong keys and secrets, tampering, clock skew, replays.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.aliyun_errors import Reason, SignatureError
from gateway.auth.aliyun_schemes import (
    ACS3_ALGORITHMS,
    acs3_canonical_request,
    acs3_signature,
    acs3_string_to_sign,
    canonical_query,
    percent_encode,
    rpc_signature,
    rpc_string_to_sign,
)
from gateway.auth.aliyun_signature import WINDOW, Verifier, parse_timestamp
from gateway.auth.nonce_cache import NonceCache
from gateway.errors import Code, GatewayError
from gateway.web.aliyun_requests import parse_parameters, signed_request
from gateway.web.messages import HTTPRequest
from tests.aliyun_sdk import (
    KEY_ID,
    NOW,
    SECRET,
    SEND,
    acs3_request,
    old_sdk_request,
    rpc_request,
)


def with_query(request: HTTPRequest, **changes: str) -> HTTPRequest:
    """C{request} with some parameters changed after it was signed."""
    params = {k: v.decode() for k, v in parse_parameters(request.query).items()}
    params.update(changes)
    return HTTPRequest(
        method=request.method,
        path=request.path,
        query=urlencode(params).encode(),
        headers=request.headers,
        body=request.body,
    )


def with_header(request: HTTPRequest, name: bytes, value: bytes | None) -> HTTPRequest:
    """C{request} with a header replaced (or removed, or added)."""
    headers = [(k, v) for k, v in request.headers if k != name]
    if value is not None:
        headers.append((name, value))
    return HTTPRequest(
        method=request.method,
        path=request.path,
        query=request.query,
        headers=tuple(headers),
        body=request.body,
    )


class PercentEncodingTests(SynchronousTestCase):
    def test_rfc3986(self) -> None:
        """Only A-Z a-z 0-9 - _ . ~ stay; space is %20, '+' %2B, '*' %2A, '/'
        %2F; UTF-8 bytes are %XX in upper case."""
        self.assertEqual(percent_encode("aZ09-_.~"), "aZ09-_.~")
        self.assertEqual(percent_encode("a b+c*d/e"), "a%20b%2Bc%2Ad%2Fe")
        self.assertEqual(percent_encode("\u00e9"), "%C3%A9")
        self.assertEqual(percent_encode(b"\xff"), "%FF")

    def test_plus_and_percent20_are_one_space(self) -> None:
        """The new SDK sends a space as '+', the old one as '%20': both read as
        the same value, and a literal '+' (%2B) stays a plus."""
        self.assertEqual(
            parse_parameters(b"a=x+y&b=x%20y&c=x%2By&d=&e"),
            {"a": b"x y", "b": b"x y", "c": b"x+y", "d": b"", "e": b""},
        )

    def test_canonical_query(self) -> None:
        """Sorted by name, values encoded, empty values kept as 'name='."""
        self.assertEqual(
            canonical_query({"b": b"2 3", "a": b"", "C": b"~*"}),
            "C=~%2A&a=&b=2%203",
        )


class RPCRecipeTests(SynchronousTestCase):
    def test_documented_example(self) -> None:
        """Alibaba's documented HMAC-SHA1 example (DescribeRegions, secret
        'testsecret') gives its documented string to sign and signature."""
        params = {
            "AccessKeyId": b"testid",
            "Action": b"DescribeRegions",
            "Format": b"XML",
            "SignatureMethod": b"HMAC-SHA1",
            "SignatureNonce": b"3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
            "SignatureVersion": b"1.0",
            "Timestamp": b"2016-02-23T12:46:24Z",
            "Version": b"2014-05-26",
        }
        string_to_sign = rpc_string_to_sign("GET", params)
        self.assertEqual(
            string_to_sign,
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML"
            "%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-"
            "a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12"
            "%253A46%253A24Z%26Version%3D2014-05-26",
        )
        self.assertEqual(
            rpc_signature("testsecret", string_to_sign), "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        )

    def test_recipe(self) -> None:
        """Every parameter but Signature, empty ones too, sorted, encoded twice;
        the key is the secret and '&'."""
        params = {"b": b"x y", "SignatureType": b"", "Signature": b"ignored"}
        string_to_sign = rpc_string_to_sign("POST", params)
        self.assertEqual(string_to_sign, "POST&%2F&SignatureType%3D%26b%3Dx%2520y")
        import base64

        expected = base64.b64encode(
            hmac.digest(b"k&", string_to_sign.encode(), "sha1")
        ).decode()
        self.assertEqual(rpc_signature("k", string_to_sign), expected)


class ACS3RecipeTests(SynchronousTestCase):
    def test_canonical_request(self) -> None:
        """Method, path, sorted query (%20 for spaces), the signed headers as
        'name:value' lines, their names, the body's hash: line by line."""
        canonical = acs3_canonical_request(
            "POST",
            "/",
            {"MqttTopic": b"a b", "InstanceId": b"i", "Empty": b""},
            headers=(
                (b"host", b"h:1"),
                (b"x-acs-date", b" 2024-01-01T00:00:00Z "),
                (b"x-acs-multi", b"b"),
                (b"x-acs-multi", b"a"),
                (b"user-agent", b"not signed"),
            ),
            signed_headers="host;x-acs-date;x-acs-multi",
            payload_hash=hashlib.sha256(b"").hexdigest(),
        )
        self.assertEqual(
            canonical,
            b"POST\n/\nEmpty=&InstanceId=i&MqttTopic=a%20b\n"
            b"host:h:1\nx-acs-date:2024-01-01T00:00:00Z\nx-acs-multi:a,b\n\n"
            b"host;x-acs-date;x-acs-multi\n"
            b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        string_to_sign = acs3_string_to_sign("ACS3-HMAC-SHA256", canonical)
        self.assertEqual(
            string_to_sign,
            "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical).hexdigest(),
        )
        self.assertEqual(
            acs3_signature("ACS3-HMAC-SHA256", "k", string_to_sign),
            hmac.new(b"k", string_to_sign.encode(), "sha256").hexdigest(),
        )


# Prefixed so as not to collide with the common parameters (Timestamp, ...).
_names = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz").map(
    lambda name: "X" + name
)
_params = st.dictionaries(_names, st.text(), max_size=6)


class SDKAgreementTests(SynchronousTestCase):
    """Whatever the values, the gateway accepts what the SDKs sign."""

    @given(_params)
    def test_new_sdk_rpc(self, params: dict[str, str]) -> None:
        """HMAC-SHA1 as C{alibabacloud_tea_openapi} signs it, sent with '+'."""
        request = signed_request(rpc_request(params))
        self.assertEqual(Verifier({KEY_ID: SECRET}).verify(request, NOW), KEY_ID)

    @given(_params)
    def test_old_sdk_rpc(self, params: dict[str, str]) -> None:
        """HMAC-SHA1 as C{aliyunsdkcore} signs it, sent with '%20': the same
        string to sign, and the request verifies."""
        http, sdk_string_to_sign = old_sdk_request(params)
        request = signed_request(http)
        self.assertEqual(rpc_string_to_sign("POST", request.query), sdk_string_to_sign)
        self.assertEqual(
            Verifier({KEY_ID: SECRET}).verify(request, time.time()), KEY_ID
        )

    @given(_params)
    def test_new_sdk_acs3(self, params: dict[str, str]) -> None:
        """ACS3-HMAC-SHA256 as C{alibabacloud_tea_openapi} signs it."""
        request = signed_request(acs3_request(params))
        self.assertEqual(Verifier({KEY_ID: SECRET}).verify(request, NOW), KEY_ID)

    def test_acs3_sm3(self) -> None:
        """ACS3-HMAC-SM3 (C{signature_algorithm="ACS3-HMAC-SM3"}) where OpenSSL
        has SM3."""
        if "ACS3-HMAC-SM3" not in ACS3_ALGORITHMS:
            raise self.skipTest("no SM3 in this OpenSSL")
        request = signed_request(acs3_request(algorithm="ACS3-HMAC-SM3"))
        self.assertEqual(Verifier({KEY_ID: SECRET}).verify(request, NOW), KEY_ID)


class VerifierTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.verifier = Verifier({KEY_ID: SECRET, "other": "other-secret"})

    def verify(self, request: HTTPRequest, now: float = NOW) -> str:
        return self.verifier.verify(signed_request(request), now)

    def refused(self, request: HTTPRequest, reason: Reason, now: float = NOW) -> str:
        with self.assertRaises(SignatureError) as e:
            self.verify(request, now)
        self.assertEqual(e.exception.reason, reason, e.exception.message)
        self.assertEqual(e.exception.code, Code.Unauthorized)
        message: str = e.exception.message
        self.assertNotIn(SECRET, message)
        return message

    def test_both_schemes(self) -> None:
        """Both schemes, POST and GET, give the AccessKeyId."""
        for request in (
            acs3_request(),
            acs3_request(method="GET", nonce="n2"),
            rpc_request(nonce="n3"),
            rpc_request(method="GET", nonce="n4"),
        ):
            self.assertEqual(self.verify(request), KEY_ID)

    def test_unknown_key(self) -> None:
        """An AccessKeyId that is not configured."""
        self.refused(acs3_request(key_id="LTAIunknown"), Reason.UNKNOWN_KEY)
        self.refused(rpc_request(key_id="LTAIunknown"), Reason.UNKNOWN_KEY)

    def test_wrong_secret(self) -> None:
        """Signed with another secret, or with another key's secret."""
        self.refused(acs3_request(secret="wrong"), Reason.BAD_SIGNATURE)
        self.refused(rpc_request(secret="wrong"), Reason.BAD_SIGNATURE)
        self.refused(acs3_request(secret="other-secret"), Reason.BAD_SIGNATURE)

    def test_tampered_parameters(self) -> None:
        """A parameter changed, added or dropped after signing; an empty one
        dropped too (empty parameters are signed)."""
        for request in (acs3_request(), rpc_request()):
            self.refused(with_query(request, MqttTopic="other"), Reason.BAD_SIGNATURE)
            self.refused(with_query(request, Extra=""), Reason.BAD_SIGNATURE)
        signed = rpc_request({**SEND, "Empty": ""})
        params = parse_parameters(signed.query)
        del params["Empty"]
        dropped = HTTPRequest(
            method="POST",
            path=b"/",
            query=urlencode({k: v.decode() for k, v in params.items()}).encode(),
        )
        self.refused(dropped, Reason.BAD_SIGNATURE)

    def test_tampered_method_headers_body(self) -> None:
        """ACS3 covers the method, the signed headers and the body."""
        request = acs3_request(body=b"a=1", nonce="n5")
        self.assertEqual(self.verify(request), KEY_ID)
        get = HTTPRequest(
            method="GET", path=b"/", query=request.query, headers=request.headers
        )
        self.refused(get, Reason.BAD_SIGNATURE)
        self.refused(with_header(request, b"host", b"evil:1"), Reason.BAD_SIGNATURE)
        changed_body = HTTPRequest(
            method="POST",
            path=b"/",
            query=request.query,
            headers=request.headers,
            body=b"a=2",
        )
        self.refused(changed_body, Reason.BAD_SIGNATURE)
        self.refused(
            HTTPRequest(method="GET", path=b"/", query=rpc_request().query),
            Reason.BAD_SIGNATURE,
        )

    def test_unsigned_acs_header(self) -> None:
        """Every x-acs-* header must be signed: an added one is refused, and a
        signed header that is missing too."""
        request = acs3_request()
        self.refused(with_header(request, b"x-acs-action", None), Reason.MALFORMED)
        message = self.refused(
            with_header(request, b"x-acs-extra", b"1"), Reason.MALFORMED
        )
        self.assertIn("x-acs-extra", message)

    def test_malformed(self) -> None:
        """No signature, an unsupported algorithm or method, an STS token."""
        unsigned = HTTPRequest(method="POST", path=b"/", query=b"Action=SendMessage")
        self.refused(unsigned, Reason.MALFORMED)
        basic = with_header(unsigned, b"authorization", b"Basic dTpw")
        self.refused(basic, Reason.MALFORMED)
        request = acs3_request()
        auth = dict(request.headers)[b"authorization"]
        rsa = with_header(
            request, b"authorization", auth.replace(b"HMAC-SHA256", b"RSA-SHA256")
        )
        self.refused(rsa, Reason.MALFORMED)
        self.refused(
            with_header(request, b"authorization", b"ACS3-HMAC-SHA256 Credential=x"),
            Reason.MALFORMED,
        )
        rpc = rpc_request()
        self.refused(with_query(rpc, SignatureMethod="HMAC-SHA256"), Reason.MALFORMED)
        self.refused(with_query(rpc, SecurityToken="sts"), Reason.MALFORMED)
        self.refused(
            with_header(acs3_request(), b"x-acs-security-token", b"sts"),
            Reason.MALFORMED,
        )

    def test_clock_skew(self) -> None:
        """Up to 15 minutes off either way is accepted; beyond, refused as
        expired; a time that is not ISO 8601 UTC is refused as such."""
        self.assertEqual(WINDOW, 900)
        for skew, nonce in ((WINDOW, "a"), (-WINDOW, "b")):
            self.assertEqual(self.verify(acs3_request(nonce=nonce), NOW + skew), KEY_ID)
            self.assertEqual(
                self.verify(rpc_request(nonce=nonce + "-rpc"), NOW + skew), KEY_ID
            )
        for skew, nonce in ((WINDOW + 1, "c"), (-WINDOW - 1, "d")):
            self.refused(acs3_request(nonce=nonce), Reason.EXPIRED, NOW + skew)
            self.refused(rpc_request(nonce=nonce), Reason.EXPIRED, NOW + skew)
        for text in ("2023-11-14 22:13:20", "1700000000", "2023-11-14T22:13:20"):
            with self.assertRaises(SignatureError) as e:
                parse_timestamp(text)
            self.assertEqual(e.exception.reason, Reason.BAD_TIMESTAMP)
        self.assertEqual(parse_timestamp("2023-11-14T22:13:20Z"), NOW)
        self.assertEqual(parse_timestamp("2023-11-14T22:13:20.5+00:00"), NOW + 0.5)

    def test_replay(self) -> None:
        """A request seen once is refused the second time, whichever scheme
        carries the nonce; the same nonce from another key is another request."""
        request = acs3_request(nonce="once")
        self.assertEqual(self.verify(request), KEY_ID)
        message = self.refused(request, Reason.NONCE_USED, NOW + 1)
        self.assertIn("nonce", message)
        self.refused(rpc_request(nonce="once"), Reason.NONCE_USED)
        other = acs3_request(nonce="once", key_id="other", secret="other-secret")
        self.assertEqual(self.verify(other), "other")

    def test_refused_request_keeps_nonce_free(self) -> None:
        """A request with a wrong signature does not use up its nonce (or anyone
        could burn other clients' nonces)."""
        self.refused(rpc_request(nonce="n", secret="wrong"), Reason.BAD_SIGNATURE)
        self.assertEqual(self.verify(rpc_request(nonce="n")), KEY_ID)

    def test_failed_authentication(self) -> None:
        """Unknown keys, wrong signatures and replays count as failed
        authentications; a skewed clock or a malformed request do not."""
        counted = {r for r in Reason if SignatureError(r, "").failed_authentication}
        self.assertEqual(
            counted, {Reason.UNKNOWN_KEY, Reason.BAD_SIGNATURE, Reason.NONCE_USED}
        )


class NonceCacheTests(SynchronousTestCase):
    def test_remembered_until_expiry(self) -> None:
        """A nonce is refused until its time has passed, then forgotten."""
        cache = NonceCache(slot=60)
        self.assertTrue(cache.add("a", until=1000, now=0))
        self.assertFalse(cache.add("a", until=1000, now=999))
        self.assertEqual(len(cache), 1)
        self.assertTrue(cache.add("b", until=2000, now=1060))
        self.assertEqual(len(cache), 1)
        self.assertTrue(cache.add("a", until=2000, now=1060))

    def test_bounded(self) -> None:
        """Beyond max_entries live nonces new ones are refused with a 429 and a
        wait (forgetting live ones would allow their replay), live ones are still
        recognised, and expired ones make room."""
        cache = NonceCache(max_entries=2, slot=60)
        self.assertTrue(cache.add("a", until=100, now=0))
        self.assertTrue(cache.add("b", until=200, now=0))
        with self.assertRaises(GatewayError) as e:
            cache.add("c", until=200, now=10)
        self.assertEqual(
            (e.exception.code, e.exception.status), (Code.RateLimited, 429)
        )
        self.assertEqual(e.exception.retry_after, 110)
        self.assertFalse(cache.add("a", until=100, now=10))
        self.assertTrue(cache.add("c", until=300, now=121))
        self.assertEqual(len(cache), 2)

    def test_many(self) -> None:
        """Many nonces, each recognised."""
        cache = NonceCache()
        for i in range(10_000):
            self.assertTrue(cache.add(str(i), until=NOW + 900, now=NOW))
        self.assertFalse(cache.add("9999", until=NOW + 900, now=NOW + 1))
        self.assertEqual(len(cache), 10_000)
        cache.add("x", until=NOW + 2000, now=NOW + 1000)
        self.assertEqual(len(cache), 1)
