"""
The report of a benchmark run: Markdown tables for standard output and
C{bench/RESULTS.md}, with the machine and software it ran on.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.scenario import (
    BASELINES,
    BUSY_PERCENT,
    LLHTTP,
    REFERENCE,
    SCENARIOS,
    Results,
    ServerRun,
)

HEADER = """\
# Benchmark results

Written by `python -m bench` (`./dev bench`, which first installs mosquitto, wrk
and curl); every run overwrites this file with its own results, except the section
of `python -m bench.bulk` (the EMQX-compatible bulk publish against API 1), which
only that command replaces. To reproduce, on a machine with nothing else busy, from
the repository's root:

```sh
./dev bench                                   # every scenario, 10 s each
.venv/bin/python -m bench --duration 30       # longer runs
.venv/bin/python -m bench --quick             # a 3 s smoke run
.venv/bin/python -m bench --scenarios http,https-cert,micro   # some of them
.venv/bin/python -m bench.bulk                # /api/v5/publish/bulk vs API 1
```

Every scenario POSTs a distinct 64-byte body per request to
`/topics/bench/load?qos=1` from 32 connections (one request in flight on each),
one server at a time, each for the same duration after a short warm-up. The
servers: the gateway (twistd, its own broker session to a local Mosquitto 2.0,
the access log on, to a file, and the rate limiter on with a rate it never
reaches; a `200` means Mosquitto's PUBACK arrived) in several set-ups, and the
baselines: a bare llhttp protocol on Twisted and a bare twisted.web resource,
each answering `200` to every POST. The client is wrk, or, where wrk cannot do it
(client certificates,
TLS handshakes with and without resumption), the benchmark's own python client
(`bench/loadgen.py`: several processes, one thread and one blocking socket per
connection), whose CPU is measured so that one can see whether it was the
bottleneck. During every gateway run `mosquitto_sub` subscribes to the topic at
QoS 1 and the benchmark checks that every `2xx` response was delivered exactly as
sent. The credentials: a `mosquitto_passwd -b` password file with one user, and
the test suite's certificate hierarchy (`tests/certs.py`: root CA, intermediate,
server certificate for 127.0.0.1, device certificate `device-42`; EC P-256).
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
    openssl: str
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


def _openssl() -> str:
    """The OpenSSL of python's C{ssl} and of pyOpenSSL (the gateway's)."""
    import ssl

    try:
        from OpenSSL import SSL

        ours = SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode()
    except Exception:
        ours = "unknown"
    return f"pyOpenSSL's {ours} (python ssl: {ssl.OPENSSL_VERSION})"


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
        openssl=_openssl(),
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


def _ratio(run: ServerRun, other: ServerRun | None) -> str:
    if other is None or other.load.requests_per_s == 0:
        return "-"
    return f"{run.load.requests_per_s / other.load.requests_per_s:.2f}"


def _errors(run: ServerRun) -> str:
    if run.load.total_socket_errors == 0:
        return "0"
    return ", ".join(f"{k} {v:,}" for k, v in run.load.socket_errors.items() if v)


def delivery_verdict(run: ServerRun) -> str:
    """C{"all"}, or what went wrong with the deliveries, for the main table."""
    delivery = run.delivery
    if delivery is None:
        return "-"
    sent = run.load.sent
    if delivery.distinct < run.load.ok:
        return f"**LOST {run.load.ok - delivery.distinct:,}**"
    if sent is not None and delivery.distinct > sent:
        return f"**{delivery.distinct - sent:,} unexpected**"
    if delivery.duplicates:
        return f"all ({delivery.duplicates:,} twice)"
    return "all"


