# -*- test-case-name: tests.config.test_loader -*-
"""
The brokers of C{[mqtt] brokers} and C{--broker}: C{mqtt://} and C{mqtts://} URIs
parsed into addresses; and the C{redis://} URL of C{[cluster] redis}.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote

import attrs

from gateway.config.error import ConfigError

__all__ = ["BrokerAddress", "RedisAddress", "parse_broker_uri", "parse_redis_url"]


@attrs.frozen
class BrokerAddress:
    """
    One broker of C{[mqtt] brokers}.

    @ivar uri: the URI as written.
    @ivar host: the host name or IP address (an IPv6 address without brackets).
    @ivar port: the port; 1883 for C{mqtt://} and 8883 for C{mqtts://} when not given.
    @ivar tls: whether the broker is reached over TLS (C{mqtts://}).
    """

    uri: str
    host: str
    port: int
    tls: bool

    def client_endpoint_string(self) -> str:
        """
        The Twisted client endpoint string for a plain TCP connection to the broker,
        e.g. C{"tcp:host=127.0.0.1:port=1883"}; colons of IPv6 hosts are escaped.

        For C{mqtts://} this is still the TCP form: TLS is layered on top by the
        caller with C{optionsForClientTLS}, which verifies the server name.
        """
        host = self.host.replace("\\", "\\\\").replace(":", "\\:")
        return f"tcp:host={host}:port={self.port}"


_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_HOST_NAME = re.compile(r"\w[\w.-]*")
_DOTTED_NUMBERS = re.compile(r"[\d.]+")


def parse_broker_uri(uri: str, label: str = "broker") -> BrokerAddress:
    """
    Parse a broker URI (C{mqtt://host[:port]} or C{mqtts://host[:port]}).

    IPv6 addresses are written in brackets (C{mqtt://[::1]:1883}, a zone as
    C{%25eth0}); a trailing C{/} is allowed. User info, paths, queries and fragments
    are refused, as is any other scheme.

    @param label: what the error names (a key or a command-line option).
    @raise ConfigError: C{"<label>: <why>"} when the URI is not usable.
    """

    def fail(reason: str) -> ConfigError:
        return ConfigError(f"{label}: {reason}")

    scheme, separator, rest = uri.partition("://")
    if not separator:
        raise fail(f"expected a URI such as 'mqtt://host:1883', got {uri!r}")
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise fail(f"unsupported scheme {scheme!r} (use mqtt:// or mqtts://)")
    if "?" in rest or "#" in rest:
        raise fail("a broker URI has no query or fragment")
    authority, slash, path = rest.partition("/")
    if path:
        raise fail(f"a broker URI has no path, got {slash + path!r}")
    if "@" in authority:
        # Never echo it: it may hold a password.
        raise fail(
            "user info is not allowed in a broker URI "
            "(set mqtt.username and mqtt.password)"
        )
    if authority.startswith("["):
        host, bracket, after = authority[1:].partition("]")
        if not bracket:
            raise fail(f"missing ']' in {authority!r}")
        host = host.replace("%25", "%")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise fail(f"{host!r} is not a valid IPv6 address") from None
        if after and not after.startswith(":"):
            raise fail(f"unexpected {after!r} after the IPv6 address")
        port_text = after[1:] if after else None
    else:
        if authority.count(":") > 1:
            raise fail("IPv6 addresses must be in brackets, e.g. mqtt://[::1]:1883")
        host, colon, port_text_ = authority.partition(":")
        port_text = port_text_ if colon else None
        if not host:
            raise fail("missing host")
        if not _HOST_NAME.fullmatch(host):
            raise fail(f"invalid host {host!r}")
        if _DOTTED_NUMBERS.fullmatch(host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise fail(f"{host!r} is not a valid IPv4 address") from None
    if port_text is None:
        port = _DEFAULT_PORTS[scheme]
    elif not port_text.isascii() or not port_text.isdigit():
        raise fail(f"the port must be a number, got {port_text!r}")
    else:
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise fail(f"the port must be between 1 and 65535, got {port}")
    return BrokerAddress(uri=uri, host=host, port=port, tls=scheme == "mqtts")


@attrs.frozen
class RedisAddress:
    """
    The Redis server of C{[cluster] redis}.

    @ivar host: the host name or IP address (an IPv6 address without brackets).
    @ivar port: the port, 6379 when not given.
    @ivar db: the database number, 0 when not given.
    @ivar username: the ACL user name, or C{None}.
    @ivar password: the password, or C{None}; never shown by C{repr}.
    """

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    @property
    def display(self) -> str:
        """The URL as logs show it: without credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


def parse_redis_url(url: str, label: str = "cluster.redis") -> RedisAddress:
    """
    Parse C{redis://[[user]:password@]host[:port][/db]}; user and password are
    percent-decoded. Queries, fragments and other schemes are refused.

    @raise ConfigError: C{"<label>: <why>"}; the text never shows a password.
    """

    def fail(reason: str) -> ConfigError:
        return ConfigError(f"{label}: {reason}")

    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() != "redis":
        raise fail("expected a URL such as 'redis://127.0.0.1:6379/0'")
    if "?" in rest or "#" in rest:
        raise fail("a Redis URL has no query or fragment")
    authority, _, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon else None
        if password is None:
            # "redis://secret@host" is how some clients write a lone password.
            username, password = None, unquote(user_text)
    path = path.rstrip("/")
    if not path:
        db = 0
    elif path.isascii() and path.isdigit() and len(path) <= 5:
        db = int(path)
    else:
        raise fail(f"the database must be a number, got {path!r}")
    # The host and port are checked as a broker's are.
    address = parse_broker_uri(f"mqtt://{hostport}", label)
    port = address.port if hostport.rpartition("]")[2].count(":") else 6379
    return RedisAddress(address.host, port, db, username, password)
