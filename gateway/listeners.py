# -*- test-case-name: tests.test_tap -*-
"""
The listening side of the service tree: the endpoints of C{[http] listen},
C{[tls] listen} and C{[admin] listen}, parsed once, the L{Listener} service for
each, and the cap on HTTP connections the open-file limit allows.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger

from gateway.config import Config, ConfigError
from gateway.proxied import server_endpoint
from gateway.startup import StartupError
from gateway.web.server import connection_limit, limited_by_open_files, open_file_limit

__all__ = ["Endpoints", "Listener", "connection_cap", "parse_endpoints"]

_log = Logger()

#: One listening address: its endpoint string and the endpoint made of it.
Endpoint = tuple[str, IStreamServerEndpoint]


@attrs.frozen
class Endpoints:
    """
    Every listening endpoint of a configuration, parsed.

    @ivar http: those of C{[http] listen}.
    @ivar tls: those of C{[tls] listen}.
    @ivar admin: that of C{[admin] listen}, if set.
    """

    http: tuple[Endpoint, ...]
    tls: tuple[Endpoint, ...]
    admin: Endpoint | None


def parse_endpoints(config: Config, reactor: Any) -> Endpoints:
    """
    Parse every listening endpoint string of C{config} for C{reactor}.

    @raise ConfigError: naming the key and the string of one that is bad.
    """

    def parse(key: str, descriptions: tuple[str, ...]) -> tuple[Endpoint, ...]:
        parsed = []
        for description in descriptions:
            try:
                # A PROXY header may take as long as an idle connection lives.
                timeout = config.http.idle_timeout
                endpoint = server_endpoint(reactor, description, timeout)
                parsed.append((description, endpoint))
            except Exception as e:
                raise ConfigError(f"{key}: bad endpoint {description!r}: {e}") from None
        return tuple(parsed)

    admin = parse("admin.listen", (config.admin.listen,) if config.admin.listen else ())
    return Endpoints(
        http=parse("http.listen", config.http.listen),
        tls=parse("tls.listen", config.tls.listen),
        admin=admin[0] if admin else None,
    )


class Listener(StreamServerEndpointService):
    """
    Listens on one endpoint as soon as twistd starts the services, so that a port
    that cannot be bound stops start-up with one line.
    """

    _log = Logger()

    def __init__(
        self,
        description: str,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        kind: str = "HTTP",
    ) -> None:
        super().__init__(endpoint, factory)
        self.description = description
        self.kind = kind

    def privilegedStartService(self) -> None:
        """Listen now; raise L{StartupError} when that fails."""
        self._raiseSynchronously = True
        try:
            super().privilegedStartService()
        except Exception as e:
            raise StartupError(f"cannot listen on {self.description}: {e}") from None
        self._log.info(
            "Serving {kind} on {endpoint}", kind=self.kind, endpoint=self.description
        )


def connection_cap(per_source: int, open_files: int | None = None) -> int:
    """
    The cap on HTTP connections for the process's open-file limit (or
    C{open_files}); when that limit is what holds the cap down, one log line
    says so, with the cap it implies and the share of one address.
    """
    if open_files is None:
        open_files = open_file_limit()
    cap = connection_limit(open_files)
    if limited_by_open_files(open_files):
        _log.warn(
            "The open-file limit (RLIMIT_NOFILE) is {open_files}: at most {cap} "
            "HTTP connections are served at once, {per_source} from one client "
            "address{all}; raise the limit (systemd LimitNOFILE=) to serve more",
            open_files=open_files,
            cap=cap,
            per_source=min(per_source, cap),
            all=" (http.max_connections_per_source is not below the cap: one "
            "address can take every connection)"
            if per_source >= cap
            else "",
        )
    return cap