def results_table(results: Results) -> list[str]:
    """The main table: one row per scenario, skipped ones included."""
    reference = results.run_for(REFERENCE)
    site, site_noforms = (results.run_for(key) for key in BASELINES)
    llhttp = results.run_for(LLHTTP)
    skipped = {s.scenario.key: s for s in results.skipped}
    rows = []
    for which in SCENARIOS:
        run = results.run_for(which.key)
        if run is None:
            if which.key in skipped:
                rows.append(
                    [f"`{which.key}`", which.title, "skipped (see below)"] + [""] * 13
                )
            continue
        rows.append(
            [
                f"`{which.key}`",
                which.title,
                which.client,
                f"{run.load.requests_per_s:,.0f}"
                + (" ¹" if results.noisy(run) else ""),
                _ratio(run, reference),
                _ratio(run, llhttp),
                _ratio(run, site),
                _ratio(run, site_noforms),
                _ms(run.load.latency_ms[50]),
                _ms(run.load.latency_ms[99]),
                _count(run.load.requests),
                _count(run.load.non_2xx),
                _errors(run),
                delivery_verdict(run),
                f"{run.cpu_percent.get('server', 0.0):.0f}%",
                f"{run.cpu_percent.get('client', 0.0):.0f}%",
            ]
        )
    return _table(
        [
            "key",
            "scenario",
            "client",
            "req/s",
            "÷ http",
            "÷ llhttp",
            "÷ Site(root)",
            "÷ Site(no forms)",
            "p50",
            "p99",
            "responses",
            "non-2xx",
            "socket errors",
            "delivered",
            "server CPU",
            "client CPU",
        ],
        rows,
    )


def delivery_table(results: Results) -> tuple[list[str], list[str]]:
    """
    The delivery table of the gateway runs and the remarks below it.

    The client stops with up to one request per connection in flight (wrk:
    written, maybe published, never answered). So the check is: every 2xx was
    delivered (distinct payloads >= 2xx) and nothing was delivered that was not
    sent (distinct payloads <= requests written).
    """
    rows = []
    remarks = []
    for run in results.runs:
        delivery = run.delivery
        if delivery is None:
            continue
        sent = run.load.sent
        ok = run.load.ok
        rows.append(
            [
                f"`{run.scenario.key}`",
                _count(sent),
                _count(run.load.requests),
                _count(ok),
                _count(run.load.in_flight),
                _count(delivery.messages),
                _count(delivery.distinct),
                _count(delivery.duplicates),
                delivery_verdict(run),
            ]
        )
        key = f"`{run.scenario.key}`"
        if delivery.distinct < ok:
            remarks.append(
                f"- {key}: **LOST MESSAGES**: {ok - delivery.distinct:,} more 2xx "
                "responses than distinct messages delivered."
            )
        elif sent is not None and delivery.distinct > sent:
            remarks.append(
                f"- {key}: **UNEXPECTED**: {delivery.distinct - sent:,} more "
                "distinct messages delivered than requests written."
            )
        elif sent is not None and delivery.distinct < sent:
            remarks.append(
                f"- {key}: {sent - delivery.distinct:,} of the requests written "
                "were not delivered; they are among the "
                f"{sent - run.load.requests:,} never answered (in flight when the "
                "client stopped, or failed), so not necessarily lost."
            )
        if delivery.duplicates:
            remarks.append(
                f"- {key}: {delivery.duplicates:,} messages arrived twice (QoS 1 "
                "allows it after a resend; with steady broker connections there "
                "should be none)."
            )
        if run.load.non_2xx:
            remarks.append(
                f"- {key}: **{run.load.non_2xx:,} non-2xx responses**: the gateway "
                "refused or failed requests under load"
                + (
                    " (wrk does not say which status)."
                    if run.python is None
                    else f" (statuses: {_statuses(run)})."
                )
            )
    table = _table(
        [
            "key",
            "requests written",
            "responses",
            "2xx",
            "unanswered when the client stopped",
            "messages delivered",
            "distinct",
            "duplicates",
            "verdict",
        ],
        rows,
    )
    if rows and not remarks:
        remarks.append(
            "- Every 2xx response was delivered exactly once, and every further "
            "message delivered was a request written but not answered when the "
            "client stopped (published, its response never read)."
        )
    return table, remarks


