# -*- test-case-name: tests.test_tap -*-
"""
The twistd command line (L{Options}) and the service tree (L{makeService}).

L{Options.postOptions} reads and checks everything that can be wrong in the
configuration, so that a mistake stops start-up with one line naming the key or
file; L{makeService} only assembles services, which start their work in
C{startService}.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
)
from twisted.logger import Logger
from twisted.python import usage

from gateway import __version__
from gateway.accesslog import AccessLog
from gateway.auth.acl import ACL
from gateway.auth.certs import (
    ReloadableServerTLS,
    ServerTLSOptions,
    TLSConfigError,
    load_server_options,
    tls_factory,
)
from gateway.auth.files import AuthFileError
from gateway.auth.identify import Authenticator
from gateway.auth.passwords import PasswordFile
from gateway.config import (
    BrokerAddress,
    Config,
    ConfigError,
    MQTTConfig,
    default,
    load,
)
from gateway.core import Gateway
from gateway.embedded import EmbeddedBroker, embedded_broker
from gateway.interfaces import IPublisher
from gateway.limits import RateLimiter
from gateway.metrics import GatewayMetrics, MeasuredPublisher, compose
from gateway.mqtt.passthrough import PassthroughPublisher
from gateway.mqtt.publisher import SharedPublisher
from gateway.mqtt.session import Broker, BrokerSession, SessionSettings
from gateway.reload import Reloader, ReloadOnSIGHUP, command_line_loader
from gateway.shutdown import DrainHTTP, StopInOrder
from gateway.signals import OnSignal
from gateway.systemd import SystemdNotifier
from gateway.web.admin import AdminRouter
from gateway.web.aliyun import AliyunAPI, max_target_bytes
from gateway.web.emqx import EMQXAPI
from gateway.web.router import Router
from gateway.web.server import (
    HTTPServerFactory,
    connection_limit,
    limited_by_open_files,
    open_file_limit,
)
from gateway.web.topics import TopicsAPI

log = Logger()
T = TypeVar("T")

# Request targets may carry a whole topic (65535 bytes, percent-encoded three times
# over) or, for the query-string API, a payload as large as a body.
_TOPIC_TARGET = 3 * 65535 + 4096


class StartupError(SystemExit):
    """
    The daemon cannot start. Raised while twistd sets up, it ends the process with
    exit status 1 and its one-line message on standard error, no traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"mqtt-http-gateway: {message}")


def check_endpoints(config: Config, reactor: Any) -> None:
    """
    Parse every listening endpoint string, so that a typo stops start-up.

    @raise ConfigError: naming the key and the string.
    """
    for key, descriptions in (
        ("http.listen", config.http.listen),
        ("tls.listen", config.tls.listen),
        ("admin.listen", (config.admin.listen,) if config.admin.listen else ()),
    ):
        for description in descriptions:
            try:
                serverFromString(reactor, description)
            except Exception as e:
                raise ConfigError(f"{key}: bad endpoint {description!r}: {e}") from None


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None


def broker_endpoint(
    reactor: Any, address: BrokerAddress, mqtt: MQTTConfig
) -> IStreamClientEndpoint:
    """
    How to reach a broker: TCP for C{mqtt://}; TLS for C{mqtts://}, verifying the
    server name against C{[mqtt] ca} (or the system's trust store) and presenting
    C{[mqtt] cert}/C{key} when set.

    @raise ConfigError: for unreadable or invalid certificate files.
    """
    tcp = HostnameEndpoint(reactor, address.host, address.port)
    if not address.tls:
        return tcp
    try:
        trust = (
            Certificate.loadPEM(_read(mqtt.ca, "mqtt.ca"))
            if mqtt.ca
            else platformTrust()
        )
        client = None
        if mqtt.cert and mqtt.key:
            client = PrivateCertificate.loadPEM(
                _read(mqtt.cert, "mqtt.cert") + b"\n" + _read(mqtt.key, "mqtt.key")
            )
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"mqtt.ca/cert/key: cannot load: {e}") from None
    options = optionsForClientTLS(address.host, trust, client)
    return wrapClientTLS(options, tcp)


