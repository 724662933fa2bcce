# -*- test-case-name: tests.test_reload -*-
"""
The parts of the running daemon a reload swaps, behind one interface: each is a
L{Swappable} that puts a new configuration's version of itself in force, says
in one line what changed, and raises L{ConfigError} (a L{FileError} naming the
file) to refuse, leaving its old version in force.

The parts: the password file and C{allow_anonymous} (in the authenticator), the
ACL (in the core), the TLS settings (a L{ReloadableServerTLS}), the C{[limits]},
and the access log, which is reopened (after log rotation).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from typing import Any, Literal, Protocol

import attrs

from gateway.auth.acl import ACL
from gateway.auth.certs import load_server_options
from gateway.auth.files import FileError, read_bytes
from gateway.auth.passwords import PasswordFile
from gateway.config import Config, LimitsConfig, TLSConfig

__all__ = [
    "AccessLogPart",
    "FilePart",
    "LimitsPart",
    "SettingPart",
    "Swappable",
    "TLSPart",
    "daemon_parts",
]

#: What a part reads of the new configuration: C{"nothing"} (it is swapped
#: even without a configuration file), C{"files"} (the files it names are read
#: again even when the new configuration is invalid: the running one names
#: them then), C{"settings"} (only from a valid new configuration).
Reads = Literal["nothing", "files", "settings"]


class Swappable(Protocol):
    """One part of the daemon a reload can change."""

    #: Its name in L{gateway.reload.ReloadReport.applied}.
    part: str
    #: What it is, for the log line of a refusal.
    what: str
    reads: Reads

    def swap(self, config: Config) -> str | None:
        """
        Put C{config}'s version in force.

        @return: one line saying what changed, or C{None} when nothing did.
        @raise ConfigError: when the new version cannot be used; the old one
            stays in force.
        """


@attrs.define
class FilePart:
    """
    A file loaded into an attribute of its holder: the password file into the
    authenticator's C{passwords}, the ACL into the core's C{acl}.

    @ivar holder: whose C{attribute} gets the loaded file (or C{None}).
    @ivar path_of: the file's path in a configuration.
    @ivar load: reads the file; raises L{FileError}.
    @ivar describe: the line for a file loaded from a path.
    @ivar gone: the line for a file no longer configured.
    @ivar path: the path of the file in force.
    """

    part: str
    what: str
    holder: Any
    attribute: str
    path_of: Callable[[Config], str | None]
    load: Callable[[str], Any]
    describe: Callable[[str, Any], str]
    gone: str
    path: str | None
    reads: Reads = "files"

    def swap(self, config: Config) -> str | None:
        """Load the configured file into the holder (or clear it)."""
        path = self.path_of(config)
        if path is None:
            if self.path is None:
                return None
            setattr(self.holder, self.attribute, None)
            self.path = None
            return self.gone
        loaded = self.load(path)
        setattr(self.holder, self.attribute, loaded)
        self.path = path
        return self.describe(path, loaded)


# The files a reload reads again: part -> what, attribute of the holder, the
# path in a configuration, the loader, the line for a new file and for none.
_FILES: dict[str, tuple[str, str, Callable[[Config], str | None], Any, Any, str]] = {
    "passwords": (
        "the password file",
        "passwords",
        lambda config: config.auth.password_file,
        PasswordFile.load,
        lambda path, passwords: f"password file {path} ({len(passwords)} users)",
        "no password file any more (auth.password_file is empty)",
    ),
    "acl": (
        "the ACL",
        "acl",
        lambda config: config.auth.acl_file,
        ACL.load,
        lambda path, _: f"ACL {path}",
        "no ACL any more (auth.acl_file is empty): any topic allowed",
    ),
}


def file_part(part: str, holder: Any, running: Config) -> FilePart:
    """
    The file C{part} (C{"passwords"}: into C{authenticator.passwords};
    C{"acl"}: into C{core.acl}), in force as C{running} names it.
    """
    what, attribute, path_of, load, describe, gone = _FILES[part]
    return FilePart(
        part,
        what,
        holder=holder,
        attribute=attribute,
        path_of=path_of,
        load=load,
        describe=describe,
        gone=gone,
        path=path_of(running),
    )


@attrs.define
class SettingPart:
    """
    A setting copied into an attribute of its holder when it changed.

    @ivar value_of: the setting's value in a configuration.
    @ivar describe: the line for a new value.
    """

    part: str
    what: str
    holder: Any
    attribute: str
    value_of: Callable[[Config], object]
    describe: Callable[[object], str]
    reads: Reads = "settings"

    def swap(self, config: Config) -> str | None:
        """Set the holder's attribute to the configured value."""
        value = self.value_of(config)
        if value == getattr(self.holder, self.attribute):
            return None
        setattr(self.holder, self.attribute, value)
        return self.describe(value)


