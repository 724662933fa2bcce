"""
C{python -m bench.halfload [--duration S]}: the gateway's peak and its latency
at half of it, against the bare llhttp protocol, in one run.

Three wrk loads, one after the other, over 32 keep-alive connections with
C{bench/post.lua}'s 64-byte QoS 1 POSTs: the bare llhttp protocol of
L{bench.baseline} at full speed, the gateway (shipped defaults: access log to a
file, the rate limiter on but never refusing) at full speed, then the gateway
paced to about half of the peak it just showed (each connection waits after each
answer; wrk's C{delay()}), where p99 is read. Results go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench import wrk
from bench.processes import start_baseline, start_gateway, start_mosquitto
from bench.report import publish

CONNECTIONS = 32
CONFIG = """\
[limits]
rate = 1000000
burst = 1000000
[log]
access = "access.log"
[auth]
allow_anonymous = true
"""


def paced_script(directory: Path, pause_ms: float) -> Path:
    """
    C{post.lua} with a pause of C{pause_ms} on average after every answer: wrk
    waits whole milliseconds, so each pause is the floor or the ceiling, at
    random in the right proportion (which also keeps the connections from
    sending in step).
    """
    script = directory / "paced.lua"
    pause = f"math.floor({pause_ms:.3f} + math.random())"
    script.write_text(
        wrk.SCRIPT.read_text() + f"\nfunction delay()\n   return {pause}\nend\n"
    )
    return script


def next_pause(pause_ms: float, probe: wrk.WrkResult, target: float) -> float:
    """
    The pause that brings the load of C{probe} (run with C{pause_ms}) to
    C{target} requests/s: each connection's cycle is its pause plus an answer's
    time, so the rate scales with the inverse of their sum.
    """
    answer = probe.latency_ms[50]
    cycle = (pause_ms + answer) * probe.requests_per_s / target
    return max(0.0, cycle - answer)


def _row(name: str, result: wrk.WrkResult, baseline: float) -> str:
    latency = result.latency_ms
    return (
        f"| {name} | {result.requests_per_s:,.0f} |"
        f" {result.requests_per_s / baseline:.2f} | {latency[50]:.2f} ms |"
        f" {latency[99]:.2f} ms | {result.non_2xx} |"
    )


def main(argv: list[str]) -> int:
    """Measure, print, and write the section of bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.halfload")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--output", default="bench/RESULTS.md")
    args = parser.parse_args(argv)
    path = "/topics/bench/load?qos=1"
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        baseline = start_baseline(directory, "llhttp", False, llhttp=True)
        try:
            bare = wrk.run(
                f"http://127.0.0.1:{baseline.port}{path}", args.duration, CONNECTIONS
            )
        finally:
            baseline.stop()
        broker = start_mosquitto(directory)
        try:
            gateway = start_gateway(directory, broker.port, CONFIG)
            url = f"http://127.0.0.1:{gateway.port}{path}"
            try:
                peak = wrk.run(url, args.duration, CONNECTIONS)
                target = peak.requests_per_s / 2
                pause = 1000 * CONNECTIONS / target
                for _ in range(3):  # short probes to find the pause
                    script = paced_script(directory, pause)
                    probe = wrk.run(url, 2, CONNECTIONS, script=script)
                    pause = next_pause(pause, probe, target)
                half = wrk.run(
                    url,
                    args.duration,
                    CONNECTIONS,
                    script=paced_script(directory, pause),
                )
            finally:
                gateway.stop()
        finally:
            broker.stop()
    floor = bare.requests_per_s
    publish(
        Path(args.output),
        "python -m bench.halfload",
        "Peak and latency at half load",
        [
            f"- Command: `python -m bench.halfload --duration {args.duration}`; wrk"
            f" -t1 -c{CONNECTIONS}, 64-byte QoS 1 POSTs; the paced load waits"
            f" {pause:.2f} ms on average after each answer on each connection",
            "",
            "| load | requests/s | ÷ bare llhttp | p50 | p99 | non-2xx |",
            "|---|---|---|---|---|---|",
            _row("bare llhttp protocol, full speed", bare, floor),
            _row("gateway (access log to a file), full speed", peak, floor),
            _row("gateway, paced to half its peak", half, floor),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
