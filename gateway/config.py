# -*- test-case-name: tests.test_config -*-
"""
The gateway's settings: a TOML file (SPEC section 3) turned into frozen values.

L{load} reads a file, L{parse} validates an already-decoded document, L{default} is
what runs with no file at all, and L{Config.with_overrides} applies the command-line
options. Every problem is a L{ConfigError} whose text is one line naming the key (or
the file, or the command-line option), so start-up can print it and exit.

Paths are only resolved here (relative to the config file's folder); whoever opens
them at start-up reports a missing or unreadable file. Endpoint strings are not
checked here either: building the listeners with Twisted does that.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs


class ConfigError(Exception):
    """
    The configuration cannot be used.

    C{str(error)} is one line that starts with what is wrong: a key
    (C{"mqtt.keepalive: expected an integer, got 'x'"}), a file
    (C{"/etc/gw.toml: Expected '=' after a key ... (at line 3, column 5)"}) or a
    command-line option (C{"--broker: unsupported scheme 'http' ..."}).
    """


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


class SecretMapping(Mapping[str, str]):
    """
    An immutable, hashable C{str -> str} mapping whose C{repr} shows only the keys,
    so that secrets (such as AccessKey secrets) never reach a log.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, str] = dict(items or {})

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"SecretMapping(keys={sorted(self._items)!r})"


def _secret_mapping(items: Mapping[str, str]) -> SecretMapping:
    return items if isinstance(items, SecretMapping) else SecretMapping(items)


@attrs.frozen
class HTTPConfig:
    """
    C{[http]}: plain HTTP listeners and request limits.

    @ivar listen: Twisted server endpoint strings; may be empty when C{[tls] listen}
        is not.
    @ivar max_body: the largest accepted body in bytes (larger is a 413).
    @ivar idle_timeout: seconds an idle or stalled connection is kept.
    @ivar max_connections_per_source: the most connections open at once from
        one client address (more are answered 503 at once).
    @ivar max_batch: the most messages one C{POST /api/v5/publish/bulk} may carry
        (more is a 413).
    """

    listen: tuple[str, ...] = ("tcp:8080:interface=127.0.0.1",)
    max_body: int = 262144
    idle_timeout: float = 60.0
    max_connections_per_source: int = 256
    max_batch: int = 1000


@attrs.frozen
class TLSConfig:
    """
    C{[tls]}: HTTPS listeners and device certificates.

    Paths are absolute, or C{None} when not set. When C{listen} is not empty,
    C{cert} and C{key} are set, and so is C{client_ca} unless C{client_cert} is
    C{"none"}.

    @ivar client_cert: C{"none"}, C{"optional"} or C{"required"}.
    """

    listen: tuple[str, ...] = ()
    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None
    client_cert: str = "optional"
    crl: str | None = None


_DEFAULT_BROKER = BrokerAddress(
    uri="mqtt://127.0.0.1:1883", host="127.0.0.1", port=1883, tls=False
)


@attrs.frozen
class MQTTConfig:
    """
    C{[mqtt]}: the brokers and the gateway's own session.

    @ivar brokers: the brokers in failover order, never empty.
    @ivar brokers_configured: whether C{brokers} came from the file or the command
        line (otherwise the embedded broker runs at the default address).
    @ivar protocol: C{"5"}, C{"3.1.1"} or C{"auto"}.
    @ivar client_id: the gateway's client id; C{{hostname}} is replaced by
        L{gateway_client_id}.
    @ivar password: never shown by C{repr}.
    @ivar ca: the CA file for C{mqtts://} brokers, or C{None} for the system store.
    @ivar cert: the gateway's client certificate for C{mqtts://}, or C{None}; set
        together with C{key}.
    @ivar keepalive: the MQTT keep-alive in seconds, 0 to 65535.
    @ivar publish_timeout: seconds to wait for the broker's acknowledgement.
    """

    brokers: tuple[BrokerAddress, ...] = (_DEFAULT_BROKER,)
    brokers_configured: bool = False
    protocol: str = "auto"
    client_id: str = "mqtt-http-gateway-{hostname}"
    username: str = ""
    password: str = attrs.field(default="", repr=False)
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    keepalive: int = 60
    publish_timeout: float = 10.0

    def gateway_client_id(self, hostname: str | None = None) -> str:
        """
        C{client_id} with C{{hostname}} replaced by C{hostname}
        (by default C{socket.gethostname()}).
        """
        if "{hostname}" not in self.client_id:
            return self.client_id
        if hostname is None:
            hostname = socket.gethostname()
        return self.client_id.replace("{hostname}", hostname)


