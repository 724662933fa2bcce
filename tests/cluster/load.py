"""
Load for the fleet tests: POSTs to several gateways at once from persistent
HTTP connections in this process, counting the statuses each answered.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import time
from collections import Counter
from typing import Any
from urllib.parse import urlencode

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

KEY_ID = "LTAI5tFleetKeyId"
SECRET = "fleet/AccessKey+Secret"
INSTANCE = "mqtt-cn-fleet"


class Client:
    """
    An HTTP client on the real reactor, keeping its connections open unless
    C{persistent} is false (then each request has a connection of its own).
    """

    def __init__(
        self, reactor: Any, connections: int = 16, *, persistent: bool = True
    ) -> None:
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.pool.maxPersistentPerHost = connections
        self.agent = Agent(reactor, pool=self.pool)

    async def post(
        self,
        url: str,
        body: bytes = b"x",
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> tuple[int, Headers, bytes]:
        """One POST: its status, headers and body."""
        response = await self.agent.request(
            b"POST",
            url.encode(),
            Headers(headers or {}),
            FileBodyProducer(io.BytesIO(body)),
        )
        return response.code, response.headers, await readBody(response)

    async def hammer(
        self,
        urls: list[str],
        seconds: float,
        *,
        concurrency: int = 6,
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> tuple[Counter[int], float]:
        """
        POST to C{urls} in turn from C{concurrency} loops per URL for C{seconds};
        fires with the count of each status (-1: no response) and the seconds
        from the first request to the last answer.
        """
        statuses: Counter[int] = Counter()
        started = self.reactor.seconds()
        deadline = started + seconds
        turn = itertools.cycle(urls)

        async def loop(url: str) -> None:
            while self.reactor.seconds() < deadline:
                try:
                    status, _, _ = await self.post(url, headers=headers)
                except Exception:
                    status = -1
                statuses[status] += 1

        loops = [
            ensureDeferred(loop(next(turn))) for _ in range(concurrency * len(urls))
        ]
        await DeferredList(loops, consumeErrors=True)
        return statuses, self.reactor.seconds() - started

    def close(self) -> Any:
        """Close the kept connections."""
        return self.pool.closeCachedConnections()


def signed_send_message(topic: str, payload: str) -> str:
    """
    The query string of a C{SendMessage} signed now with HMAC-SHA1 by the
    Alibaba SDK's own code, as C{signature_algorithm="v2"} sends it.
    """
    from alibabacloud_tea_openapi.utils import (  # type: ignore[import-untyped]
        Utils,
    )

    query = {
        "Action": "SendMessage",
        "Format": "json",
        "Version": "2020-04-20",
        "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "SignatureNonce": os.urandom(16).hex(),
        "InstanceId": INSTANCE,
        "MqttTopic": topic,
        "Payload": payload,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "AccessKeyId": KEY_ID,
    }
    query["Signature"] = Utils.get_rpcsignature(query, "POST", SECRET)
    return urlencode(query)


def code_of(body: bytes) -> str:
    """The error code of an API 1 or API 2 JSON error body."""
    document = json.loads(body)
    return str(document.get("code") or document.get("Code"))