def allow_anonymous_part(authenticator: Any) -> SettingPart:
    """C{[auth] allow_anonymous}, in C{authenticator.allow_anonymous}."""
    return SettingPart(
        "allow_anonymous",
        "auth.allow_anonymous",
        holder=authenticator,
        attribute="allow_anonymous",
        value_of=lambda config: config.auth.allow_anonymous,
        describe=lambda allow: f"auth.allow_anonymous = {str(allow).lower()}",
    )


class TLSHolder(Protocol):
    """Where new TLS settings go: a L{ReloadableServerTLS}."""

    def swap(self, options: Any) -> int:
        """Make new connections with C{options}; close the open connections
        whose certificate they refuse and return how many."""


class TLSPart:
    """The TLS certificate, key, client CA and CRL, for new connections."""

    part = "tls"
    what = "the TLS settings"
    reads: Reads = "files"

    def __init__(self, tls: TLSHolder, running: Config) -> None:
        self._tls = tls
        self._fingerprint = _fingerprint(running.tls)

    def swap(self, config: Config) -> str | None:
        """Swap in new TLS settings when the files changed."""
        tls = config.tls
        if not tls.listen:
            return None  # HTTPS turned off: a restart does it (tls.listen).
        fingerprint = _fingerprint(tls)
        if fingerprint == self._fingerprint:
            # New settings would drop every TLS session cache and ticket key:
            # devices would all pay a full handshake after each logrotate.
            return None
        closed = self._tls.swap(load_server_options(tls))
        self._fingerprint = fingerprint
        files = ", ".join(
            path for path in (tls.cert, tls.key, tls.client_ca, tls.crl) if path
        )
        done = f"TLS settings for new connections ({files})"
        if closed:
            done += (
                f"; closed {closed} open connection(s) whose device certificate "
                "they refuse"
            )
        return done


def _fingerprint(tls: TLSConfig) -> tuple[object, ...]:
    """What the TLS settings are made of: the mode, the paths and the files'
    contents (C{None} for a file that cannot be read)."""
    parts: list[object] = [tls.client_cert]
    for path in (tls.cert, tls.key, tls.client_ca, tls.crl):
        digest = None
        if path is not None:
            with contextlib.suppress(FileError):
                digest = hashlib.sha256(read_bytes(path)).digest()
        parts.append((path, digest))
    return tuple(parts)


class LimitsPart:
    """The C{[limits]}, put in force by a callable."""

    part = "limits"
    what = "the limits"
    reads: Reads = "settings"

    def __init__(self, apply: Callable[[LimitsConfig], None], running: Config) -> None:
        self._apply = apply
        self._limits = running.limits

    def swap(self, config: Config) -> str | None:
        """Apply the limits when they changed."""
        limits = config.limits
        if limits == self._limits:
            return None
        self._apply(limits)
        self._limits = limits
        return (
            f"limits: rate {limits.rate:g}/s burst {limits.burst}, per client "
            f"{limits.client_rate:g}/s burst {limits.client_burst}"
        )


class Reopenable(Protocol):
    """A log file to reopen: an L{AccessLog}."""

    path: str

    def reopen(self) -> None:
        """Write what is buffered, close the file and open it again."""


@attrs.define
class AccessLogPart:
    """The access log file, reopened on every reload (after log rotation)."""

    _log: Reopenable
    part: str = "access_log"
    what: str = "the access log"
    reads: Reads = "nothing"

    def swap(self, config: Config) -> str | None:
        """Reopen the file (standard output is left alone)."""
        log = self._log
        if log.path == "-":
            return None
        # AccessLog.reopen closes the old file before opening the new one: make
        # sure the new one opens, or the log would be left closed.
        try:
            with open(log.path, "a", encoding="utf-8"):
                pass
        except OSError as e:
            raise FileError(log.path, None, f"cannot open: {e.strerror or e}") from None
        log.reopen()
        return f"reopened the access log {log.path}"


def daemon_parts(
    running: Config,
    *,
    authenticator: Any = None,
    core: Any = None,
    tls: TLSHolder | None = None,
    apply_limits: Callable[[LimitsConfig], None] | None = None,
    access_log: Reopenable | None = None,
) -> list[Swappable]:
    """
    The swappable parts of a daemon, in the order a reload swaps them.

    @param running: the configuration the daemon started with.
    @param authenticator: gets the password file (C{.passwords}) and
        C{allow_anonymous}.
    @param core: gets the ACL (C{.acl}).
    @param tls: gets new TLS settings (C{.swap()}); C{None} without HTTPS.
    @param apply_limits: puts new C{[limits]} in force.
    @param access_log: reopened on every reload.
    """
    parts: list[Swappable] = []
    if access_log is not None:
        parts.append(AccessLogPart(access_log))
    if authenticator is not None:
        parts.append(file_part("passwords", authenticator, running))
    if core is not None:
        parts.append(file_part("acl", core, running))
    if tls is not None:
        parts.append(TLSPart(tls, running))
    if authenticator is not None:
        parts.append(allow_anonymous_part(authenticator))
    if apply_limits is not None:
        parts.append(LimitsPart(apply_limits, running))
    return parts