@attrs.frozen
class AuthConfig:
    """
    C{[auth]}: who may publish (SPEC section 6).

    @ivar mode: C{"gateway"} (the gateway checks passwords and the ACL) or
        C{"broker"} (the broker does, on a session per sender).
    @ivar password_file: absolute path of a mosquitto_passwd file, or C{None}.
    @ivar acl_file: absolute path of a mosquitto acl_file, or C{None}.
    """

    mode: str = "gateway"
    password_file: str | None = None
    acl_file: str | None = None
    allow_anonymous: bool = False


@attrs.frozen
class LimitsConfig:
    """
    C{[limits]}: token buckets (rates in messages per second, 0 = off).

    Whenever a rate is above 0 its burst is at least 1.
    """

    rate: float = 1000.0
    burst: int = 1000
    client_rate: float = 0.0
    client_burst: int = 0


def _repr_access_keys(keys: Mapping[str, str]) -> str:
    return repr(sorted(keys))


@attrs.frozen
class AliyunConfig:
    """
    C{[aliyun]}: the Alibaba C{SendMessage} API (SPEC section 5).

    @ivar access_keys: AccessKeyId -> AccessKeySecret; immutable, and C{repr} shows
        only the ids. Not empty when C{instance_id} is set.
    @ivar payload_encoding: C{"raw"} or C{"base64"} (decode C{Payload}).
    """

    instance_id: str = ""
    access_keys: Mapping[str, str] = attrs.field(
        factory=SecretMapping, converter=_secret_mapping, repr=_repr_access_keys
    )
    payload_encoding: str = "raw"

    @property
    def enabled(self) -> bool:
        """Whether the C{SendMessage} API is served (C{instance_id} is set)."""
        return bool(self.instance_id)


@attrs.frozen
class AdminConfig:
    """C{[admin]}: the endpoint string of the admin listener, C{""} for none."""

    listen: str = ""


@attrs.frozen
class LogConfig:
    """
    C{[log]}: where the access log goes: C{"-"} standard output, C{""} nowhere,
    otherwise an absolute file path.
    """

    access: str = "-"


@attrs.frozen
class Config:
    """
    All settings, validated.

    @ivar source: the absolute path of the config file, or C{None}.
    """

    http: HTTPConfig = HTTPConfig()
    tls: TLSConfig = TLSConfig()
    mqtt: MQTTConfig = MQTTConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    aliyun: AliyunConfig = AliyunConfig()
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    source: str | None = None

    @property
    def embedded_broker(self) -> bool:
        """
        Whether the embedded broker runs: only when no broker was configured, in
        the file or on the command line.
        """
        return not self.mqtt.brokers_configured

    def with_overrides(
        self,
        *,
        listen: Sequence[str] = (),
        tls_listen: Sequence[str] = (),
        brokers: Sequence[str] = (),
        admin: str | None = None,
    ) -> Config:
        """
        This configuration with the command-line options applied: each one given
        (non-empty) replaces the file's value; brokers are validated as in the file
        and count as configured.

        @raise ConfigError: naming the option (C{"--broker: ..."}, C{"--listen: ..."},
            C{"--tls-listen: ..."}), e.g. for a bad URI or C{--tls-listen} without
            C{[tls] cert} and C{key} in the file.
        """
        config = self
        if listen:
            http = attrs.evolve(config.http, listen=_option_strings("--listen", listen))
            config = attrs.evolve(config, http=http)
        if tls_listen:
            tls = attrs.evolve(
                config.tls, listen=_option_strings("--tls-listen", tls_listen)
            )
            config = attrs.evolve(config, tls=tls)
        if brokers:
            addresses = tuple(
                parse_broker_uri(uri, label)
                for label, uri in _option_labels("--broker", brokers)
            )
            mqtt = attrs.evolve(config.mqtt, brokers=addresses, brokers_configured=True)
            config = attrs.evolve(config, mqtt=mqtt)
        if admin:
            config = attrs.evolve(config, admin=AdminConfig(listen=admin))
        _check(config, tls_option="--tls-listen" if tls_listen else None)
        return config


