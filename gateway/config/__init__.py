# -*- test-case-name: tests.config.test_loader -*-
"""
The gateway's settings: a TOML file turned into frozen values.

L{load} reads a file, L{parse} validates an already-decoded document, L{default} is
what runs with no file at all, and L{Config.with_overrides} applies the command-line
options. Every problem is a L{ConfigError} whose text is one line naming the key (or
the file, or the command-line option), so start-up can print it and exit.

Paths are only resolved here (relative to the config file's folder); whoever opens
them at start-up reports a missing or unreadable file. Endpoint strings are not
checked here either: building the listeners with Twisted does that.
"""

from gateway.config.error import ConfigError
from gateway.config.loader import default, load, parse
from gateway.config.settings import (
    AdminConfig,
    AliyunConfig,
    AuthConfig,
    ClusterConfig,
    Config,
    HTTPConfig,
    LimitsConfig,
    LogConfig,
    MQTTConfig,
    SecretMapping,
    ServerConfig,
    TLSConfig,
)
from gateway.config.uris import (
    BrokerAddress,
    RedisAddress,
    parse_broker_uri,
    parse_redis_url,
)

__all__ = [
    "AdminConfig",
    "AliyunConfig",
    "AuthConfig",
    "BrokerAddress",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "HTTPConfig",
    "LimitsConfig",
    "LogConfig",
    "MQTTConfig",
    "RedisAddress",
    "SecretMapping",
    "ServerConfig",
    "TLSConfig",
    "default",
    "load",
    "parse",
    "parse_broker_uri",
    "parse_redis_url",
]
