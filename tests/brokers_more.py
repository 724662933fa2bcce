# -*- test-case-name: tests.integration.test_brokers -*-
"""
Brokers that run outside the virtualenv, for the broker matrix: Aedes (node) and
RabbitMQ with its MQTT plugin (Erlang). Same interface as L{tests.brokers}'
L{Mosquitto}: C{start}, C{stop}, C{kill}, C{restart}, C{host}, C{port}, C{log}.

C{./dev test} installs what they need: C{nodejs}, C{npm} and C{rabbitmq-server}
from Debian, and the C{aedes} npm package into the checkout's C{.node/}.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from tests.brokers import (
    BrokerStartError,
    _BrokerProcess,
    _dieWithParent,
    _LogToFile,
    free_port,
)

#: The checkout's private npm prefix (C{./dev test} installs aedes there).
NODE_PREFIX = os.path.join(os.path.dirname(os.path.dirname(__file__)), ".node")


_AEDES_RUNNER = """\
// Aedes on one plain TCP listener; argv: host port npm-prefix options-json.
import net from 'node:net'
import path from 'node:path'
import { createRequire } from 'node:module'
import { pathToFileURL } from 'node:url'

const [host, port, prefix, options] = process.argv.slice(2)
const require = createRequire(path.join(prefix, 'package.json'))
const { Aedes } = await import(pathToFileURL(require.resolve('aedes')).href)
const broker = await Aedes.createBroker(JSON.parse(options))
const log = (...args) => console.error(new Date().toISOString(), ...args)

broker.on('client', c => log('client', c.id, 'version', c.version))
broker.on('clientDisconnect', c => log('clientDisconnect', c.id))
broker.on('clientError', (c, e) => log('clientError', c && c.id, e.message))
broker.on('connectionError', (c, e) => log('connectionError', c && c.id, e.message))
broker.on('publish', (p, c) => {
  if (c) log('publish', c.id, JSON.stringify(p.topic), 'qos', p.qos, 'dup', p.dup)
})

const server = net.createServer(broker.handle)
server.on('error', e => { log('server error', e.code, e.message); process.exit(1) })
server.listen(Number(port), host, () => console.log('READY'))

