"""
C{python -m bench}: run the benchmarks, print the results, write C{RESULTS.md}.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from bench import report, scenario
from bench.processes import StartError
from bench.wrk import WrkError

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "RESULTS.md"
QUICK_DURATION = 3.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of C{python -m bench}."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark the gateway (QoS 1 through a local Mosquitto; anonymous, "
            "Basic, HTTPS with Basic or a device certificate, a TLS handshake per "
            "request, broker mode) against a bare twisted.web resource, with wrk "
            "and a python client, check that every 2xx was delivered, and write "
            "the results."
        ),
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="measured seconds of load per scenario (whole seconds; default 10)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=32,
        help="connections of the client, wrk or python (default 32)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="wrk threads (default 1)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        help="processes of the python client (bench/loadgen.py), which share the "
        "connections out as threads (default 2)",
    )
    parser.add_argument(
        "--scenarios",
        type=_scenario_list,
        default=scenario.KEYS,
        metavar="A,B,...",
        help="the scenarios to run, comma-separated (default: all): "
        + ", ".join(scenario.KEYS),
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="unmeasured load before each measured run (default 1; 0: none)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each scenario, wait up to SECONDS for other processes to "
        "leave the machine quiet (for shared machines; default 0: no waiting)",
    )
    parser.add_argument(
        "--rerun-noisy",
        type=int,
        default=1,
        metavar="N",
        help="run a scenario again, up to N times, while other processes used more "
        "than 20%% of a CPU during its run; the quietest run counts (default 1)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a {QUICK_DURATION:g} s smoke run without warm-up",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        metavar="PATH",
        help="the Markdown report to overwrite (default bench/RESULTS.md)",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the temporary directory with every log and configuration file",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = QUICK_DURATION
        args.warmup = 0.0
    if args.duration < 1:
        parser.error("--duration must be at least 1 second")
    if args.threads < 1 or args.connections < args.threads:
        parser.error("--connections must be at least --threads, which is at least 1")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    return args


def _scenario_list(text: str) -> tuple[str, ...]:
    keys = tuple(key.strip() for key in text.split(",") if key.strip())
    unknown = [key for key in keys if key not in scenario.KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or '(none)'}; choose from "
            + ", ".join(scenario.KEYS)
        )
    return keys


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the benchmark like Ctrl-C, stopping every child process."""
    raise KeyboardInterrupt


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; return the process exit status."""
    args = parse_args(argv)
    # Ctrl-C and SIGTERM stop every child process on the way out, even when the
    # shell that started the benchmark had SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    settings = scenario.Settings(
        duration=float(max(1, round(args.duration))),
        connections=args.connections,
        threads=args.threads,
        processes=args.processes,
        warmup=args.warmup,
        keep_logs=args.keep_logs,
        scenarios=args.scenarios,
        wait_quiet=args.wait_quiet,
        rerun_noisy=max(0, args.rerun_noisy),
    )
    command = ["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]
    try:
        results = scenario.run(settings, _progress)
    except KeyboardInterrupt:
        print("bench: interrupted; every child process was stopped", file=sys.stderr)
        return 130
    except (StartError, WrkError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    section = report.render(results, report.machine(), command)
    print(section)
    report.write(args.output, section)
    print(f"bench: wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