def _statuses(run: ServerRun) -> str:
    if run.python is None:
        return "?"
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(run.python.statuses.items()))


def cpu_table(results: Results) -> list[str]:
    """Who used the CPU during each measured run, in percent of one core."""
    names = ["client", "server", "mosquitto", "subscriber", "others"]
    rows = []
    for run in results.runs:
        cells = [
            f"{run.cpu_percent[n]:.0f}%" if n in run.cpu_percent else "-" for n in names
        ]
        total = sum(run.cpu_percent.values())
        server_s = run.cpu_percent.get("server", 0.0) / 100 * run.wall_s
        per_response = (
            f"{1e6 * server_s / run.load.requests:.0f} µs" if run.load.requests else "-"
        )
        rows.append(
            [
                f"`{run.scenario.key}`",
                *cells,
                f"{total:.0f}%",
                per_response,
                _mib(run.peak_rss_kib),
            ]
        )
    return _table(
        [
            "key",
            *names,
            "machine total",
            "server CPU per response",
            "server peak RSS",
        ],
        rows,
    )


def bottleneck_note(run: ServerRun, cpus: int) -> str | None:
    """
    When the server did not use a whole core: who else was busy, and whether the
    latency looks like a Nagle / delayed-ACK stall rather than work.
    """
    server = run.cpu_percent.get("server", 0.0)
    if server >= 90 or not run.load.requests:
        return None
    client = run.cpu_percent.get("client", 0.0)
    others = run.cpu_percent.get("others", 0.0)
    total = sum(run.cpu_percent.values())
    note = (
        f"The server used {server:.0f}% of a core, the client {client:.0f}%, the "
        f"machine {total:.0f}% of {cpus * 100}%: "
    )
    saturated = total >= 85 * cpus
    if saturated:
        note += f"the machine was nearly saturated (other processes: {others:.0f}%)."
    elif client >= 80:
        note += "the client may have limited the load."
    else:
        note += "neither the server nor the client was CPU-bound."
    p50 = run.load.latency_ms[50]
    if not saturated and client < 80 and 38 <= p50 <= 60:
        note += (
            f" A p50 of {p50:.0f} ms, just above Linux's minimum delayed-ACK "
            "time (40 ms), with idle CPU, is the signature of a response held back "
            "by Nagle's algorithm until the client acknowledges an earlier segment."
        )
    return note


def scenario_paragraphs(results: Results, cpus: int) -> list[str]:
    """A short paragraph per scenario: exactly what was measured, and its facts."""
    settings = results.settings
    skipped = {s.scenario.key: s for s in results.skipped}
    out = []
    for which in SCENARIOS:
        run = results.run_for(which.key)
        if run is None and which.key not in skipped:
            continue
        what = which.what.replace("{connections}", str(settings.connections))
        out.append(f"- **`{which.key}`** ({which.title}). {what}")
        if run is not None:
            notes = list(run.notes)
            bottleneck = bottleneck_note(run, cpus)
            if bottleneck is not None:
                notes.append(bottleneck)
            for note in notes:
                out.append(f"  {note}")
        else:
            out.append(f"  **Skipped**: {skipped[which.key].reason}")
        out.append("")
    return out