def _option_labels(option: str, values: Sequence[str]) -> Iterator[tuple[str, str]]:
    if len(values) == 1:
        yield option, values[0]
    else:
        for number, value in enumerate(values, 1):
            yield f"{option} #{number}", value


def _option_strings(option: str, values: Sequence[str]) -> tuple[str, ...]:
    for label, value in _option_labels(option, values):
        if not value:
            raise ConfigError(f"{label}: must not be empty")
    return tuple(values)


# Converters: (label, TOML value, base directory) -> settings value.
_Converter = Callable[[str, Any, str], Any]


def _describe(value: object, secret: bool = False) -> str:
    """How an error shows a value: TOML-like, and only its type when secret."""
    if isinstance(value, bool):
        return "a boolean" if secret else str(value).lower()
    if isinstance(value, int):
        return "an integer" if secret else repr(value)
    if isinstance(value, float):
        return "a number" if secret else repr(value)
    if isinstance(value, str):
        return "a string" if secret else repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _string(
    *,
    choices: Sequence[str] = (),
    non_empty: bool = False,
    secret: bool = False,
) -> _Converter:
    def convert(label: str, value: Any, base_dir: str) -> str:
        if not isinstance(value, str):
            raise ConfigError(
                f"{label}: expected a string, got {_describe(value, secret)}"
            )
        if choices and value not in choices:
            raise ConfigError(
                f"{label}: expected {_alternatives(choices)}, got {value!r}"
            )
        if non_empty and not value:
            raise ConfigError(f"{label}: must not be empty")
        return value

    return convert


def _boolean(label: str, value: Any, base_dir: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{label}: expected true or false, got {_describe(value)}")
    return value


def _integer(minimum: int, maximum: int | None = None) -> _Converter:
    def convert(label: str, value: Any, base_dir: str) -> int:
        # bool is an int in Python, but "keepalive = true" is a mistake.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{label}: expected an integer, got {_describe(value)}")
        if maximum is not None and not minimum <= value <= maximum:
            raise ConfigError(
                f"{label}: must be between {minimum} and {maximum}, got {value}"
            )
        if value < minimum:
            raise ConfigError(f"{label}: must be at least {minimum}, got {value}")
        return value

    return convert


def _number(*, positive: bool) -> _Converter:
    def convert(label: str, value: Any, base_dir: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{label}: expected a number, got {_describe(value)}")
        if not math.isfinite(value):
            raise ConfigError(
                f"{label}: expected a finite number, got {_describe(value)}"
            )
        if positive and value <= 0:
            raise ConfigError(f"{label}: must be greater than 0, got {value}")
        if value < 0:
            raise ConfigError(f"{label}: must be at least 0, got {value}")
        return float(value)

    return convert


def _strings(label: str, value: Any, base_dir: str) -> tuple[str, ...]:
    # A lone string is read as a one-element list: "listen = 'tcp:80'" is clear.
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(
            f"{label}: expected a list of strings, got {_describe(value)}"
        )
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(
                f"{label}[{index}]: expected a string, got {_describe(item)}"
            )
        if not item:
            raise ConfigError(f"{label}[{index}]: must not be empty")
    return tuple(value)


def _brokers(label: str, value: Any, base_dir: str) -> tuple[BrokerAddress, ...]:
    uris = _strings(label, value, base_dir)
    if not uris:
        raise ConfigError(
            f"{label}: must name at least one broker "
            "(leave the key out to run the embedded broker)"
        )
    return tuple(
        parse_broker_uri(uri, f"{label}[{index}]") for index, uri in enumerate(uris)
    )


def _protocol(label: str, value: Any, base_dir: str) -> str:
    # "protocol = 5" is what people type; 3.1.1 cannot be a TOML number.
    if value == 5 and type(value) is int:
        return "5"
    protocol: str = _string(choices=("5", "3.1.1", "auto"))(label, value, base_dir)
    return protocol


_PLACEHOLDER = re.compile(r"\{[^{}]*\}|[{}]")


def _client_id(label: str, value: Any, base_dir: str) -> str:
    client_id: str = _string(non_empty=True)(label, value, base_dir)
    if "\x00" in client_id:
        raise ConfigError(f"{label}: must not contain U+0000")
    for match in _PLACEHOLDER.finditer(client_id):
        if match.group() != "{hostname}":
            raise ConfigError(
                f"{label}: unknown placeholder {match.group()!r} "
                "(only {hostname} is replaced)"
            )
    return client_id


def _resolve(label: str, value: str, base_dir: str) -> str:
    if "\x00" in value:
        raise ConfigError(f"{label}: must not contain U+0000")
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))


