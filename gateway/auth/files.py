"""
The error of a password or ACL file that cannot be used.
"""

from __future__ import annotations


class AuthFileError(Exception):
    """
    A file that cannot be used. C{str()} is one line naming the file and, where
    there is one, the line: C{"acl:4: invalid topic filter 'a/#/b'"}. It never
    contains a password or a hash.

    @ivar name: the file's name (its path when loaded).
    @ivar line: the 1-based line number, or C{None} for the file as a whole.
    @ivar reason: what is wrong.
    """

    def __init__(self, name: str, line: int | None, reason: str) -> None:
        where = name if line is None else f"{name}:{line}"
        super().__init__(f"{where}: {reason}")
        self.name = name
        self.line = line
        self.reason = reason
