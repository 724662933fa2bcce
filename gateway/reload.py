# -*- test-case-name: tests.test_reload -*-
"""
SIGHUP (C{systemctl reload}): read the configuration again and apply what can
change while the daemon runs, without dropping a connection.

L{Reloader} re-reads the config file and has each part (a
L{gateway.swappable.Swappable}) put it in force on its own:
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

import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.logger import Logger

from gateway.config import Config, ConfigError, load
from gateway.signals import OnSignal
from gateway.swappable import Swappable

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
    ("cluster", ("redis", "on_redis_error")),
    ("admin", ("listen",)),
    ("log", ("access",)),
)


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
    Re-reads the configuration and has each swappable part put it in force
    (see the module docstring).
    """

    def __init__(
        self,
        running: Config,
        load_config: Callable[[], Config] | None,
        parts: Sequence[Swappable] = (),
    ) -> None:
        """
        @param running: the configuration the daemon started with.
        @param load_config: reads the configuration again (see
            L{command_line_loader}); C{None} when there is no file, and then a
            reload only swaps the parts that read nothing of it (the access
            log).
        @param parts: what a reload changes, in order (see
            L{gateway.swappable.daemon_parts}).
        """
        self.running = running
        self.load_config = load_config
        self.parts = tuple(parts)

    def reload(self) -> ReloadReport:
        """
        Apply what changed, part by part; log one line per part applied or
        refused, and one naming the changes that need a restart.
        """
        applied: list[str] = []
        refused: list[str] = []

        def swap(part: Swappable, config: Config) -> None:
            try:
                done = part.swap(config)
            except ConfigError as error:
                line = _one_line(error)
                refused.append(line)
                _log.error(
                    "Reload refused {what}: {error}; the previous one stays in force",
                    what=part.what,
                    error=line,
                )
            except Exception as error:
                refused.append(_one_line(error))
                _log.failure("Reload failed to apply {what}", what=part.what)
            else:
                if done is not None:
                    applied.append(part.part)
                    _log.info("Reload: {done}", done=done)

        for part in self.parts:
            if part.reads == "nothing":
                swap(part, self.running)
        if self.load_config is None:
            _log.info("Reload: no configuration file; only the access log reopened")
            return ReloadReport(tuple(applied), tuple(refused))
        config, valid = self._read_config(refused)
        for part in self.parts:
            if part.reads == "files" or (part.reads == "settings" and valid):
                swap(part, config)
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


def _one_line(error: Exception) -> str:
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


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
