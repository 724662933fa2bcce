"""
C{python -m bench.linkcut}: the delivery promise and the throughput while the
broker link is cut every second.

For each broker set-up (Mosquitto over MQTT 5, Mosquitto over MQTT 3.1.1), the
gateway (assembled as twistd assembles it) publishes through a proxy
(C{tests/linkcutter.py}) to a local Mosquitto while eight keep-alive HTTP clients
post numbered QoS 1 and QoS 2 messages (C{tests/linkcut_load.py}); a subscriber
on the broker itself records what was delivered. Each set-up runs twice in the
same process, back to back: with the link left alone (the baseline) and with it
cut every second at a random point (mid-packet included). The figures: messages
acknowledged (200) per second, their ratio to the baseline, the other answers,
and the count of 200s that were lost or, at QoS 2, delivered twice (both must
be 0). The gateway, the clients and the proxy share one process and one core,
so the absolute rate is well below the gateway's own; the ratio is the figure.

Results go to standard output and to C{bench/LINKCUT.md}.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater, react

from tests.brokers import Mosquitto, Subscriber
from tests.gateway import RunningGateway, config
from tests.linkcut_load import Outcome, run_under_cuts
from tests.linkcutter import LinkCutter

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "LINKCUT.md"


@dataclass
class Row:
    """One measured run."""

    setup: str
    cuts_every: float | None
    outcome: Outcome
    cuts: int

    @property
    def rate(self) -> float:
        return len(self.outcome.ok) / self.outcome.elapsed

    def markdown(self, baseline: float) -> str:
        statuses = Counter(self.outcome.statuses.values())
        others = ", ".join(
            f"{n}x {status}" for status, n in sorted(statuses.items()) if status != 200
        )
        cuts = f"every {self.cuts_every:g} s" if self.cuts_every else "none"
        return (
            f"| {self.setup} | {cuts} ({self.cuts}) | {len(self.outcome.statuses)} | "
            f"{self.rate:,.0f} | "
            f"{self.rate / baseline:.2f}x | {others or '-'} | "
            f"{len(self.outcome.lost())} | {len(self.outcome.duplicated())} | "
            f"{self.outcome.slowest:.2f} |"
        )


async def measure(protocol: str, cuts_every: float | None, duration: float) -> Row:
    """One run: a fresh broker, proxy, gateway and subscriber."""
    from twisted.internet import reactor

    broker = Mosquitto(connection_messages=False)
    await broker.start()
    level = 4 if protocol == "3.1.1" else 5
    subscriber = Subscriber("127.0.0.1", broker.port, "cut/#", protocol=level)
    cutter = LinkCutter("127.0.0.1", broker.port)
    gateway = None
    try:
        await subscriber.start()
        cutter.start()
        gateway = RunningGateway(
            config(f"mqtt://127.0.0.1:{cutter.port}", protocol=protocol)
            + "[limits]\nrate = 0\n"
        )
        await gateway.start()
        if cuts_every:
            cutter.cut_every(cuts_every, jitter=cuts_every / 2, midway=True)
        outcome = await run_under_cuts(gateway.url, 10**9, clients=8, duration=duration)
        cutter.stop_cutting()
        await deferLater(reactor, 2.0, lambda: None)
        outcome.record(subscriber.messages, "cut/")
        return Row(f"Mosquitto, MQTT {protocol}", cuts_every, outcome, cutter.cuts)
    finally:
        if gateway is not None:
            await gateway.stop()
        await cutter.stop()
        await subscriber.stop()
        await broker.stop()


def report(rows: Sequence[Row], command: str) -> str:
    """The Markdown section of one run."""
    lines = [
        f"## Run of {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC",
        "",
        f"Machine: {platform.node() or 'unknown'}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.platform()}. Command: `{command}`.",
        "",
        "| set-up | link cuts (count) | requests | 200/s | vs. no cuts | other answers"
        " | lost 200s | QoS 2 200s delivered twice | slowest answer (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    baseline = 0.0
    for row in rows:
        if row.cuts_every is None:
            baseline = row.rate
        lines.append(row.markdown(baseline or row.rate))
    return "\n".join(lines) + "\n"


HEADER = """# Link-cut benchmark

Written by `python -m bench.linkcut` (see its docstring): throughput and the
delivery promise while the gateway's broker link is cut every second, against the
same set-up with the link left alone, in one run. Every run overwrites this file.

"""


def main(argv: Sequence[str] | None = None) -> None:
    """Run every set-up with and without cuts, print and write the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.linkcut")
    parser.add_argument("--duration", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    command = "python -m bench.linkcut " + " ".join(argv or sys.argv[1:])

    async def run() -> None:
        rows = []
        for protocol in ("5", "3.1.1"):
            for cuts_every in (None, 1.0):
                row = await measure(protocol, cuts_every, args.duration)
                rows.append(row)
                print(row.setup, row.cuts_every, row.outcome.summary(), flush=True)
        section = report(rows, command.strip())
        print(section)
        args.output.write_text(HEADER + section)

    react(lambda _: ensureDeferred(run()))


if __name__ == "__main__":
    main()
