# -*- test-case-name: tests.test_tap -*-
"""
The twistd command line (L{Options}) and the service tree (L{makeService}).

L{Options.postOptions} reads and checks the configuration and the files it
names (passwords, ACL, TLS and broker certificates), so that a mistake stops
start-up with one line naming the key or file. L{makeService} only assembles
the tree for the reactor it is given: it parses each listening endpoint once
(a bad one stops start-up the same way) and builds services that start their
work in C{startService} and undo it in C{stopService}. The pieces live in
L{gateway.listeners} and L{gateway.publishing}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from gateway import __version__
from gateway.accesslog import AccessLog
from gateway.auth.acl import ACL
from gateway.auth.certs import ServerTLSOptions, load_server_options, tls_factory
from gateway.auth.files import load_setting
from gateway.auth.identify import Authenticator
from gateway.auth.passwords import PasswordFile
from gateway.auth.tls_reload import ReloadableServerTLS
from gateway.cluster.parts import shared_state
from gateway.config import Config, ConfigError, LimitsConfig, default, load
from gateway.core import Gateway
from gateway.interfaces import IPublisher
from gateway.limits import RateLimiter
from gateway.listeners import Listener, connection_cap, parse_endpoints
from gateway.measured import MeasuredPublisher
from gateway.metrics import GatewayMetrics, compose
from gateway.publishing import (
    BrokerTarget,
    add_embedded_broker,
    broker_endpoints,
    broker_targets,
    build_publisher,
)
from gateway.reload import Reloader, ReloadOnSIGHUP, ReloadReport, command_line_loader
from gateway.shutdown import DrainHTTP, StopInOrder
from gateway.signals import ExitCleanlyOnSIGTERM
from gateway.startup import StartupError
from gateway.swappable import daemon_parts
from gateway.systemd import SystemdNotifier
from gateway.web.admin import AdminRouter
from gateway.web.aliyun import AliyunAPI, max_target_bytes
from gateway.web.emqx import EMQXAPI
from gateway.web.router import Router
from gateway.web.server import HTTPServerFactory
from gateway.web.topics import TopicsAPI
from gateway.workers.parent import parent_service
from gateway.workers.role import WorkerRole

__all__ = [
    "Assembly",
    "Listener",
    "Options",
    "StartupError",
    "build",
    "connection_cap",
    "makeService",
]

log = Logger()

# Request targets may carry a whole topic (65535 bytes, percent-encoded three times
# over) or, for the query-string API, a payload as large as a body.
_TOPIC_TARGET = 3 * 65535 + 4096


class Options(usage.Options):
    """
    The command line of C{twistd mqtt-http-gateway}.
    """

    synopsis = "[--config PATH] [--listen ENDPOINT ...] [--broker URI ...]"
    longdesc = (
        "Publish MQTT messages with one HTTP request: POST /topics/{topic}, "
        "or EMQX's POST /api/v5/publish and /api/v5/publish/bulk. "
        "With no configuration it serves HTTP on 127.0.0.1:8080 and runs an "
        "embedded MQTT broker on 127.0.0.1:1883 (Mosquitto when installed, else "
        "amqtt) with anonymous publishing. "
        "ENDPOINT is a Twisted server endpoint string such as "
        "tcp:8080:interface=127.0.0.1 or systemd:domain=INET:index=0."
    )
    optParameters = [
        ["config", "c", None, "Configuration file (TOML)."],
        ["admin", None, None, "Endpoint of the admin listener (overrides [admin])."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["tls-listen"] = []
        self["broker"] = []
        self.config: Config = default()
        self.brokers: list[BrokerTarget] = []
        self.passwords: PasswordFile | None = None
        self.acl: ACL | None = None
        self.tls: ServerTLSOptions | None = None

    def opt_listen(self, endpoint: str) -> None:
        """Serve plain HTTP on ENDPOINT (repeatable; overrides [http] listen)."""
        self["listen"].append(endpoint)

    def opt_tls_listen(self, endpoint: str) -> None:
        """Serve HTTPS on ENDPOINT (repeatable; overrides [tls] listen)."""
        self["tls-listen"].append(endpoint)

    def opt_broker(self, uri: str) -> None:
        """MQTT broker URI, mqtt:// or mqtts:// (repeatable, failover order; overrides [mqtt] brokers and turns the embedded broker off)."""  # noqa: E501
        self["broker"].append(uri)

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"mqtt-http-gateway {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        """
        Load and check the configuration, and read the files it names.

        @raise StartupError: with one line naming the key or file at fault.
        """
        try:
            config = load(self["config"]) if self["config"] else default()
            config = config.with_overrides(
                listen=self["listen"],
                tls_listen=self["tls-listen"],
                brokers=self["broker"],
                admin=self["admin"],
            )
            self.brokers = broker_targets(config.mqtt)
            auth = config.auth
            self.passwords = load_setting(
                "auth.password_file", auth.password_file, PasswordFile.load
            )
            self.acl = load_setting("auth.acl_file", auth.acl_file, ACL.load)
            self.tls = load_server_options(config.tls) if config.tls.listen else None
        except ConfigError as e:
            raise StartupError(str(e)) from None
        self.config = config


@attrs.frozen
class Assembly:
    """
    A gateway's service tree and the parts a worker's control channel uses.

    @ivar root: the tree.
    @ivar publisher: whose status tells the broker session's state.
    @ivar metrics: the metrics, when C{[admin] listen} is set.
    @ivar reload: what SIGHUP does.
    """

    root: StopInOrder
    publisher: IPublisher
    metrics: GatewayMetrics | None
    reload: Callable[[], ReloadReport]


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    The service tree of the daemon, built from checked options for C{reactor}
    (the global one when C{None}). It only assembles: the services start their
    work (listening, connecting, opening the access log, handling signals) when
    started. With C{[server] workers} above 1 that is the parent, which binds
    the listeners and supervises the worker processes serving them
    (L{gateway.workers.parent}); otherwise one process does everything.

    @raise StartupError: for a listening endpoint string that does not parse.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    if options.config.server.workers > 1:
        return parent_service(options, reactor)
    return build(options, reactor).root


def build(options: Options, reactor: Any, role: WorkerRole | None = None) -> Assembly:
    """
    The service tree of one process serving the listeners: a single process
    (C{role} is C{None}) or one worker, which serves the sockets it adopted,
    enforces its share of the limits and leaves the embedded broker, the admin
    listener and systemd to the parent.

    @raise StartupError: for a listening endpoint string that does not parse.
    """
    config = options.config
    if role is not None:
        endpoints = role.endpoints
    else:
        try:
            endpoints = parse_endpoints(config, reactor)
        except ConfigError as e:
            raise StartupError(str(e)) from None
    # Stopped last-added first, one after another: listeners, then the drain of
    # requests in flight, then the broker sessions.
    root = StopInOrder()
    embedded = add_embedded_broker(config, root, reactor)
    # No configuration file at all: the laptop default, where anyone may publish.
    anonymous = config.auth.allow_anonymous or not options["config"]
    if anonymous:
        log.warn(
            "Anonymous publishing is allowed{embedded}. Configure [auth] (and "
            "[mqtt] brokers) for production.",
            embedded=" (no configuration: embedded MQTT broker on "
            f"{config.mqtt.brokers[0].host}:{config.mqtt.brokers[0].port})"
            if config.embedded_broker
            else "",
        )
    brokers = broker_endpoints(options.brokers, reactor)
    publisher = build_publisher(
        config,
        brokers,
        root,
        reactor,
        embedded,
        worker=role.number if role is not None else 1,
        protocol=role.broker_protocol if role is not None else None,
    )
    # Stopped after the drain: requests in flight may still need it.
    shared = shared_state(config.cluster, root, reactor)
    metrics = None
    if config.admin.listen:
        metrics = GatewayMetrics(reactor)
        metrics.watch_publisher(publisher)
        if shared is not None:
            metrics.watch_redis(shared.store.health)
        metrics.setServiceParent(root)
        publisher = MeasuredPublisher(publisher, metrics, reactor)

    def make_limiter(limits: LimitsConfig) -> RateLimiter:
        if role is None:
            own = alone = limits
        else:
            own, alone = role.limits(config, limits), role.limits_alone(limits)
        if shared is None:
            return RateLimiter(own)
        # While Redis is unreachable each worker counts alone: its share keeps
        # the host within the limits.
        return shared.limiter(own, alone)

    authenticator = Authenticator(
        options.passwords,
        allow_anonymous=anonymous,
        check_passwords=config.auth.mode == "gateway",
        failures=None if shared is None else shared.failures,
    )
    core = Gateway(
        publisher,
        authenticator,
        reactor,
        options.acl,
        limiter=make_limiter(config.limits),
    )
    access_log = None
    if config.log.access:
        # Before the drain: stopped after it, so the last requests are logged.
        access_log = AccessLog(config.log.access, reactor)
        access_log.setName("access-log")
        access_log.setServiceParent(root)
    aliyun = None
    max_target = _TOPIC_TARGET
    if config.aliyun.enabled:
        max_payload = config.http.max_body
        aliyun = AliyunAPI(
            core,
            config.aliyun,
            reactor,
            max_payload=max_payload,
            nonces=None if shared is None else shared.nonces,
        )
        max_target = max(max_target, max_target_bytes(max_payload))
    factory = HTTPServerFactory(
        Router(
            TopicsAPI(core),
            aliyun,
            EMQXAPI(core, max_batch=config.http.max_batch),
        ),
        max_body=config.http.max_body,
        max_target_bytes=max_target,
        idle_timeout=config.http.idle_timeout,
        max_connections=connection_cap(config.http.max_connections_per_source),
        max_connections_per_source=config.http.max_connections_per_source,
        access_log=compose(
            access_log, metrics.observe_response if metrics is not None else None
        ),
        clock=reactor,
    )
    ExitCleanlyOnSIGTERM(reactor).setServiceParent(root)
    DrainHTTP([factory], timeout=config.mqtt.publish_timeout + 1).setServiceParent(root)
    for description, endpoint in endpoints.http:
        Listener(description, endpoint, factory).setServiceParent(root)
    tls = None
    if options.tls is not None:
        tls = ReloadableServerTLS(options.tls)
        https = tls_factory(factory, tls, reactor)
        for description, endpoint in endpoints.tls:
            Listener(description, endpoint, https, "HTTPS").setServiceParent(root)
    if metrics is not None:
        metrics.watch_connections(factory)
        if tls is not None:
            metrics.watch_tls(tls)
    if metrics is not None and endpoints.admin is not None:
        admin = HTTPServerFactory(
            AdminRouter(publisher, metrics), max_body=4096, clock=reactor
        )
        Listener(*endpoints.admin, admin, "admin").setServiceParent(root)
    reloader = Reloader(
        config,
        command_line_loader(options),
        daemon_parts(
            config,
            authenticator=authenticator,
            core=core,
            tls=tls,
            apply_limits=lambda limits: setattr(core, "limiter", make_limiter(limits)),
            access_log=access_log,
        ),
    )
    ReloadOnSIGHUP(reloader.reload, reactor).setServiceParent(root)
    if role is None:
        # Last: READY=1 once everything above has started.
        SystemdNotifier(
            publisher,
            brokers=[address.uri for address in config.mqtt.brokers],
            clock=reactor,
        ).setServiceParent(root)
    return Assembly(root, publisher, metrics, reloader.reload)