def micro_section(results: Results) -> list[str]:
    """The micro-measurements, with the gateway's CPU per request beside them."""
    if not results.micro:
        return []
    rows = []
    for timing in results.micro:
        if timing.us_per_call is None:
            rows.append([timing.name, "failed", "-", f"{timing.what} ({timing.error})"])
            continue
        rows.append(
            [
                timing.name,
                f"{timing.us_per_call:.1f} µs",
                f"{1e6 / timing.us_per_call:,.0f}",
                timing.what,
            ]
        )
    out = [
        "### Password verification and the request path (no server)",
        "",
        "In the benchmark's own process, no server running: each figure is the "
        "median of 7 loops of about 0.2 s. The password file is the scenarios' "
        f"(`{results.password_hash}...`).",
        "",
        *_table(["call", "per call", "calls/s on one core", "what"], rows),
        "",
    ]
    basic = results.run_for("http-basic")
    timings = {t.name: t.us_per_call for t in results.micro}
    cached = timings.get("request path, Basic, cached")
    cold = timings.get("PasswordFile.verify, cold")
    if basic is not None and basic.load.requests and cached and cold:
        server_us = (
            1e6
            * basic.cpu_percent.get("server", 0.0)
            / 100
            * basic.wall_s
            / basic.load.requests
        )
        out += [
            f"For scale: in `http-basic` the gateway used {server_us:.0f} µs of CPU "
            f"per response. The authenticate + authorize + parse path with a cached "
            f"password is {cached:.0f} µs of that ({100 * cached / server_us:.0f}%); "
            f"one cold PBKDF2 check ({cold:.0f} µs) would be "
            f"{100 * cold / server_us:.0f}% if it were paid on every request, which "
            "the verification cache prevents (it is paid once per user and "
            "password, and on every failed attempt).",
            "",
        ]
    return out


def _findings(title: str, found: Sequence[tuple[int, str]]) -> list[str]:
    if not found:
        return [f"- {title}: nothing at warning level or above."]
    lines = [f"- {title}:", "", "  ```"]
    for count, line in found[:15]:
        lines.append(f"  {count:>7,} x {line}")
    if len(found) > 15:
        lines.append(f"  ... and {len(found) - 15} more distinct lines")
    return [*lines, "  ```"]


def _how(run: ServerRun) -> list[str]:
    out = [
        "<details>",
        f"<summary><code>{run.scenario.key}</code>: command lines"
        + (" and gateway.toml" if run.config else "")
        + "</summary>",
        "",
        "```sh",
        *(shlex.join(command) for command in run.commands),
        "```",
    ]
    if run.config:
        out += ["", "```toml", run.config.rstrip(), "```"]
    return [*out, "", "</details>", ""]


def render(results: Results, machine: Machine, command: Sequence[str]) -> str:
    """The section of one run, in Markdown."""
    settings = results.settings
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
        f"{machine.openssl}, {machine.mosquitto}, {machine.wrk}; repository at "
        f"{machine.revision}",
        f"- Command: `{shlex.join(command)}`",
        f"- Load: {settings.connections} connections (wrk -t{settings.threads}, or "
        f"the python client in {settings.processes} processes), "
        f"{settings.duration:g} s measured per scenario after {settings.warmup:g} s "
        "of warm-up; a distinct 64-byte body per request "
        "(`Content-Type: application/octet-stream`); QoS 1",
        "",
    ]
    if results.runs or results.skipped:
        out += [
            *results_table(results),
            "",
            "req/s: responses per second of the measured window; `÷ http` etc.: "
            "req/s as a fraction of the `http` scenario's (the gateway, anonymous, "
            "plain HTTP keep-alive) and of the three baselines' (`÷ llhttp`: the bare "
            "llhttp protocol, the floor). p50/p99: latency "
            "from writing a request to reading its response (wrk's `--latency`; the "
            "python client measures the same), never including connecting or TLS "
            "handshakes. non-2xx: wrk counts statuses above 399, the python client "
            "every status outside 200-299. delivered: the subscriber's check (below). "
            "server/client CPU: percent of one core during the window.",
            "",
        ]
        if any(results.noisy(run) for run in results.runs):
            out += [
                f"¹ Other processes used more than {BUSY_PERCENT:.0f}% of a CPU "
                "during this run (`others` in the CPU table): its req/s is low, its "
                "server CPU per response still holds.",
                "",
            ]
    for skip in results.skipped:
        out.append(f"- **`{skip.scenario.key}` skipped**: {skip.reason}")
    if results.skipped:
        out.append("")
    if results.runs or results.skipped:
        out += [
            "### What each scenario measured",
            "",
            *scenario_paragraphs(results, machine.cpus),
        ]
    table, remarks = delivery_table(results)
    if remarks:
        out += [
            "### Delivery (gateway runs, mosquitto_sub at QoS 1)",
            "",
            *table,
            "",
            *remarks,
            "",
        ]
    if results.runs:
        out += [
            "### CPU during the measured runs (percent of one core)",
            "",
            *cpu_table(results),
            "",
            f"The machine has {machine.cpus} CPUs ({machine.cpus * 100}%), shared by "
            "the client, the server, Mosquitto and (in gateway runs) the "
            "subscriber: the server competes with its own load generator and "
            "broker. A Python server uses at most one core (100%). The python "
            "client's CPU is what its processes measured over the window; wrk's is "
            "its whole run. `others` is the rest of the machine's busy time (other "
            "processes, this benchmark's polling). Server CPU per response: the "
            "server's CPU time in the window divided by the responses.",
            "",
            *busy,
        ]
    out += micro_section(results)
    if results.runs:
        out += ["### Logs", ""]
        for run in results.runs:
            stop = (
                f"exited with status {run.exit_code} {run.stop_s:.2f} s after SIGTERM"
                if run.stop_s is not None
                else "not stopped"
            )
            if run.killed:
                stop += " (killed: it did not exit by itself)"
            out += _findings(f"`{run.scenario.key}` ({stop})", run.log_findings)
            if run.scenario.mode == "broker":
                out += _findings(
                    f"`{run.scenario.key}`: its Mosquitto with the password file",
                    run.broker_findings,
                )
        out += _findings("mosquitto", results.broker_findings)
        out += ["", "### How each scenario ran", ""]
        for run in results.runs:
            out += _how(run)
    if results.log_directory:
        out += ["", f"Logs and configuration files: `{results.log_directory}`"]
    return "\n".join(out).rstrip("\n") + "\n"