def _path(label: str, value: Any, base_dir: str) -> str | None:
    path: str = _string()(label, value, base_dir)
    return _resolve(label, path, base_dir) if path else None


def _access_log(label: str, value: Any, base_dir: str) -> str:
    target: str = _string()(label, value, base_dir)
    if target in ("", "-"):
        return target
    return _resolve(label, target, base_dir)


def _access_keys(label: str, value: Any, base_dir: str) -> SecretMapping:
    if not isinstance(value, dict):
        raise ConfigError(
            f'{label}: expected a table of AccessKeyId = "AccessKeySecret", '
            f"got {_describe(value)}"
        )
    secret = _string(non_empty=True, secret=True)
    keys: dict[str, str] = {}
    for key_id, key_secret in value.items():
        item_label = _join(label, key_id)
        if not key_id:
            raise ConfigError(f"{item_label}: the AccessKeyId must not be empty")
        keys[key_id] = secret(item_label, key_secret, base_dir)
    return SecretMapping(keys)


_NON_NEGATIVE = _number(positive=False)

# The schema of SPEC section 3: section -> (settings class, key -> converter).
# Section names are the fields of Config, key names the fields of each class.
_SCHEMA: dict[str, tuple[type[Any], dict[str, _Converter]]] = {
    "http": (
        HTTPConfig,
        {
            "listen": _strings,
            "max_body": _integer(1),
            "idle_timeout": _number(positive=True),
            "max_connections_per_source": _integer(1),
            "max_batch": _integer(1),
        },
    ),
    "tls": (
        TLSConfig,
        {
            "listen": _strings,
            "cert": _path,
            "key": _path,
            "client_ca": _path,
            "client_cert": _string(choices=("none", "optional", "required")),
            "crl": _path,
        },
    ),
    "mqtt": (
        MQTTConfig,
        {
            "brokers": _brokers,
            "protocol": _protocol,
            "client_id": _client_id,
            "username": _string(),
            "password": _string(secret=True),
            "ca": _path,
            "cert": _path,
            "key": _path,
            "keepalive": _integer(0, 65535),
            "publish_timeout": _number(positive=True),
        },
    ),
    "auth": (
        AuthConfig,
        {
            "mode": _string(choices=("gateway", "broker")),
            "password_file": _path,
            "acl_file": _path,
            "allow_anonymous": _boolean,
        },
    ),
    "limits": (
        LimitsConfig,
        {
            "rate": _NON_NEGATIVE,
            "burst": _integer(0),
            "client_rate": _NON_NEGATIVE,
            "client_burst": _integer(0),
        },
    ),
    "aliyun": (
        AliyunConfig,
        {
            "instance_id": _string(),
            "access_keys": _access_keys,
            "payload_encoding": _string(choices=("raw", "base64")),
        },
    ),
    "admin": (AdminConfig, {"listen": _string()}),
    "log": (LogConfig, {"access": _access_log}),
}

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _join(prefix: str, key: object) -> str:
    """A dotted key as TOML would write it, quoted when needed; always one line."""
    text = str(key)
    if not _BARE_KEY.fullmatch(text):
        text = json.dumps(text)
    return f"{prefix}.{text}" if prefix else text


