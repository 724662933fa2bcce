"""
Requests to Alibaba's C{SendMessage} as the official SDKs sign them: made by the
SDKs' own signing code (C{alibabacloud-tea-openapi}, and C{aliyun-python-sdk-core}
for the older SDK), with one key, secret and time unless told otherwise.
"""

from __future__ import annotations

import hashlib
import os
import time
from types import SimpleNamespace
from urllib.parse import urlencode

from gateway.auth.aliyun_schemes import ACS3_ALGORITHMS
from gateway.model import Connection, Peer
from gateway.web.messages import HTTPRequest

NOW = 1_700_000_000.0
KEY_ID = "LTAI5tTestKeyId"
SECRET = "s3cr3t/AccessKey+Secret"
HOST = "gateway.example:8080"
SEND = {"InstanceId": "mqtt-cn-1", "MqttTopic": "home/a b", "Payload": "hi +there"}


def stamp(when: float) -> str:
    """A time as the SDKs write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def new_sdk() -> object:
    from alibabacloud_tea_openapi.utils import (  # type: ignore[import-untyped]
        Utils,
    )

    return Utils


def acs3_request(
    params: dict[str, str] | None = None,
    *,
    key_id: str = KEY_ID,
    secret: str = SECRET,
    when: float = NOW,
    nonce: str | None = None,
    body: bytes = b"",
    method: str = "POST",
    host: str = HOST,
    algorithm: str = "ACS3-HMAC-SHA256",
    action: str = "SendMessage",
    version: str = "2020-04-20",
) -> HTTPRequest:
    """
    A request signed with ACS3 by the new SDK's own code
    (C{alibabacloud_tea_openapi.utils.Utils.get_authorization}), its query
    encoded as the new SDK puts it on the wire (C{urlencode}: spaces as C{+}).
    """
    utils: object = new_sdk()
    query = dict(SEND if params is None else params)
    payload_hash = hashlib.new(ACS3_ALGORITHMS[algorithm], body).hexdigest()
    headers = {
        "host": host,
        "x-acs-version": version,
        "x-acs-action": action,
        "user-agent": "AlibabaCloud (Linux; x86_64) Python/3.11.7 Core/0.4.3 TeaDSL/2",
        "x-acs-date": stamp(when),
        "x-acs-signature-nonce": nonce or os.urandom(16).hex(),
        "accept": "application/json",
        "x-acs-content-sha256": payload_hash,
        "x-acs-credentials-provider": "static_ak",
    }
    sdk_request = SimpleNamespace(
        pathname="/", method=method, query=query, headers=headers
    )
    authorization = utils.get_authorization(  # type: ignore[attr-defined]
        sdk_request, algorithm, payload_hash, key_id, secret
    )
    wire = [(k.encode(), v.encode()) for k, v in headers.items()]
    wire.append((b"authorization", authorization.encode()))
    return HTTPRequest(
        method=method,
        path=b"/",
        query=urlencode(query).encode(),
        headers=tuple(wire),
        body=body,
        connection=Connection("c0ffee", Peer("127.0.0.1", 5000)),
    )


def rpc_query(
    params: dict[str, str] | None = None,
    *,
    key_id: str = KEY_ID,
    secret: str = SECRET,
    when: float = NOW,
    nonce: str | None = None,
    method: str = "POST",
) -> dict[str, str]:
    """
    The parameters of a request signed with HMAC-SHA1 by the new SDK's own code
    (C{Utils.get_rpcsignature}, as with C{signature_algorithm="v2"}).
    """
    utils: object = new_sdk()
    query = {
        "Action": "SendMessage",
        "Format": "json",
        "Version": "2020-04-20",
        "Timestamp": stamp(when),
        "SignatureNonce": nonce or os.urandom(16).hex(),
        **(SEND if params is None else params),
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "AccessKeyId": key_id,
    }
    query["Signature"] = utils.get_rpcsignature(  # type: ignore[attr-defined]
        query, method, secret
    )
    return query


def rpc_request(
    params: dict[str, str] | None = None, *, method: str = "POST", **kw: object
) -> HTTPRequest:
    """L{rpc_query} as an HTTP request, encoded as the new SDK sends it."""
    query = rpc_query(params, method=method, **kw)  # type: ignore[arg-type]
    return HTTPRequest(
        method=method,
        path=b"/",
        query=urlencode(query).encode(),
        headers=((b"host", HOST.encode()),),
        connection=Connection("c0ffee", Peer("127.0.0.1", 5000)),
    )


def old_sdk_request(
    params: dict[str, str] | None = None, *, secret: str = SECRET
) -> tuple[HTTPRequest, str]:
    """
    A request signed by the old SDK's own code (C{aliyunsdkcore}'s RPC signature
    composer), with its URL as the old SDK sends it (spaces as C{%20}), and the
    old SDK's string to sign.
    """
    from aliyunsdkcore.auth.composer.rpc_signature_composer import (  # type: ignore[import-untyped]
        get_signed_url,
    )

    params = dict(SEND if params is None else params)
    params.update(
        {
            "Version": "2020-04-20",
            "Action": "SendMessage",
            "RegionId": "cn-hangzhou",
        }
    )
    url, string_to_sign = get_signed_url(params, KEY_ID, secret, "JSON", "POST", {})
    path, _, query = url.partition("?")
    return (
        HTTPRequest(method="POST", path=path.encode(), query=query.encode()),
        string_to_sign,
    )
