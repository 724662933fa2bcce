"""
C{python -m bench.session_cost PORT}: the CPU the gateway's broker session spends
per QoS 1 message, alone: 5,000 messages handed to a L{BrokerSession} connected to
the Mosquitto on 127.0.0.1:PORT at once, until every PUBACK has arrived. Prints the
microseconds of this process's CPU per message.

The figure is the part of a message's cost that no HTTP API can save, whatever
the batch size (see C{python -m bench.bulk}).
"""

from __future__ import annotations

import sys
import time

MESSAGES = 5000


def main(argv: list[str]) -> int:
    """Measure against the broker on the port in C{argv[0]}; print the figure."""
    from twisted.internet import reactor, task
    from twisted.internet.defer import ensureDeferred, gatherResults
    from twisted.internet.endpoints import HostnameEndpoint

    from gateway.model import Message
    from gateway.mqtt.session import Broker, BrokerSession, SessionSettings

    port = int(argv[0])
    session = BrokerSession(
        [
            Broker(
                f"mqtt://127.0.0.1:{port}", HostnameEndpoint(reactor, "127.0.0.1", port)
            )
        ],
        SessionSettings(client_id="bench-session-cost", protocol="5"),
        publish_timeout=30,
        clock=reactor,
    )
    session.startService()
    result: list[float] = []

    async def measure() -> None:
        while not session.connected:
            await task.deferLater(reactor, 0.05)
        started = time.process_time()
        sender = (("http-client-id", "bench"),)
        await gatherResults(
            [
                session.publish(
                    Message(topic="bench/session", payload=b"%060d" % i, qos=1),
                    sender,
                )
                for i in range(MESSAGES)
            ]
        )
        result.append(1e6 * (time.process_time() - started) / MESSAGES)

    def done(_: object) -> None:
        reactor.stop()

    ensureDeferred(measure()).addBoth(done)
    reactor.run()
    if not result:
        return 1
    print(f"{result[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