def _markers(command: str) -> tuple[str, str]:
    """The comments around the section of C{command} (e.g. C{python -m bench.bulk})."""
    return f"<!-- {command}: begin -->", f"<!-- {command}: end -->"


_SECTION = re.compile(r"<!-- (python -m [\w.]+): begin -->.*?<!-- \1: end -->\n?", re.S)


def _sections(text: str) -> dict[str, str]:
    """Every marked section of C{text}: command -> the section, markers included."""
    return {m.group(1): m.group(0) for m in _SECTION.finditer(text)}


def write(path: Path, section: str) -> None:
    """
    Overwrite C{path} with the header and the latest run's section, keeping the
    marked sections of the other benchmarks (L{write_section}).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    kept = "".join(s if s.endswith("\n") else s + "\n" for s in _sections(old).values())
    path.write_text(HEADER + "\n" + section + ("\n" + kept if kept else ""))


def write_section(path: Path, command: str, section: str) -> None:
    """
    Put C{section}, the results of C{command}, into C{path} between that
    command's markers, replacing its previous section and keeping the rest.
    """
    begin, end = _markers(command)
    text = path.read_text() if path.exists() else HEADER
    new = f"{begin}\n{section.rstrip()}\n{end}\n"
    old = _sections(text).get(command)
    text = text.replace(old, new) if old else text.rstrip("\n") + "\n\n" + new
    path.write_text(text)


def machine_line() -> str:
    """One Markdown line naming this machine and the software under test."""
    m = machine()
    return (
        f"- Machine: {m.system}; {m.cpu}; {m.cpus} CPUs; {m.python}, Twisted "
        f"{m.twisted}, {m.mosquitto}, {m.wrk}; repository at {m.revision}"
    )


def publish(path: Path, command: str, title: str, lines: list[str]) -> None:
    """
    Print the result C{lines} of C{command} (after the machine's line) and put
    them in C{path} as its section, headed C{title} and the time.
    """
    text = "\n".join([machine_line(), *lines])
    print(text)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    write_section(path, command, f"## {title} ({when})\n\n{text}\n")


def write_bulk(path: Path, section: str) -> None:
    """L{write_section} for C{python -m bench.bulk}."""
    write_section(path, "python -m bench.bulk", section)
