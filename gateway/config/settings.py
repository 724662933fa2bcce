# -*- test-case-name: tests.config.test_loader -*-
"""
The settings classes: frozen values, one per TOML section, and L{Config} holding
them all, with the command-line overrides.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping, Sequence

import attrs

from gateway.config.error import ConfigError
from gateway.config.rules import check
from gateway.config.uris import BrokerAddress, RedisAddress, parse_broker_uri


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


def secret_mapping(items: Mapping[str, str]) -> SecretMapping:
    return items if isinstance(items, SecretMapping) else SecretMapping(items)


@attrs.frozen
class ServerConfig:
    """
    C{[server]}: the processes that serve.

    @ivar workers: how many worker processes serve the listeners, at least 1;
        C{"auto"} in the file is the number of CPUs. 1 is one process doing
        everything.
    """

    workers: int = 1


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
    @ivar client_id: the gateway's client id; C{{hostname}}, C{{worker}} and
        C{{pid}} are replaced by L{gateway_client_id}.
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
    client_id: str = "mqtt-http-gateway-{hostname}-{worker}"
    username: str = ""
    password: str = attrs.field(default="", repr=False)
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    keepalive: int = 60
    publish_timeout: float = 10.0

    def gateway_client_id(
        self, hostname: str | None = None, worker: int = 1, pid: int | None = None
    ) -> str:
        """
        C{client_id} with C{{hostname}} replaced by C{hostname} (by default
        C{socket.gethostname()}), C{{worker}} by the worker's number C{worker}
        (1 when one process serves) and C{{pid}} by C{pid} (by default
        C{os.getpid()}).
        """
        client_id = self.client_id
        if "{hostname}" in client_id:
            if hostname is None:
                hostname = socket.gethostname()
            client_id = client_id.replace("{hostname}", hostname)
        if "{pid}" in client_id:
            pid = os.getpid() if pid is None else pid
            client_id = client_id.replace("{pid}", str(pid))
        return client_id.replace("{worker}", str(worker))


@attrs.frozen
class AuthConfig:
    """
    C{[auth]}: who may publish.

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
    C{[aliyun]}: the Alibaba C{SendMessage} API.

    @ivar access_keys: AccessKeyId -> AccessKeySecret; immutable, and C{repr} shows
        only the ids. Not empty when C{instance_id} is set.
    @ivar payload_encoding: C{"raw"} or C{"base64"} (decode C{Payload}).
    """

    instance_id: str = ""
    access_keys: Mapping[str, str] = attrs.field(
        factory=SecretMapping, converter=secret_mapping, repr=_repr_access_keys
    )
    payload_encoding: str = "raw"

    @property
    def enabled(self) -> bool:
        """Whether the C{SendMessage} API is served (C{instance_id} is set)."""
        return bool(self.instance_id)


@attrs.frozen
class ClusterConfig:
    """
    C{[cluster]}: the Redis server whose rate limits, failed-login counters and
    nonce cache every gateway process pointed at it shares.

    @ivar redis: the server, or C{None} (C{redis = ""}): everything stays local.
    @ivar on_redis_error: C{"open"} (local limits while Redis is unreachable) or
        C{"closed"} (503 for what needs Redis).
    """

    redis: RedisAddress | None = None
    on_redis_error: str = "open"


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

    server: ServerConfig = ServerConfig()
    http: HTTPConfig = HTTPConfig()
    tls: TLSConfig = TLSConfig()
    mqtt: MQTTConfig = MQTTConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    aliyun: AliyunConfig = AliyunConfig()
    cluster: ClusterConfig = ClusterConfig()
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
        check(config, tls_option="--tls-listen" if tls_listen else None)
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
