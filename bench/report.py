"""
The report of a benchmark run: Markdown tables for standard output and
C{bench/RESULTS.md}, with the machine and software it ran on.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.scenario import (
    BASELINE,
    BASELINE_NO_FORMS,
    BUSY_PERCENT,
    GATEWAY,
    Results,
    ServerRun,
)

HEADER = """\
# Benchmark results

Written by `python -m bench` (`./dev bench`, which first installs mosquitto, wrk
and curl); every run overwrites this file with its own results. To reproduce, on a
machine with nothing else busy:

```sh
./dev bench                                   # 10 s per server, 32 connections
.venv/bin/python -m bench --duration 30       # longer runs
.venv/bin/python -m bench --quick             # a 3 s smoke run
```

The scenario: wrk keeps 32 HTTP/1.1 connections alive and POSTs a distinct
64-byte body per request to `/topics/bench/load?qos=1`, one server at a time, each
for the same duration after a short warm-up. The servers: the gateway (twistd, its
own broker session to a local Mosquitto 2.0, access log and rate limiting off, so a
`200` means Mosquitto's PUBACK arrived) and two baselines, a bare twisted.web
resource answering `200` to every POST, once as `Site(root)` with twisted.web's
defaults and once with `parsePOSTFormSubmission=False`. During the gateway's run
`mosquitto_sub` subscribes to the topic at QoS 1 and the benchmark checks that
every `2xx` response was delivered exactly as sent.
"""


@dataclass(frozen=True)
class Machine:
    """Where and with what the benchmark ran."""

    date: str
    system: str
    cpu: str
    cpus: int
    python: str
    twisted: str
    mosquitto: str
    wrk: str
    revision: str


def _first_line(argv: Sequence[str]) -> str:
    """The first output line of a command, or C{"unknown"}."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            timeout=10,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (done.stdout + done.stderr).decode(errors="replace").splitlines()
    return lines[0].strip() if lines else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _revision() -> str:
    """The repository's commit, with C{-dirty} for uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    revision = _first_line(["git", "-C", str(root), "describe", "--always", "--dirty"])
    return revision if not revision.startswith("fatal") else "unknown"


def machine() -> Machine:
    """Describe this machine and the software under test."""
    import twisted

    uname = os.uname()
    return Machine(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        system=f"{uname.sysname} {uname.release} {uname.machine}",
        cpu=_cpu_model(),
        cpus=len(os.sched_getaffinity(0)),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        twisted=twisted.__version__,
        mosquitto=_first_line(["mosquitto", "-h"]),
        wrk=_first_line(["wrk", "-v"]).split(" Copyright")[0],
        revision=_revision(),
    )


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        padded = (cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        return "| " + " | ".join(padded) + " |"

    return [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(row) for row in rows
    ]


def results_table(results: Results) -> list[str]:
    """The main table: one row per server."""
    rows = []
    for run in results.runs:
        errors = run.wrk.total_socket_errors
        rows.append(
            [
                run.name,
                f"{run.wrk.requests_per_s:,.0f}",
                _ms(run.wrk.latency_ms[50]),
                _ms(run.wrk.latency_ms[99]),
                _count(run.wrk.requests),
                _count(run.wrk.non_2xx),
                "0"
                if errors == 0
                else ", ".join(f"{k} {v}" for k, v in run.wrk.socket_errors.items()),
                _mib(run.peak_rss_kib),
                f"{run.cpu_percent.get('server', 0.0):.0f}%",
            ]
        )
    return _table(
        [
            "server",
            "req/s",
            "p50",
            "p99",
            "responses",
            "non-2xx",
            "socket errors",
            "peak RSS",
            "server CPU",
        ],
        rows,
    )


def ratios(results: Results) -> list[str]:
    """Lines giving the gateway's throughput as a fraction of each baseline's."""
    gateway = results.run_named(GATEWAY)
    lines = []
    for name in (BASELINE, BASELINE_NO_FORMS):
        baseline = results.run_named(name)
        if gateway is None or baseline is None or baseline.wrk.requests_per_s == 0:
            continue
        ratio = gateway.wrk.requests_per_s / baseline.wrk.requests_per_s
        lines.append(f"- gateway / {name}: **{ratio:.2f}** (req/s)")
    return lines


def delivery_check(run: ServerRun) -> tuple[list[str], list[str]]:
    """
    The delivery table of the gateway's run and the verdict lines below it.

    wrk stops with up to one request per connection in flight: written, maybe
    published, never answered. So the check is: every 2xx was delivered
    (distinct payloads >= 2xx) and nothing was delivered that was not sent
    (distinct payloads <= requests written).
    """
    delivery = run.delivery
    if delivery is None:
        return [], []
    sent = run.wrk.sent
    ok = run.wrk.ok
    table = _table(
        [
            "requests written",
            "responses",
            "2xx",
            "unanswered when wrk stopped",
            "messages delivered",
            "distinct",
            "duplicates",
        ],
        [
            [
                _count(sent),
                _count(run.wrk.requests),
                _count(ok),
                _count(run.wrk.in_flight),
                _count(delivery.messages),
                _count(delivery.distinct),
                _count(delivery.duplicates),
            ]
        ],
    )
    verdict = []
    if delivery.distinct < ok:
        verdict.append(
            f"- **LOST MESSAGES**: {ok - delivery.distinct:,} more 2xx responses than "
            "distinct messages delivered."
        )
    elif sent is not None and delivery.distinct > sent:
        verdict.append(
            f"- **UNEXPECTED**: {delivery.distinct - sent:,} more distinct messages "
            "delivered than requests written."
        )
    else:
        extra = delivery.distinct - ok
        everything = " exactly once" if delivery.duplicates == 0 else ""
        verdict.append(
            f"- Every 2xx response was delivered{everything} ({ok:,} messages); the "
            f"{extra:,} further messages delivered are requests that were in flight "
            "when wrk stopped: written and published, their responses never read."
        )
        if sent is not None and delivery.distinct == sent:
            verdict.append(
                f"- So all {sent:,} requests wrk wrote were delivered, none lost."
            )
        elif sent is not None:
            verdict.append(
                f"- {sent - delivery.distinct:,} of the requests in flight when wrk "
                "stopped were not delivered (not necessarily a loss: wrk may have "
                "stopped before the gateway read them)."
            )
    if delivery.duplicates:
        verdict.append(
            f"- {delivery.duplicates:,} messages arrived twice (QoS 1 allows it after "
            "a resend; with one steady broker connection there should be none)."
        )
    if run.wrk.non_2xx:
        verdict.append(
            f"- **{run.wrk.non_2xx:,} non-2xx responses**: the gateway refused or "
            "failed requests under load (wrk does not say which status)."
        )
    return table, verdict


def cpu_table(results: Results) -> list[str]:
    """Who used the CPU during each measured run, in percent of one core."""
    names = ["wrk", "server", "mosquitto", "subscriber", "others"]
    rows = []
    for run in results.runs:
        cells = [
            f"{run.cpu_percent[n]:.0f}%" if n in run.cpu_percent else "-" for n in names
        ]
        total = sum(run.cpu_percent.values())
        rows.append([run.name, *cells, f"{total:.0f}%"])
    return _table(["server", *names, "machine total"], rows)


def _findings(title: str, found: Sequence[tuple[int, str]]) -> list[str]:
    if not found:
        return [f"- {title}: nothing at warning level or above."]
    lines = [f"- {title}:", "", "  ```"]
    for count, line in found[:15]:
        lines.append(f"  {count:>7,} x {line}")
    if len(found) > 15:
        lines.append(f"  ... and {len(found) - 15} more distinct lines")
    return [*lines, "  ```"]


def render(results: Results, machine: Machine, command: Sequence[str]) -> str:
    """The section of one run, in Markdown."""
    settings = results.settings
    gateway = results.run_named(GATEWAY)
    busy = []
    if results.idle_load > BUSY_PERCENT or any(
        run.cpu_percent.get("others", 0.0) > BUSY_PERCENT for run in results.runs
    ):
        busy = [
            "**The machine was not quiet**: other processes used "
            f"{results.idle_load:.0f}% of one CPU in the second before the benchmark "
            "started (see `others` above for during the runs); expect these figures "
            "to vary from run to run.",
            "",
        ]
    out = [
        f"## Run of {machine.date}",
        "",
        f"- Machine: {machine.system}; {machine.cpu}; {machine.cpus} CPUs (nproc)",
        f"- Software: {machine.python}, Twisted {machine.twisted}, "
        f"{machine.mosquitto}, {machine.wrk}; repository at {machine.revision}",
        f"- Command: `{shlex.join(command)}`",
        f"- Load: wrk -t{settings.threads} -c{settings.connections}, "
        f"{settings.duration:g} s measured per server after {settings.warmup:g} s of "
        "warm-up; a distinct 64-byte body per request "
        "(`Content-Type: application/octet-stream`); QoS 1",
        "",
        *results_table(results),
        "",
        *ratios(results),
        "",
        "p50/p99: wrk's latency distribution (`--latency`); responses: all responses "
        "received; non-2xx: wrk's count of statuses above 399; peak RSS: `VmHWM` of "
        "the server process at the end of its run.",
        "",
    ]
    if gateway is not None and gateway.delivery is not None:
        table, verdict = delivery_check(gateway)
        out += [
            "### Delivery (gateway run, mosquitto_sub at QoS 1)",
            "",
            *table,
            "",
            *verdict,
            "",
        ]
    out += [
        "### CPU during the measured runs (percent of one core)",
        "",
        *cpu_table(results),
        "",
        f"The machine has {machine.cpus} CPUs ({machine.cpus * 100}%), shared by wrk "
        f"({settings.threads} thread), the server, Mosquitto and (in the gateway run) "
        "the subscriber: the server competes with its own load generator and broker. "
        "A Python server uses at most one core (100%). `others` is the rest of the "
        "machine's busy time (other processes, this benchmark's polling).",
        "",
        *busy,
        "### Logs",
        "",
    ]
    for run in results.runs:
        stop = (
            f"exited with status {run.exit_code} {run.stop_s:.2f} s after SIGTERM"
            if run.stop_s is not None
            else "not stopped"
        )
        if run.killed:
            stop += " (killed: it did not exit by itself)"
        out += _findings(f"{run.name} ({stop})", run.log_findings)
    out += _findings("mosquitto", results.broker_findings)
    if gateway is not None:
        out += [
            "",
            "### How the gateway ran",
            "",
            "```sh",
            shlex.join(results.gateway_command),
            shlex.join(results.wrk_command),
            "```",
            "",
            "`gateway.toml`:",
            "",
            "```toml",
            results.gateway_config.rstrip(),
            "```",
        ]
    if results.log_directory:
        out += ["", f"Logs and configuration files: `{results.log_directory}`"]
    return "\n".join(out) + "\n"


def write(path: Path, section: str) -> None:
    """Overwrite C{path} with the header and the latest run's section."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "\n" + section)
