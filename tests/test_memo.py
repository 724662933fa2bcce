"""
The bounded memo of the message path: short keys kept, long ones not, never
more than its bound.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.memo import ShortMemo


class ShortMemoTests(SynchronousTestCase):
    def test_short_keys_kept(self) -> None:
        memo: ShortMemo[str, int] = ShortMemo(max_entries=3, max_length=4)
        self.assertEqual(memo.remember("ab", 1), 1)
        self.assertEqual(memo.get("ab"), 1)

    def test_long_keys_not_kept(self) -> None:
        """A key over C{max_length} is answered but not kept."""
        memo: ShortMemo[str, int] = ShortMemo(max_entries=3, max_length=4)
        self.assertEqual(memo.remember("abcde", 2), 2)
        self.assertIsNone(memo.get("abcde"))

    def test_bounded(self) -> None:
        """At C{max_entries} the memo starts again: never more than the bound."""
        memo: ShortMemo[str, int] = ShortMemo(max_entries=3, max_length=4)
        for n in range(10):
            memo.remember(str(n), n)
            self.assertLessEqual(len(memo), 3)
        self.assertEqual(memo.get("9"), 9)
