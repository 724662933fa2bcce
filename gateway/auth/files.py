# -*- test-case-name: tests.test_reload -*-
"""
Reading the files the configuration names (password file, ACL, TLS and broker
certificates), and the one error of a file that cannot be used.

L{FileError} is a L{ConfigError}: whoever checks a configuration (start-up, a
reload) catches that one type, whether a key or a file is at fault.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from gateway.config import ConfigError

__all__ = ["FileError", "load_setting", "read_bytes", "read_text"]

T = TypeVar("T")


class FileError(ConfigError):
    """
    A file that cannot be used. C{str()} is one line naming the file and, where
    there is one, the line: C{"acl:4: invalid topic filter 'a/#/b'"}; with the
    setting C{key} that names the file, the key first and then the reason (which
    names the file): C{"tls.cert: cannot read /x.crt: No such file or
    directory"}. It never contains a password or a hash.

    @ivar name: the file's name (its path when loaded).
    @ivar line: the 1-based line number, or C{None} for the file as a whole.
    @ivar reason: what is wrong.
    @ivar key: the setting naming the file, if known.
    """

    def __init__(
        self, name: str, line: int | None, reason: str, key: str | None = None
    ) -> None:
        where = name if line is None else f"{name}:{line}"
        super().__init__(f"{key}: {reason}" if key else f"{where}: {reason}")
        self.name = name
        self.line = line
        self.reason = reason
        self.key = key


def read_bytes(path: str, key: str | None = None) -> bytes:
    """
    The contents of the file at C{path}.

    @param key: the setting that names the file, for the message.
    @raise FileError: naming C{path} (and C{key}).
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        why = e.strerror or str(e)
        if key:
            raise FileError(path, None, f"cannot read {path}: {why}", key) from None
        raise FileError(path, None, f"cannot read: {why}") from None


def read_text(path: str) -> str:
    """
    The UTF-8 text of the file at C{path}.

    @raise FileError: naming C{path} (and the line of the first byte that is
        not UTF-8).
    """
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise FileError(path, line, "not UTF-8") from None


def load_setting(key: str, path: str | None, load: Callable[[str], T]) -> T | None:
    """
    The file of the setting C{key} loaded with C{load}, or C{None} when not set.

    @raise ConfigError: naming the key, file and line for an unreadable or bad
        file.
    """
    if path is None:
        return None
    try:
        return load(path)
    except FileError as e:
        raise ConfigError(f"{key}: {e}") from None