def load_auth_file(key: str, path: str | None, load: Callable[[str], T]) -> T | None:
    """
    The file of C{[auth] key} loaded with C{load}, or C{None} when not set.

    @raise ConfigError: naming the key, file and line for an unreadable or bad file.
    """
    if path is None:
        return None
    try:
        return load(path)
    except AuthFileError as e:
        raise ConfigError(f"auth.{key}: {e}") from None


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
        self.brokers: list[Broker] = []
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
        Load and check the configuration.

        @raise StartupError: with one line naming the key or file at fault.
        """
        from twisted.internet import reactor

        try:
            config = load(self["config"]) if self["config"] else default()
            config = config.with_overrides(
                listen=self["listen"],
                tls_listen=self["tls-listen"],
                brokers=self["broker"],
                admin=self["admin"],
            )
            check_endpoints(config, reactor)
            self.brokers = [
                Broker(address.uri, broker_endpoint(reactor, address, config.mqtt))
                for address in config.mqtt.brokers
            ]
            auth = config.auth
            self.passwords = load_auth_file(
                "password_file", auth.password_file, PasswordFile.load
            )
            self.acl = load_auth_file("acl_file", auth.acl_file, ACL.load)
            self.tls = load_server_options(config.tls) if config.tls.listen else None
        except (ConfigError, TLSConfigError) as e:
            raise StartupError(str(e)) from None
        self.config = config


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


class _StartFirst(Service):
    """
    Runs the embedded broker before anything that connects to it: it starts at
    privileged start-up and start-up waits until it listens.
    """

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.broker = broker

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            self.broker.start_and_wait()
        except Exception as e:
            raise StartupError(str(e)) from None

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.broker.stopService()


class _ExitCleanlyOnSIGTERM(OnSignal):
    """
    Makes SIGTERM (systemd's stop) a clean shutdown with exit status 0: twistd's own
    handler would end the process by re-raising the signal once the reactor stopped.
    """

    def __init__(self, reactor: Any) -> None:
        super().__init__(signal.SIGTERM, self._stop, reactor)
        self._stopping = False

    def _stop(self) -> None:
        if self._stopping:
            return  # a second SIGTERM while draining changes nothing
        self._stopping = True
        log.info("Received SIGTERM, shutting down.")
        self._reactor.stop()


def _publisher(
    options: Options,
    root: MultiService,
    reactor: Any,
    embedded: EmbeddedBroker | None = None,
) -> IPublisher:
    """
    The publisher of the configured mode, its services under C{root}; it speaks
    the embedded broker's MQTT version when there is one.
    """
    config = options.config
    if config.auth.mode == "broker":
        passthrough = PassthroughPublisher(
            options.brokers,
            protocol=config.mqtt.protocol,
            keepalive=config.mqtt.keepalive,
            publish_timeout=config.mqtt.publish_timeout,
            idle_timeout=config.http.idle_timeout,
            clock=reactor,
        )
        passthrough.setName("mqtt-sessions")
        passthrough.setServiceParent(root)
        log.info("Broker mode: each sender gets its own broker session")
        return passthrough
    settings = SessionSettings(
        client_id=config.mqtt.gateway_client_id(socket.gethostname()),
        username=config.mqtt.username or None,
        password=config.mqtt.password.encode() if config.mqtt.password else None,
        protocol=config.mqtt.protocol if embedded is None else embedded.protocol,
        keepalive=config.mqtt.keepalive,
    )
    session = BrokerSession(
        options.brokers,
        settings,
        publish_timeout=config.mqtt.publish_timeout,
        clock=reactor,
    )
    session.setName("mqtt-session")
    session.setServiceParent(root)
    log.info(
        "Gateway mode: publishing over one broker session to {brokers}",
        brokers=", ".join(address.uri for address in config.mqtt.brokers),
    )
    return SharedPublisher(session)


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
        log.warn(
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


def makeService(options: Options) -> IService:
    """
    The service tree of the daemon, built from checked options.
    """
    from twisted.internet import reactor

    config = options.config
    # Stopped last-added first, one after another: listeners, then the drain of
    # requests in flight, then the broker sessions.
    root = StopInOrder()
    embedded = None
    if config.embedded_broker:
        address = config.mqtt.brokers[0]
        embedded = embedded_broker(address.host, address.port, reactor)
        starter = _StartFirst(embedded)
        starter.setName("embedded-broker")
        starter.setServiceParent(root)
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
    publisher = _publisher(options, root, reactor, embedded)
    metrics = None
    if config.admin.listen:
        metrics = GatewayMetrics(reactor)
        metrics.watch_publisher(publisher)
        metrics.setServiceParent(root)
        publisher = MeasuredPublisher(publisher, metrics, reactor)
    authenticator = Authenticator(
        options.passwords,
        allow_anonymous=anonymous,
        check_passwords=config.auth.mode == "gateway",
    )
    core = Gateway(
        publisher,
        authenticator,
        reactor,
        options.acl,
        limiter=RateLimiter(config.limits),
    )
    access_log = AccessLog(config.log.access, reactor) if config.log.access else None
    if access_log is not None:
        reactor.addSystemEventTrigger("after", "shutdown", access_log.close)
    aliyun = None
    max_target = _TOPIC_TARGET
    if config.aliyun.enabled:
        max_payload = config.http.max_body
        aliyun = AliyunAPI(core, config.aliyun, reactor, max_payload=max_payload)
        max_target = max(max_target, max_target_bytes(max_payload))
    factory = HTTPServerFactory(
        Router(
            TopicsAPI(core),
            publisher,
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
    _ExitCleanlyOnSIGTERM(reactor).setServiceParent(root)
    DrainHTTP([factory], timeout=config.mqtt.publish_timeout + 1).setServiceParent(root)
    for description in config.http.listen:
        Listener(
            description, serverFromString(reactor, description), factory
        ).setServiceParent(root)
    tls = None
    if options.tls is not None:
        tls = ReloadableServerTLS(options.tls)
        https = tls_factory(factory, tls, reactor)
        for description in config.tls.listen:
            Listener(
                description, serverFromString(reactor, description), https, "HTTPS"
            ).setServiceParent(root)
    if metrics is not None:
        metrics.watch_connections(factory)
        if tls is not None:
            metrics.watch_tls(tls)
        admin = HTTPServerFactory(
            AdminRouter(publisher, metrics), max_body=4096, clock=reactor
        )
        Listener(
            config.admin.listen,
            serverFromString(reactor, config.admin.listen),
            admin,
            "admin",
        ).setServiceParent(root)
    reloader = Reloader(
        config,
        command_line_loader(options),
        authenticator=authenticator,
        gateway=core,
        tls=tls,
        apply_limits=lambda limits: setattr(core, "limiter", RateLimiter(limits)),
        access_log=access_log,
    )
    ReloadOnSIGHUP(reloader.reload, reactor).setServiceParent(root)
    # Last: READY=1 once everything above has started.
    SystemdNotifier(
        publisher,
        brokers=[address.uri for address in config.mqtt.brokers],
        clock=reactor,
    ).setServiceParent(root)
    return root
