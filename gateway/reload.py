# -*- test-case-name: tests.test_reload -*-
"""
SIGHUP (C{systemctl reload}): read the configuration again and apply what can
change while the daemon runs, without dropping a connection (SPEC section 10).

L{Reloader} re-reads the config file and puts each part in force on its own:
the password file, the ACL, C{[auth] allow_anonymous}, the TLS certificate, key,
client CA and CRL (for connections accepted from then on; open connections whose
device certificate the new CRL revokes or the new client CA no longer trusts
are closed), the C{[limits]}, and
it reopens the access log file (after log rotation). A part whose new file
cannot be used is refused with one log line naming the file, and its old
version stays in force; the other parts are applied all the same. Changes that
need new listeners or a new broker session (listen addresses, brokers, the auth
mode ...) are not applied: one log line names them and says a restart is needed.

L{ReloadOnSIGHUP} is the service that calls L{Reloader.reload} on SIGHUP.
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
from twisted.logger import Logger

from gateway.auth.acl import ACL
from gateway.auth.certs import TLSConfigError, load_server_options
from gateway.auth.files import AuthFileError
from gateway.auth.passwords import PasswordFile
from gateway.config import Config, ConfigError, LimitsConfig, TLSConfig, load
from gateway.signals import OnSignal

__all__ = ["ReloadOnSIGHUP", "ReloadReport", "Reloader", "command_line_loader"]

_log = Logger()

# What a reload does not apply, as "section.key" names; each needs a restart.
_RESTART_KEYS = (
    (
        "http",
        (
            "listen",
            "max_body",
            "idle_timeout",
            "max_connections_per_source",
            "max_batch",
        ),
    ),
    ("tls", ("listen",)),
    (
        "mqtt",
        (
            "brokers",
            "protocol",
            "client_id",
            "username",
            "password",
            "ca",
            "cert",
            "key",
            "keepalive",
            "publish_timeout",
        ),
    ),
    ("auth", ("mode",)),
    ("aliyun", ("instance_id", "access_keys", "payload_encoding")),
    ("admin", ("listen",)),
    ("log", ("access",)),
)


class PasswordsHolder(Protocol):
    """Where the password file is swapped in: an L{Authenticator}."""

    passwords: Any
    allow_anonymous: bool


class ACLHolder(Protocol):
    """Where the ACL is swapped in: the L{Gateway} core."""

    acl: Any


class TLSHolder(Protocol):
    """Where new TLS settings go: a L{ReloadableServerTLS}."""

    def swap(self, options: Any) -> int:
        """Make new connections with C{options}; close the open connections
        whose certificate they refuse and return how many."""


class Reopenable(Protocol):
    """A log file to reopen: an L{AccessLog}."""

    path: str

    def reopen(self) -> None:
        """Write what is buffered, close the file and open it again."""


@attrs.frozen
class ReloadReport:
    """
    What one reload did.

    @ivar applied: the parts put in force (C{"passwords"}, C{"acl"},
        C{"allow_anonymous"}, C{"tls"}, C{"limits"}, C{"access_log"}).
    @ivar refused: one line per part refused (the file and why).
    @ivar restart_needed: the changed keys a reload does not apply.
    """

    applied: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()


def command_line_loader(options: Mapping[str, Any]) -> Callable[[], Config] | None:
    """
    How to read the configuration again the way twistd's command line read it
    at start-up: the C{--config} file with the C{--listen}, C{--tls-listen},
    C{--broker} and C{--admin} overrides; C{None} without C{--config}.

    @param options: the parsed L{gateway.tap.Options}.
    """
    path = options["config"]
    if not path:
        return None

    def load_config() -> Config:
        return load(path).with_overrides(
            listen=options["listen"],
            tls_listen=options["tls-listen"],
            brokers=options["broker"],
            admin=options["admin"],
        )

    return load_config


class Reloader:
    """
    Re-reads the configuration and applies it to the running daemon's
    swappable parts (see the module docstring).
    """

    def __init__(
        self,
        running: Config,
        load_config: Callable[[], Config] | None,
        *,
        authenticator: PasswordsHolder | None = None,
        gateway: ACLHolder | None = None,
        tls: TLSHolder | None = None,
        apply_limits: Callable[[LimitsConfig], None] | None = None,
        access_log: Reopenable | None = None,
    ) -> None:
        """
        @param running: the configuration the daemon started with.
        @param load_config: reads the configuration again (see
            L{command_line_loader}); C{None} when there is no file, and then a
            reload only reopens the access log.
        @param authenticator: gets the new password file (C{.passwords}) and
            C{allow_anonymous}.
        @param gateway: gets the new ACL (C{.acl}).
        @param tls: gets new TLS settings (C{.swap()}); C{None} without HTTPS.
        @param apply_limits: puts new C{[limits]} in force; called only when
            they changed.
        @param access_log: reopened on every reload when it writes to a file.
        """
        self.running = running
        self.load_config = load_config
        self.authenticator = authenticator
        self.gateway = gateway
        self.tls = tls
        self.apply_limits = apply_limits
        self.access_log = access_log
        self._limits = running.limits
        self._tls_fingerprint = _fingerprint(running.tls) if tls else None
        self._passwords_path = running.auth.password_file
        self._acl_path = running.auth.acl_file

    def reload(self) -> ReloadReport:
        """
        Apply what changed, part by part; log one line per part applied or
        refused, and one naming the changes that need a restart.
        """
        applied: list[str] = []
        refused: list[str] = []

        def attempt(part: str, what: str, apply: Callable[[], str | None]) -> None:
            try:
                done = apply()
            except (AuthFileError, TLSConfigError, OSError, ValueError) as error:
                line = _one_line(error)
                refused.append(line)
                _log.error(
                    "Reload refused {what}: {error}; the previous one stays in force",
                    what=what,
                    error=line,
                )
            except Exception as error:
                refused.append(_one_line(error))
                _log.failure("Reload failed to apply {what}", what=what)
            else:
                if done is not None:
                    applied.append(part)
                    _log.info("Reload: {done}", done=done)

        if self.access_log is not None:
            attempt("access_log", "the access log", self._reopen_access_log)
        if self.load_config is None:
            _log.info("Reload: no configuration file; only the access log reopened")
            return ReloadReport(tuple(applied), tuple(refused))
        config, valid = self._read_config(refused)
        if self.authenticator is not None:
            attempt(
                "passwords",
                "the password file",
                lambda: self._reload_passwords(config),
            )
        if self.gateway is not None:
            attempt("acl", "the ACL", lambda: self._reload_acl(config))
        if self.tls is not None:
            attempt("tls", "the TLS settings", lambda: self._reload_tls(config.tls))
        if valid:
            if self.authenticator is not None:
                attempt(
                    "allow_anonymous",
                    "auth.allow_anonymous",
                    lambda: self._reload_anonymous(config),
                )
            if self.apply_limits is not None:
                attempt("limits", "the limits", lambda: self._reload_limits(config))
        restart = _restart_needed(self.running, config) if valid else []
        if restart:
            _log.warn(
                "Reload: {keys} changed; not applied until the gateway restarts",
                keys=", ".join(restart),
            )
        return ReloadReport(tuple(applied), tuple(refused), tuple(restart))

    def _read_config(self, refused: list[str]) -> tuple[Config, bool]:
        """
        The new configuration and whether it is valid; when it is not, the
        running one (so that the files it names are still read again).
        """
        assert self.load_config is not None
        try:
            return self.load_config(), True
        except ConfigError as error:
            source = self.running.source or "the configuration file"
            line = str(error)
            if source not in line:
                line = f"{source}: {line}"
            refused.append(line)
            _log.error(
                "Reload refused {error}; the running configuration stays in force "
                "(its password file, ACL and TLS files are read again)",
                error=line,
            )
            return self.running, False

    def _reopen_access_log(self) -> str | None:
        log = self.access_log
        assert log is not None
        if log.path == "-":
            return None
        # AccessLog.reopen closes the old file before opening the new one: make
        # sure the new one opens, or the log would be left closed.
        with open(log.path, "a", encoding="utf-8"):
            pass
        log.reopen()
        return f"reopened the access log {log.path}"

    def _reload_passwords(self, config: Config) -> str | None:
        assert self.authenticator is not None
        path = config.auth.password_file
        if path is None:
            if self._passwords_path is None:
                return None
            self.authenticator.passwords = None
            self._passwords_path = None
            return "no password file any more (auth.password_file is empty)"
        passwords = PasswordFile.load(path)
        self.authenticator.passwords = passwords
        self._passwords_path = path
        return f"password file {path} ({len(passwords)} users)"

    def _reload_acl(self, config: Config) -> str | None:
        assert self.gateway is not None
        path = config.auth.acl_file
        if path is None:
            if self._acl_path is None:
                return None
            self.gateway.acl = None
            self._acl_path = None
            return "no ACL any more (auth.acl_file is empty): any topic allowed"
        self.gateway.acl = ACL.load(path)
        self._acl_path = path
        return f"ACL {path}"

    def _reload_anonymous(self, config: Config) -> str | None:
        assert self.authenticator is not None
        allow = config.auth.allow_anonymous
        if allow == self.authenticator.allow_anonymous:
            return None
        self.authenticator.allow_anonymous = allow
        return f"auth.allow_anonymous = {str(allow).lower()}"

    def _reload_tls(self, tls: TLSConfig) -> str | None:
        assert self.tls is not None
        if not tls.listen:
            return None  # HTTPS turned off: a restart does it (tls.listen).
        fingerprint = _fingerprint(tls)
        if fingerprint == self._tls_fingerprint:
            # New settings would drop every TLS session cache and ticket key:
            # devices would all pay a full handshake after each logrotate.
            return None
        closed = self.tls.swap(load_server_options(tls))
        self._tls_fingerprint = fingerprint
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

    def _reload_limits(self, config: Config) -> str | None:
        assert self.apply_limits is not None
        limits = config.limits
        if limits == self._limits:
            return None
        self.apply_limits(limits)
        self._limits = limits
        return (
            f"limits: rate {limits.rate:g}/s burst {limits.burst}, per client "
            f"{limits.client_rate:g}/s burst {limits.client_burst}"
        )


def _one_line(error: Exception) -> str:
    text = str(error)
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.filename}: {error.strerror or error}"
    return text.splitlines()[0] if text else type(error).__name__


def _fingerprint(tls: TLSConfig) -> tuple[object, ...]:
    """What the TLS settings are made of: the mode, the paths and the files'
    contents (C{None} for a file that cannot be read)."""
    parts: list[object] = [tls.client_cert]
    for path in (tls.cert, tls.key, tls.client_ca, tls.crl):
        digest = None
        if path is not None:
            try:
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).digest()
            except OSError:
                pass
        parts.append((path, digest))
    return tuple(parts)


def _restart_needed(running: Config, new: Config) -> list[str]:
    changed = []
    for section, keys in _RESTART_KEYS:
        before, after = getattr(running, section), getattr(new, section)
        for key in keys:
            if getattr(before, key) != getattr(after, key):
                changed.append(f"{section}.{key}")
    return changed


class ReloadOnSIGHUP(OnSignal):
    """
    Calls C{reload} in the reactor thread whenever the process gets SIGHUP, while
    the service runs.
    """

    def __init__(self, reload: Callable[[], object], reactor: Any) -> None:
        """
        @param reload: what to do, e.g. L{Reloader.reload}.
        @param reactor: the running reactor (C{callWhenRunning},
            C{callFromThread}).
        """
        super().__init__(signal.SIGHUP, self.reload, reactor)
        self._reload = reload

    def reload(self) -> None:
        """Reload now (what SIGHUP does)."""
        _log.info("Received SIGHUP, reloading")
        try:
            self._reload()
        except Exception:
            _log.failure("Reload failed")