let stopping = false
function stop () {
  if (stopping) return
  stopping = true
  server.close()
  broker.close(() => process.exit(0))
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
// EOF on stdin: the test process is gone, so go too.
process.stdin.on('end', stop)
process.stdin.resume()
"""


class Aedes(_BrokerProcess):
    """
    An Aedes broker (the npm package, MQTT 3.1.1 only) in a child node process,
    one plain TCP listener on C{host:port}, anonymous clients allowed.

    Each client's connection, errors and publishes are logged (see L{log}).

    @param options: Aedes constructor options (JSON-serialisable), for example
        C{{"maxTopicLevels": 10}}.
    @param prefix: the npm prefix whose C{node_modules} holds C{aedes}.
    @param executable: the node binary.
    """

    _name = "aedes"
    startTimeout = 10.0
    _closeStdin = False
    # The runner prints READY from listen()'s callback: the socket is open.
    _probe = False

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        options: Mapping[str, Any] | None = None,
        prefix: str = NODE_PREFIX,
        executable: str = "node",
        directory: str | None = None,
        reactor: Any = None,
    ) -> None:
        super().__init__(host=host, port=port, directory=directory, reactor=reactor)
        self.options = dict(options or {})
        self.prefix = os.path.abspath(prefix)
        self.executable = shutil.which(executable) or executable
        self.scriptPath = os.path.join(self.directory, "aedes-runner.mjs")

    def _command(self) -> list[str]:
        if not os.path.isdir(os.path.join(self.prefix, "node_modules", "aedes")):
            raise BrokerStartError(
                f"aedes is not installed under {self.prefix}: run ./dev test, or "
                f"npm install --prefix {self.prefix} aedes@1"
            )
        with open(self.scriptPath, "w", encoding="utf-8") as f:
            f.write(_AEDES_RUNNER)
        return _dieWithParent(
            [
                self.executable,
                self.scriptPath,
                self.host,
                str(self.port),
                self.prefix,
                json.dumps(self.options),
            ]
        )

    def _ready(self, protocol: _LogToFile, log: str) -> bool:
        return b"READY" in protocol.stdout

    def _lostBindRace(self, log: str) -> bool:
        return "EADDRINUSE" in log


#: The RabbitMQ start script itself: /usr/sbin/rabbitmq-server is a wrapper that
#: switches to the rabbitmq user and logs to /var/log.
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class _Epmd(_BrokerProcess):
    """An Erlang port mapper of one's own, in the foreground, on loopback only."""

    _name = "epmd"
    _logDirect = True

    def _command(self) -> list[str]:
        epmd = shutil.which("epmd") or "epmd"
        return _dieWithParent([epmd, "-port", str(self.port), "-address", self.host])

    def _ready(self, protocol: _LogToFile, log: str) -> bool:
        return True

    def _lostBindRace(self, log: str) -> bool:
        return "already in use" in log.lower() or "eaddrinuse" in log.lower()


class RabbitMQ(_BrokerProcess):
    """
    A RabbitMQ 3.10 node with the rabbitmq_mqtt plugin, run as a child process
    (not the system service): a unique node name, its data, logs, configuration
    and enabled-plugins file in its own directory, and its own epmd. The MQTT
    listener is C{host:port}; AMQP (L{amqpPort}), Erlang distribution
    (L{distPort}) and epmd (L{epmdPort}) get free loopback ports too. Anonymous
    MQTT clients are let in as guest (allowed over loopback).

    It logs to its log file directly, with no pipes in the reactor, so one node
    may serve several test classes: see L{shared_rabbitmq}. It starts in
    seconds (L{startTimeout} allows a loaded machine).

    @param max_message_size: RabbitMQ's C{max_message_size} in bytes (its own
        default, 128 MiB, when C{None}): a larger PUBLISH costs the connection.
    @param extra: more C{rabbitmq.conf} lines, e.g. C{["mqtt.prefetch = 5"]}.
    """

    _name = "rabbitmq"
    startTimeout = 90.0
    stopTimeout = 20.0
    _logDirect = True

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_message_size: int | None = None,
        extra: Sequence[str] = (),
        executable: str = RABBITMQ_SERVER,
        directory: str | None = None,
        reactor: Any = None,
    ) -> None:
        super().__init__(host=host, port=port, directory=directory, reactor=reactor)
        self.max_message_size = max_message_size
        self.extra = list(extra)
        self.executable = executable
        self.nodeName = f"mqtt-gw-test-{uuid.uuid4().hex[:10]}@localhost"
        self.amqpPort = 0
        self.distPort = 0
        self.configPath = os.path.join(self.directory, "rabbitmq.conf")
        self._epmd = _Epmd(
            host=host, directory=os.path.join(self.directory, "epmd"), reactor=reactor
        )

    @property
    def epmdPort(self) -> int:
        """The port of this node's own epmd (0 before the first start)."""
        return self._epmd.port

    def config(self) -> str:
        """The C{rabbitmq.conf} for the current ports."""
        lines = [
            f"listeners.tcp.default = {self.host}:{self.amqpPort}",
            f"mqtt.listeners.tcp.default = {self.host}:{self.port}",
            "mqtt.allow_anonymous = true",
            "mqtt.default_user = guest",
            "mqtt.default_pass = guest",
            "log.console = true",
            "log.console.level = info",
            "log.file = false",
            "disk_free_limit.absolute = 1MB",
        ]
        if self.max_message_size is not None:
            lines.append(f"max_message_size = {self.max_message_size}")
        lines += self.extra
        return "\n".join(lines) + "\n"

    def _environment(self) -> dict[str, str]:
        def path(name: str) -> str:
            return os.path.join(self.directory, name)

        env = dict(os.environ)
        env.update(
            HOME=self.directory,
            ERL_EPMD_ADDRESS=self.host,
            ERL_EPMD_PORT=str(self._epmd.port),
            RABBITMQ_NODENAME=self.nodeName,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.amqpPort),
            RABBITMQ_DIST_PORT=str(self.distPort),
            RABBITMQ_CONF_ENV_FILE=path("no-rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=self.configPath,
            RABBITMQ_ADVANCED_CONFIG_FILE=path("no-advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=path("enabled_plugins"),
            RABBITMQ_MNESIA_BASE=path("mnesia"),
            RABBITMQ_LOG_BASE=path("log"),
            RABBITMQ_LOGS="-",
            RABBITMQ_PLUGINS_EXPAND_DIR=path("plugins-expand"),
            RABBITMQ_PID_FILE=path("rabbitmq.pid"),
            # Run the VM in place of the script (one process to signal), no shell.
            RABBITMQ_ALLOW_INPUT="true",
            RABBITMQ_SERVER_START_ARGS="-noinput",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                "-kernel inet_dist_use_interface {127,0,0,1}"
            ),
        )
        return env

    def _command(self) -> list[str]:
        if not os.access(self.executable, os.X_OK):
            raise BrokerStartError(
                f"{self.executable} is missing: run ./dev test, or apt-get install "
                "rabbitmq-server"
            )
        if not self.amqpPort:
            self.amqpPort = free_port(self.host)
            self.distPort = free_port(self.host)
        with open(self.configPath, "w", encoding="utf-8") as f:
            f.write(self.config())
        with open(os.path.join(self.directory, "enabled_plugins"), "w") as f:
            f.write("[rabbitmq_mqtt].\n")
        return _dieWithParent([self.executable])

    async def _startOnce(self) -> None:
        if not self._epmd.running:
            await self._epmd.start()
        await super()._startOnce()

    async def _signal(self, name: str) -> None:
        await super()._signal(name)
        await self._epmd._signal(name)

    def _ready(self, protocol: _LogToFile, log: str) -> bool:
        return "Server startup complete" in log

    def _lostBindRace(self, log: str) -> bool:
        return "eaddrinuse" in log.lower()


#: The C{max_message_size} of L{shared_rabbitmq}'s node: small, so that a test of
#: an over-size packet needs no big payload (the gateway's default max_body is
#: 256 KiB).
SHARED_RABBITMQ_MAX_MESSAGE_SIZE = 128 * 1024

_shared: dict[str, RabbitMQ] = {}


async def shared_rabbitmq() -> RabbitMQ:
    """
    The one RabbitMQ node of this test process, started by the first caller
    (seconds) and reused by every later one; started again if a test stopped or
    killed it. Tests must leave it as they found it (no stop in cleanups) and
    use topics and client ids of their own; the exit guard kills it, and its
    epmd, when the process ends. Its C{max_message_size} is
    L{SHARED_RABBITMQ_MAX_MESSAGE_SIZE}.
    """
    broker = _shared.get("rabbitmq")
    if broker is None:
        broker = _shared["rabbitmq"] = RabbitMQ(
            max_message_size=SHARED_RABBITMQ_MAX_MESSAGE_SIZE
        )
    if not broker.running:
        await broker.start()
    return broker
