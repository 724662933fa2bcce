# -*- test-case-name: tests.test_tap -*-
"""
The publishing side of the service tree: how each broker is reached, the
embedded broker started before anything connects to it, and the publisher of
the configured mode (one shared session, or broker mode's session per sender).

L{broker_targets} reads the certificate files while the command line is checked;
L{broker_endpoints} and L{build_publisher} only assemble, for a given reactor.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
)
from twisted.logger import Logger

from gateway.auth.files import read_bytes
from gateway.config import BrokerAddress, Config, ConfigError, MQTTConfig
from gateway.embedded import EmbeddedBroker, embedded_broker
from gateway.interfaces import IPublisher
from gateway.mqtt.passthrough import PassthroughPublisher
from gateway.mqtt.publisher import SharedPublisher
from gateway.mqtt.session import Broker, BrokerSession, SessionSettings
from gateway.startup import StartupError

__all__ = [
    "BrokerTarget",
    "StartFirst",
    "add_embedded_broker",
    "broker_endpoints",
    "broker_targets",
    "build_publisher",
]

_log = Logger()


@attrs.frozen
class BrokerTarget:
    """
    One broker to publish to, checked: its address and, for C{mqtts://}, the
    TLS client options (trust, client certificate) read from the files.

    @ivar name: its URI, as the logs and the status name it.
    """

    name: str
    address: BrokerAddress
    tls: IOpenSSLClientConnectionCreator | None = None


def broker_targets(mqtt: MQTTConfig) -> list[BrokerTarget]:
    """
    The brokers of C{[mqtt] brokers}, in failover order; TLS verifies the
    server name against C{[mqtt] ca} (or the system's trust store) and presents
    C{[mqtt] cert}/C{key} when set.

    @raise ConfigError: for unreadable or invalid certificate files.
    """
    return [
        BrokerTarget(
            address.uri, address, _client_tls(address, mqtt) if address.tls else None
        )
        for address in mqtt.brokers
    ]


def _client_tls(address: BrokerAddress, mqtt: MQTTConfig) -> Any:
    try:
        trust = (
            Certificate.loadPEM(read_bytes(mqtt.ca, "mqtt.ca"))
            if mqtt.ca
            else platformTrust()
        )
        client = None
        if mqtt.cert and mqtt.key:
            client = PrivateCertificate.loadPEM(
                read_bytes(mqtt.cert, "mqtt.cert")
                + b"\n"
                + read_bytes(mqtt.key, "mqtt.key")
            )
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"mqtt.ca/cert/key: cannot load: {e}") from None
    return optionsForClientTLS(address.host, trust, client)


def broker_endpoints(targets: Sequence[BrokerTarget], reactor: Any) -> list[Broker]:
    """How to reach each of C{targets} with C{reactor}: TCP, or TLS over it."""
    brokers = []
    for target in targets:
        endpoint: Any = HostnameEndpoint(
            reactor, target.address.host, target.address.port
        )
        if target.tls is not None:
            endpoint = wrapClientTLS(target.tls, endpoint)
        brokers.append(Broker(target.name, endpoint))
    return brokers


class StartFirst(Service):
    """
    Runs the embedded broker before anything that connects to it: it starts at
    privileged start-up and start-up waits until it listens.
    """

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.broker = broker

    def privilegedStartService(self) -> None:
        """Start the broker and wait until it listens."""
        super().privilegedStartService()
        try:
            self.broker.start_and_wait()
        except Exception as e:
            raise StartupError(str(e)) from None

    def stopService(self) -> Deferred[None]:
        """Stop the broker."""
        super().stopService()
        return self.broker.stopService()


def add_embedded_broker(
    config: Config, root: MultiService, reactor: Any
) -> EmbeddedBroker | None:
    """
    The embedded broker, started first under C{root}, when C{config} names no
    broker; else C{None}.
    """
    if not config.embedded_broker:
        return None
    address = config.mqtt.brokers[0]
    embedded = embedded_broker(address.host, address.port, reactor)
    starter = StartFirst(embedded)
    starter.setName("embedded-broker")
    starter.setServiceParent(root)
    return embedded


def build_publisher(
    config: Config,
    brokers: Sequence[Broker],
    root: MultiService,
    reactor: Any,
    embedded: EmbeddedBroker | None = None,
    *,
    worker: int = 1,
    protocol: str | None = None,
) -> IPublisher:
    """
    The publisher of the configured mode, its services under C{root}; it speaks
    the embedded broker's MQTT version when there is one (or C{protocol}, the
    version of the embedded broker another process runs).

    @param worker: the number of the worker process, for C{{worker}} in the
        gateway's client id.
    """
    if config.auth.mode == "broker":
        passthrough = PassthroughPublisher(
            list(brokers),
            protocol=config.mqtt.protocol,
            keepalive=config.mqtt.keepalive,
            publish_timeout=config.mqtt.publish_timeout,
            idle_timeout=config.http.idle_timeout,
            clock=reactor,
        )
        passthrough.setName("mqtt-sessions")
        passthrough.setServiceParent(root)
        _log.info("Broker mode: each sender gets its own broker session")
        return passthrough
    settings = SessionSettings(
        client_id=config.mqtt.gateway_client_id(socket.gethostname(), worker),
        username=config.mqtt.username or None,
        password=config.mqtt.password.encode() if config.mqtt.password else None,
        protocol=embedded.protocol
        if embedded is not None
        else protocol or config.mqtt.protocol,
        keepalive=config.mqtt.keepalive,
    )
    session = BrokerSession(
        list(brokers),
        settings,
        publish_timeout=config.mqtt.publish_timeout,
        clock=reactor,
    )
    session.setName("mqtt-session")
    session.setServiceParent(root)
    _log.info(
        "Gateway mode: publishing over one broker session to {brokers}",
        brokers=", ".join(address.uri for address in config.mqtt.brokers),
    )
    return SharedPublisher(session)
