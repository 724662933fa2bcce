# -*- test-case-name: tests.workers.test_processes -*-
"""
The parent's service tree, for C{[server] workers} above 1: the embedded
broker (when no broker is configured: it runs once, here, and the workers are
given its address), every listener bound once (L{BoundSockets}), the
L{Supervisor} of the worker processes that serve them, the admin listener
answering for all the workers together, SIGTERM (every worker drains, then the
parent exits 0), SIGHUP (every worker reloads) and systemd's notifications
(C{READY=1} once every worker serves, C{WATCHDOG=1} only while they all answer).

A worker that refuses to start while the gateway starts (see
L{gateway.workers.supervisor}) stops the parent as a L{StartupError} stops a
single process: its one line is logged, every other worker is stopped, and
the parent exits 1 (without C{READY=1}).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from typing import Any

from twisted.application.service import IService
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from gateway.config import Config, ConfigError
from gateway.listeners import Listener, parse_endpoints
from gateway.publishing import add_embedded_broker
from gateway.reload import ReloadOnSIGHUP
from gateway.shutdown import StopInOrder
from gateway.signals import ExitCleanlyOnSIGTERM
from gateway.startup import StartupError
from gateway.systemd import SystemdNotifier
from gateway.web.admin import AdminRouter
from gateway.web.server import HTTPServerFactory
from gateway.workers.launcher import ProcessLauncher
from gateway.workers.metrics import WorkersMetrics
from gateway.workers.policy import divided_limits, limits_are_shared
from gateway.workers.sockets import BoundSockets
from gateway.workers.supervisor import Supervisor

__all__ = ["command_line", "parent_service"]

_log = Logger()


def command_line(options: Any) -> list[str]:
    """The C{mqtt-http-gateway} options of C{options}, as a command line."""
    arguments = ["--config", options["config"]] if options["config"] else []
    for name in ("listen", "tls-listen", "broker"):
        for value in options[name]:
            arguments += [f"--{name}", value]
    if options["admin"]:
        arguments += ["--admin", options["admin"]]
    return arguments


def _say_limits(config: Config) -> None:
    count = config.server.workers
    if not limits_are_shared(config):
        what = "Each of {count} workers enforces its share of [limits]"
    elif config.cluster.on_redis_error == "open":
        what = (
            "{count} workers share the rate limits through the cluster; while it "
            "is unreachable each enforces its share"
        )
    else:
        _log.info(
            "{count} workers share the rate limits through the cluster", count=count
        )
        return
    share = divided_limits(config.limits, count)
    _log.info(
        what + ": rate {rate:g}/s (burst {burst}), client_rate {client_rate:g}/s "
        "(burst {client_burst})",
        count=count,
        rate=share.rate,
        burst=share.burst,
        client_rate=share.client_rate,
        client_burst=share.client_burst,
    )


def _exit_1() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    os._exit(1)


def stop_with_status_1(reactor: Any) -> None:
    """
    Stop C{reactor} (and so the service tree) and have the process exit 1
    once twistd has cleaned up: twistd itself exits 0 after the reactor
    stopped, and nothing it calls on the way out can change that.
    """
    atexit.register(_exit_1)
    with contextlib.suppress(ReactorNotRunning):
        reactor.stop()


def parent_service(options: Any, reactor: Any) -> IService:
    """
    The parent's tree for the checked C{options} (a L{gateway.tap.Options}).

    @raise StartupError: for a listening endpoint string that does not parse.
    """
    config = options.config
    try:
        endpoints = parse_endpoints(config, reactor)
    except ConfigError as e:
        raise StartupError(str(e)) from None
    count = config.server.workers
    root = StopInOrder()
    embedded = add_embedded_broker(config, root, reactor)
    arguments = command_line(options)
    if embedded is not None:
        arguments += ["--broker", config.mqtt.brokers[0].uri]
    sockets = BoundSockets(endpoints)
    sockets.setServiceParent(root)
    launcher = ProcessLauncher(
        reactor,
        sockets,
        count,
        arguments,
        (lambda: embedded.protocol) if embedded is not None else None,
    )
    supervisor = Supervisor(
        count,
        launcher,
        reactor,
        stop_timeout=config.mqtt.publish_timeout + 10,
        on_refused=lambda _: stop_with_status_1(reactor),
    )
    supervisor.setServiceParent(root)
    _say_limits(config)
    if endpoints.admin is not None:
        admin = HTTPServerFactory(
            AdminRouter(supervisor, WorkersMetrics(supervisor)),
            max_body=4096,
            clock=reactor,
        )
        Listener(*endpoints.admin, admin, "admin").setServiceParent(root)
    ExitCleanlyOnSIGTERM(reactor).setServiceParent(root)
    ReloadOnSIGHUP(supervisor.reload, reactor).setServiceParent(root)
    SystemdNotifier(
        supervisor,
        brokers=[address.uri for address in config.mqtt.brokers],
        clock=reactor,
        ready=supervisor.whenServing,
        alive=supervisor.answering,
    ).setServiceParent(root)
    return root
