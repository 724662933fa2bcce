# -*- test-case-name: tests.test_brokers -*-
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
from collections.abc import Mapping
from typing import Any

from tests.brokers import BrokerStartError, _BrokerProcess, _dieWithParent, _LogToFile

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
