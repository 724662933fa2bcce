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
            "Benchmark the gateway (QoS 1 through a local Mosquitto) against a bare "
            "twisted.web resource with wrk, check that every 2xx was delivered, and "
            "write the results."
        ),
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="measured seconds of load per server (whole seconds; default 10)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=32,
        help="keep-alive connections wrk holds open (default 32)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="wrk threads (default 1)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="unmeasured load before each measured run (default 1; 0: none)",
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
    return args


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
        warmup=args.warmup,
        keep_logs=args.keep_logs,
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
