"""
The values of the message path: the connection handle whose closing broker mode
hears.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.model import Connection, Identity


class ConnectionTests(SynchronousTestCase):
    """A connection handle tells whoever asked, once, that it closed."""

    def test_when_closed(self) -> None:
        """Callbacks run once, in order, when the connection closes; after
        that a new one runs at once."""
        connection = Connection("c1")
        heard: list[str] = []
        connection.when_closed(lambda: heard.append("a"))
        connection.when_closed(lambda: heard.append("b"))
        self.assertEqual((heard, connection.closed), ([], False))
        connection.close()
        connection.close()
        self.assertEqual((heard, connection.closed), (["a", "b"], True))
        connection.when_closed(lambda: heard.append("c"))
        self.assertEqual(heard, ["a", "b", "c"])

    def test_failing_callback(self) -> None:
        """A callback that raises is logged; the others still run."""
        connection = Connection("c1")
        heard: list[str] = []

        def broken() -> None:
            raise RuntimeError("boom")

        connection.when_closed(broken)
        connection.when_closed(lambda: heard.append("after"))
        connection.close()
        self.assertEqual(heard, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_identity_equality(self) -> None:
        """The handle travels with an identity without changing what it
        equals."""
        self.assertEqual(Identity("d", connection=Connection("c1")), Identity("d"))
