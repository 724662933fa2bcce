"""
L{SharedNonces}: one C{SET NX} per signed request, a local cache first, and
C{on_redis_error} when Redis does not answer.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.cluster.nonces import SharedNonces
from gateway.errors import GatewayError
from tests.cluster.fakes import FakeStore


class SharedNoncesTests(SynchronousTestCase):
    def result(self, d: Any) -> Any:
        return self.successResultOf(d)

    def test_fresh_and_replayed(self) -> None:
        """Fresh where Redis had no such key; a replay where it had one."""
        store = FakeStore()
        nonces = SharedNonces(store)
        first = nonces.add("key\x00n1", until=900.0, now=0.0)
        call = store.answer(True)
        self.assertEqual(call.name, "set")
        self.assertTrue(call.keys[0].startswith("mqtt-http-gateway:nonce:"))
        self.assertEqual(call.args, [900_000])
        self.assertTrue(self.result(first))
        other = nonces.add("key\x00n2", until=900.0, now=0.0)
        store.answer(False)
        self.assertFalse(self.result(other))

    def test_local_replay_asks_nothing(self) -> None:
        """A nonce this process accepted is refused without a round trip."""
        store = FakeStore()
        nonces = SharedNonces(store)
        nonces.add("n", until=900.0, now=0.0)
        store.answer(True)
        self.assertFalse(self.result(nonces.add("n", until=900.0, now=1.0)))
        self.assertEqual(len(store.calls), 1)

    def test_open_when_down(self) -> None:
        """Redis gone mid-call or before: accepted on the local cache alone."""
        store = FakeStore("open")
        nonces = SharedNonces(store)
        during = nonces.add("a", until=900.0, now=0.0)
        store.fail()
        self.assertTrue(self.result(during))
        self.assertTrue(self.result(nonces.add("b", until=900.0, now=0.0)))
        self.assertFalse(self.result(nonces.add("b", until=900.0, now=0.0)))
        self.assertEqual(len(store.calls), 1)

    def test_closed_when_down(self) -> None:
        """Failing closed: 503 while Redis does not answer."""
        store = FakeStore("closed")
        nonces = SharedNonces(store)
        during = nonces.add("a", until=900.0, now=0.0)
        store.fail()
        self.assertEqual(self.failureResultOf(during, GatewayError).value.status, 503)
        after = nonces.add("b", until=900.0, now=0.0)
        self.assertEqual(self.failureResultOf(after, GatewayError).value.status, 503)