def _alternatives(names: Sequence[str]) -> str:
    quoted = [repr(name) for name in names]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _unknown(
    label: str, what: str, name: str, candidates: Sequence[str]
) -> ConfigError:
    """An error for an unknown name, with the closest valid name as a hint."""
    close = difflib.get_close_matches(name, candidates, n=1)
    if not close:
        # The right key in the wrong section (or no section at all).
        close = [
            f"{section}.{name}"
            for section, (_, keys) in _SCHEMA.items()
            if name in keys
        ]
    hint = f" (did you mean {_alternatives(close)}?)" if close else ""
    return ConfigError(f"{label}: unknown {what}{hint}")


def _section(name: str, table: Any, base_dir: str) -> Any:
    cls, converters = _SCHEMA[name]
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: expected a table [{name}], got {_describe(table)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        label = _join(name, key)
        if key not in converters:
            raise _unknown(label, "key", str(key), list(converters))
        values[key] = converters[key](label, value, base_dir)
    if "brokers" in values:
        values["brokers_configured"] = True
    return cls(**values)


def _check(config: Config, tls_option: str | None = None) -> None:
    """
    The rules that span keys.

    @param tls_option: the command-line option that set C{[tls] listen}, if any; it
        is named instead of C{tls.cert} (etc.) since the file alone was fine.
    """
    tls = config.tls
    if tls.listen:
        needed = [("tls.cert", tls.cert), ("tls.key", tls.key)]
        if tls.client_cert != "none":
            needed.append(("tls.client_ca", tls.client_ca))
        for key, path in needed:
            if path is not None:
                continue
            why = ""
            if key == "tls.client_ca":
                why = (
                    f"tls.client_cert is {tls.client_cert!r} "
                    '(or set tls.client_cert = "none")'
                )
            if tls_option:
                since = f" since {why}" if why else ""
                raise ConfigError(
                    f"{tls_option}: needs {key} in the config file{since}"
                )
            also = f" and {why}" if why else ""
            raise ConfigError(f"{key}: required when tls.listen is set{also}")
    if not config.http.listen and not tls.listen:
        raise ConfigError(
            "http.listen: nothing to serve (http.listen and tls.listen are both empty)"
        )
    mqtt = config.mqtt
    if (mqtt.cert is None) != (mqtt.key is None):
        missing, given = ("mqtt.key", "mqtt.cert")
        if mqtt.cert is None:
            missing, given = given, missing
        raise ConfigError(f"{missing}: required when {given} is set")
    limits = config.limits
    for rate, burst in (("rate", "burst"), ("client_rate", "client_burst")):
        if getattr(limits, rate) > 0 and getattr(limits, burst) < 1:
            raise ConfigError(
                f"limits.{burst}: must be at least 1 when limits.{rate} is above 0, "
                f"got {getattr(limits, burst)}"
            )
    if config.aliyun.enabled and not config.aliyun.access_keys:
        raise ConfigError(
            "aliyun.access_keys: must not be empty when aliyun.instance_id is set"
        )


def parse(document: Mapping[str, Any], base_dir: str) -> Config:
    """
    Validate a decoded TOML document (the layout of SPEC section 3).

    Missing sections and keys take their defaults. Relative paths are resolved
    against C{base_dir} (the config file's folder) and made absolute; C{~} is
    expanded.

    @raise ConfigError: one line naming the first bad key.
    """
    base_dir = os.path.abspath(base_dir)
    sections: dict[str, Any] = {}
    for name, table in document.items():
        if name not in _SCHEMA:
            raise _unknown(_join("", name), "section", str(name), list(_SCHEMA))
        sections[name] = _section(name, table, base_dir)
    config = Config(**sections)
    _check(config)
    return config


def load(path: str) -> Config:
    """
    Read and validate the TOML file at C{path}; relative paths in it are relative
    to its folder.

    @raise ConfigError: C{"<path>: <reason>"} when the file cannot be read or is not
        TOML (the reason carries the line and column), or a key's error as from
        L{parse}.
    """
    try:
        with open(path, "rb") as stream:
            document = tomllib.load(stream)
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {error.start}: {error.reason})"
        ) from None
    except tomllib.TOMLDecodeError as error:
        reason = " ".join(str(error).split())
        raise ConfigError(f"{path}: {reason}") from None
    source = os.path.abspath(path)
    return attrs.evolve(parse(document, os.path.dirname(source)), source=source)


def default() -> Config:
    """The settings with no config file: every key at its SPEC default."""
    return Config()
