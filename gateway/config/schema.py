# -*- test-case-name: tests.config.test_loader -*-
"""
The schema of the TOML file: each section's settings class and, per key, the
converter that checks a TOML value and turns it into a settings value.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from gateway.config import settings
from gateway.config.error import ConfigError
from gateway.config.settings import SecretMapping
from gateway.config.uris import (
    BrokerAddress,
    RedisAddress,
    parse_broker_uri,
    parse_redis_url,
)

# Converters: (label, TOML value, base directory) -> settings value.
_Converter = Callable[[str, Any, str], Any]


def describe(value: object, secret: bool = False) -> str:
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
                f"{label}: expected a string, got {describe(value, secret)}"
            )
        if choices and value not in choices:
            raise ConfigError(
                f"{label}: expected {alternatives(choices)}, got {value!r}"
            )
        if non_empty and not value:
            raise ConfigError(f"{label}: must not be empty")
        return value

    return convert


def _boolean(label: str, value: Any, base_dir: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{label}: expected true or false, got {describe(value)}")
    return value


def _integer(minimum: int, maximum: int | None = None) -> _Converter:
    def convert(label: str, value: Any, base_dir: str) -> int:
        # bool is an int in Python, but "keepalive = true" is a mistake.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{label}: expected an integer, got {describe(value)}")
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
            raise ConfigError(f"{label}: expected a number, got {describe(value)}")
        if not math.isfinite(value):
            raise ConfigError(
                f"{label}: expected a finite number, got {describe(value)}"
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
        raise ConfigError(f"{label}: expected a list of strings, got {describe(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(
                f"{label}[{index}]: expected a string, got {describe(item)}"
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


#: What C{[mqtt] client_id} may contain: replaced by the host name, the
#: worker's number and the process id.
CLIENT_ID_PLACEHOLDERS = ("{hostname}", "{worker}", "{pid}")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}|[{}]")


def _client_id(label: str, value: Any, base_dir: str) -> str:
    client_id: str = _string(non_empty=True)(label, value, base_dir)
    if "\x00" in client_id:
        raise ConfigError(f"{label}: must not contain U+0000")
    for match in _PLACEHOLDER.finditer(client_id):
        if match.group() not in CLIENT_ID_PLACEHOLDERS:
            raise ConfigError(
                f"{label}: unknown placeholder {match.group()!r} "
                "(only {hostname}, {worker} and {pid} are replaced)"
            )
    return client_id


def _workers(label: str, value: Any, base_dir: str) -> int:
    if value == "auto":
        return max(1, os.cpu_count() or 1)
    if isinstance(value, str):
        raise ConfigError(f"{label}: expected an integer or 'auto', got {value!r}")
    workers: int = _integer(1, 1024)(label, value, base_dir)
    return workers


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
            f"got {describe(value)}"
        )
    secret = _string(non_empty=True, secret=True)
    keys: dict[str, str] = {}
    for key_id, key_secret in value.items():
        item_label = join_key(label, key_id)
        if not key_id:
            raise ConfigError(f"{item_label}: the AccessKeyId must not be empty")
        keys[key_id] = secret(item_label, key_secret, base_dir)
    return SecretMapping(keys)


def _redis(label: str, value: Any, base_dir: str) -> RedisAddress | None:
    url: str = _string(secret=True)(label, value, base_dir)
    return parse_redis_url(url, label) if url else None


_NON_NEGATIVE = _number(positive=False)

# The schema of the configuration file: section -> (settings class, key -> converter).
# Section names are the fields of Config, key names the fields of each class.
SCHEMA: dict[str, tuple[type[Any], dict[str, _Converter]]] = {
    "server": (settings.ServerConfig, {"workers": _workers}),
    "http": (
        settings.HTTPConfig,
        {
            "listen": _strings,
            "max_body": _integer(1),
            "idle_timeout": _number(positive=True),
            "max_connections_per_source": _integer(1),
            "max_batch": _integer(1),
        },
    ),
    "tls": (
        settings.TLSConfig,
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
        settings.MQTTConfig,
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
        settings.AuthConfig,
        {
            "mode": _string(choices=("gateway", "broker")),
            "password_file": _path,
            "acl_file": _path,
            "allow_anonymous": _boolean,
        },
    ),
    "limits": (
        settings.LimitsConfig,
        {
            "rate": _NON_NEGATIVE,
            "burst": _integer(0),
            "client_rate": _NON_NEGATIVE,
            "client_burst": _integer(0),
        },
    ),
    "aliyun": (
        settings.AliyunConfig,
        {
            "instance_id": _string(),
            "access_keys": _access_keys,
            "payload_encoding": _string(choices=("raw", "base64")),
        },
    ),
    "cluster": (
        settings.ClusterConfig,
        {"redis": _redis, "on_redis_error": _string(choices=("open", "closed"))},
    ),
    "admin": (settings.AdminConfig, {"listen": _string()}),
    "log": (settings.LogConfig, {"access": _access_log}),
}


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def join_key(prefix: str, key: object) -> str:
    """A dotted key as TOML would write it, quoted when needed; always one line."""
    text = str(key)
    if not _BARE_KEY.fullmatch(text):
        text = json.dumps(text)
    return f"{prefix}.{text}" if prefix else text


def alternatives(names: Sequence[str]) -> str:
    quoted = [repr(name) for name in names]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]
