"""
Reading password and ACL files, and the error of one that cannot be used.
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


def read_text(path: str, error: type[AuthFileError]) -> str:
    """
    The UTF-8 text of the file at C{path}.

    @raise AuthFileError: of type C{error}, naming C{path} (and the line of the
        first byte that is not UTF-8).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise error(path, None, f"cannot read: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(path, line, "not UTF-8") from None
