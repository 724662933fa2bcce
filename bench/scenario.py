"""
The benchmark scenarios: the same load (keep-alive connections or a new
connection per request, distinct 64-byte bodies, QoS 1) against two twisted.web
baselines and the gateway in several set-ups (anonymous HTTP, Basic, HTTPS with
Basic or a device certificate, a TLS handshake per request, broker mode), one
server at a time. Mosquitto runs throughout (broker mode gets a second one that
checks passwords) and a QoS 1 subscriber counts deliveries during every gateway
run.

Each scenario is a L{Scenario}; L{run} runs those the settings name, in the
order of L{SCENARIOS}, and the micro-measurements (L{bench.micro}) last.
"""

from __future__ import annotations

import contextlib
import re
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench import credentials as creds_module
from bench import loadgen, micro, tlsprobe, wrk
from bench.credentials import Credentials
from bench.processes import (
    HOST,
    LOAD_TOPIC,
    WARMUP_TOPIC,
    Child,
    Delivery,
    Gateway,
    ProcessSample,
    Server,
    StartError,
    Subscriber,
    free_port,
    machine_cpu_seconds,
    machine_load,
    start_baseline,
    start_gateway,
    start_mosquitto,
)
from bench.wrk import WrkError, WrkResult

#: Seconds with no new message after which the subscriber is taken to have all.
DRAIN_QUIET_S = 1.0
#: At most this long is waited for deliveries after the load ends: the gateway's
#: publish_timeout (10 s) and a margin.
DRAIN_TIMEOUT_S = 12.0
#: Above this load (percent of one CPU) before the start, the machine is "busy".
BUSY_PERCENT = 20.0
#: Seconds of the probe run that finds out whether wrk resumes TLS sessions.
PROBE_SECONDS = 1.0


@dataclass(frozen=True)
class Scenario:
    """
    One measured run.

    @ivar key: its name on the command line (C{--scenarios}).
    @ivar title: its name in the report.
    @ivar server: C{"llhttp"}, C{"site"} or C{"site-noforms"} (the baselines) or
        C{"gateway"}.
    @ivar client: C{"wrk"} or C{"python"} (L{bench.loadgen}).
    @ivar tls: HTTPS (the gateway's C{[tls]} listener).
    @ivar auth: what the requests present: nothing, Basic credentials, or the
        device certificate (the python client only).
    @ivar close: HTTP/1.0: a new connection (and TLS handshake) per request.
    @ivar resume: with C{close}, the python client resumes the TLS session.
    @ivar mode: the gateway's C{[auth] mode}.
    @ivar what: exactly what is measured, for the report.
    """

    key: str
    title: str
    server: Literal["llhttp", "site", "site-noforms", "gateway"]
    what: str
    client: Literal["wrk", "python"] = "wrk"
    tls: bool = False
    auth: Literal["anonymous", "basic", "cert"] = "anonymous"
    close: bool = False
    resume: bool = False
    mode: Literal["gateway", "broker"] = "gateway"

    @property
    def is_gateway(self) -> bool:
        """Whether this runs the gateway (not a baseline)."""
        return self.server == "gateway"

    @property
    def connection(self) -> str:
        """How requests travel, in a few words."""
        scheme = "HTTPS" if self.tls else "HTTP"
        if not self.close:
            return f"{scheme} keep-alive"
        if not self.tls:
            return f"{scheme}/1.0, new connection per request"
        return f"{scheme}/1.0, new TLS connection per request"


_KEEP_ALIVE = (
    "{connections} keep-alive HTTP/1.1 connections, one request in flight on each"
)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        key="llhttp",
        title="bare llhttp protocol on Twisted",
        server="llhttp",
        what="A bare llhttp (httptools) parser in a Twisted protocol answering "
        "200 to every request, nothing checked or logged (`bench/baseline.py "
        "--llhttp`): the floor of any HTTP server on this stack, which every "
        "gateway figure is a ratio to; " + _KEEP_ALIVE + ", plain HTTP, wrk.",
    ),
    Scenario(
        key="site",
        title="twisted.web Site(root)",
        server="site",
        what="A bare twisted.web resource answering 200 to every POST, "
        "`Site(root)` with twisted.web's defaults (it parses every POST's "
        "Content-Type for form handling); " + _KEEP_ALIVE + ", plain HTTP, wrk.",
    ),
    Scenario(
        key="site-noforms",
        title="twisted.web Site(root, parsePOSTFormSubmission=False)",
        server="site-noforms",
        what="The same resource with `parsePOSTFormSubmission=False`; "
        + _KEEP_ALIVE
        + ", plain HTTP, wrk.",
    ),
    Scenario(
        key="http",
        title="gateway: HTTP, anonymous",
        server="gateway",
        what="The gateway with `[auth] allow_anonymous = true` and no password "
        "file: no credentials sent; " + _KEEP_ALIVE + ", plain HTTP, wrk. The "
        "reference of the ratios.",
    ),
    Scenario(
        key="http-basic",
        title="gateway: HTTP, Basic",
        server="gateway",
        auth="basic",
        what="`[auth] password_file` (one user, `mosquitto_passwd -b`: `$7$`, 101 "
        "PBKDF2-SHA512 iterations), `allow_anonymous = false`; wrk's script sends "
        "`Authorization: Basic ...` with every request; " + _KEEP_ALIVE + ", "
        "plain HTTP. Every request's password is checked (the gateway remembers "
        "a successful check, so PBKDF2 runs once per password).",
    ),
    Scenario(
        key="http10-basic",
        title="gateway: HTTP/1.0, Basic",
        server="gateway",
        auth="basic",
        close=True,
        what="As `http-basic`, but every request is HTTP/1.0: the gateway closes "
        "the connection after the response and wrk opens a new TCP connection "
        "for the next (wrk's latency starts when the request is written, after "
        "connecting). The gateway-mode counterpart of `broker-http10`.",
    ),
    Scenario(
        key="https-basic",
        title="gateway: HTTPS, Basic",
        server="gateway",
        tls=True,
        auth="basic",
        what="`[tls] listen` with the test hierarchy's server certificate "
        "(`cert` = server + intermediate, EC P-256), `client_ca` = the root, "
        '`client_cert = "optional"`; the password file as in `http-basic`. wrk '
        "over https with Basic credentials and no client certificate (wrk "
        "cannot send one); " + _KEEP_ALIVE + ", the TLS handshakes happen before "
        "the measured window.",
    ),
    Scenario(
        key="https-basic-py",
        title="gateway: HTTPS, Basic (python client)",
        server="gateway",
        client="python",
        tls=True,
        auth="basic",
        what="What `https-basic` measures, sent by the benchmark's own python "
        "client (`bench/loadgen.py`) instead of wrk: the calibration of that "
        "client against wrk, for the certificate scenarios below, which wrk "
        "cannot run.",
    ),
    Scenario(
        key="https-cert",
        title="gateway: HTTPS, device certificate",
        server="gateway",
        client="python",
        tls=True,
        auth="cert",
        what="The HTTPS set-up of `https-basic`; the python client presents "
        "the device certificate (`device-42`, issued by the intermediate, "
        "chain sent) and no `Authorization` header, so with "
        "`allow_anonymous = false` a 200 means the certificate's CN "
        "authenticated the request; " + _KEEP_ALIVE + ".",
    ),
    Scenario(
        key="https-close-basic",
        title="gateway: HTTPS/1.0 per request, Basic (wrk)",
        server="gateway",
        tls=True,
        auth="basic",
        close=True,
        what="The HTTPS set-up of `https-basic`, every request HTTP/1.0 over a "
        "new TLS connection (wrk reconnects after every response). wrk's "
        "OpenSSL keeps the session of a connection that closed cleanly and "
        "offers it on the next (see the probe below), so these are resumed "
        "handshakes; wrk's latency starts after the handshake.",
    ),
    Scenario(
        key="https-close-cert",
        title="gateway: HTTPS/1.0 per request, certificate, full handshake",
        server="gateway",
        client="python",
        tls=True,
        auth="cert",
        close=True,
        what="The python client with the device certificate, every request "
        "HTTP/1.0 over a new TLS connection with a full handshake (no "
        "session offered): ECDHE, the server's signature, the device chain "
        "verified. Latency as wrk's (after the handshake); the handshake "
        "times are given apart.",
    ),
    Scenario(
        key="https-close-cert-resume",
        title="gateway: HTTPS/1.0 per request, certificate, resumed",
        server="gateway",
        client="python",
        tls=True,
        auth="cert",
        close=True,
        resume=True,
        what="As `https-close-cert`, but each connection offers the session "
        "(TLS 1.3 ticket) of the same client thread's previous connection "
        "(python `ssl` `session=`); the certificate verified in the full "
        "handshake stays the identity of the resumed ones.",
    ),
    Scenario(
        key="broker-http10",
        title="gateway: broker mode, HTTP/1.0, Basic",
        server="gateway",
        auth="basic",
        close=True,
        mode="broker",
        what='`[auth] mode = "broker"`, `allow_anonymous = false`: the gateway '
        "checks no password, it connects to a second Mosquitto (`allow_anonymous "
        "false`, `password_file` = the same file, connection messages off) as "
        "the sender with the Basic user name and password. Every request is "
        "HTTP/1.0 on a new TCP connection (wrk), so every message is an MQTT "
        "CONNECT (Mosquitto runs PBKDF2 on the password), PUBLISH (QoS 1, "
        "PUBACK), DISCONNECT; each connection has its own client id "
        "(`http-{connection-id}`).",
    ),
)

MICRO = "micro"
KEYS: tuple[str, ...] = (*(s.key for s in SCENARIOS), MICRO)
_BY_KEY = {s.key: s for s in SCENARIOS}


def scenario(key: str) -> Scenario:
    """The scenario called C{key}."""
    return _BY_KEY[key]


@dataclass(frozen=True)
class Settings:
    """
    What to run.

    @ivar duration: seconds of measured load per scenario.
    @ivar connections: connections of the client (wrk's or the python client's).
    @ivar threads: wrk's threads.
    @ivar processes: processes of the python client (its threads: the
        connections, shared out).
    @ivar warmup: seconds of unmeasured load before each measured run (0: none).
    @ivar keep_logs: keep the temporary directory with every log and config.
    @ivar scenarios: the keys (L{KEYS}) to run.
    @ivar wait_quiet: before each scenario, wait up to this many seconds for
        the machine to be quiet (other processes below L{BUSY_PERCENT}); 0: no
        waiting.
    @ivar rerun_noisy: how often a scenario is run again while other processes
        were busy during its run (L{Results.noisy}); the quietest run counts.
    """

    duration: float = 10.0
    connections: int = 32
    threads: int = 1
    processes: int = 2
    warmup: float = 1.0
    keep_logs: bool = False
    scenarios: tuple[str, ...] = KEYS
    wait_quiet: float = 0.0
    rerun_noisy: int = 1


@dataclass
class ServerRun:
    """
    The measured run of one scenario.

    @ivar load: the client's figures (wrk's, or the python client's in the same
        shape).
    @ivar wall_s: wall-clock seconds of the measured run.
    @ivar cpu_percent: process name -> CPU used during the measured run, in
        percent of one core (C{client}: wrk or the python client's processes,
        C{server}, C{mosquitto}, C{subscriber}, and C{others}: the rest of the
        machine's busy time).
    @ivar peak_rss_kib: the server's peak resident set (C{VmHWM}) at the end.
    @ivar ready_rss_kib: its resident set once ready, before any load.
    @ivar exit_code: the server's exit status after SIGTERM.
    @ivar stop_s: seconds it took to exit after SIGTERM.
    @ivar delivery: what the subscriber received (gateway only).
    @ivar log_findings: (count, line) of warnings and errors in the server's log.
    @ivar python: the python client's own figures, when it was the client.
    @ivar notes: facts of this run for the report (TLS version, resumption).
    @ivar commands: how the server and the client ran.
    @ivar config: the gateway's configuration file.
    @ivar broker_findings: (count, line) of warnings and errors of a Mosquitto
        of this run's own (broker mode).
    """

    scenario: Scenario
    load: WrkResult
    wall_s: float
    cpu_percent: dict[str, float]
    peak_rss_kib: int
    ready_rss_kib: int
    exit_code: int | None = None
    stop_s: float | None = None
    killed: bool = False
    delivery: Delivery | None = None
    log_findings: list[tuple[int, str]] = field(default_factory=list)
    python: loadgen.LoadResult | None = None
    notes: list[str] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    config: str = ""
    broker_findings: list[tuple[int, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The scenario's title."""
        return self.scenario.title


@dataclass(frozen=True)
class Skipped:
    """A scenario that did not run, and why (one line, or a few)."""

    scenario: Scenario
    reason: str


@dataclass
class Results:
    """
    Everything one invocation measured.

    @ivar runs: the measured runs, in the order of L{SCENARIOS}.
    @ivar skipped: the scenarios that could not run.
    @ivar broker_findings: (count, line) of the main Mosquitto's warnings and
        errors.
    @ivar micro: the micro-measurements, when run.
    @ivar password_hash: the kind of hash in the password file (C{$7$101$}).
    @ivar log_directory: where the logs are, when kept.
    @ivar idle_load: percent of one CPU the machine used in the second before
        the benchmark started anything (other people's work).
    """

    settings: Settings
    runs: list[ServerRun] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    broker_findings: list[tuple[int, str]] = field(default_factory=list)
    micro: list[micro.Timing] = field(default_factory=list)
    password_hash: str = ""
    log_directory: str | None = None
    idle_load: float = 0.0

    def noisy(self, run: ServerRun) -> bool:
        """Whether other processes were busy during C{run} (its figures are low)."""
        return run.cpu_percent.get("others", 0.0) > BUSY_PERCENT

    def run_for(self, key: str) -> ServerRun | None:
        """The run of the scenario called C{key}, if it ran."""
        return next((run for run in self.runs if run.scenario.key == key), None)


#: The scenario the ratios are taken against, and the baselines.
REFERENCE = "http"
BASELINES = ("site", "site-noforms")
#: The bare llhttp protocol: the floor every figure is also a ratio to.
LLHTTP = "llhttp"

_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT[0-9:]+[+-]\d{4} ")
_TWISTD_PROBLEM = re.compile(
    r"#(warn|error|critical)\]|Traceback|Unhandled|Exception", re.IGNORECASE
)
_MOSQUITTO_PROBLEM = re.compile(
    r"warning|error|dropp|exceed|timed out|protocol", re.IGNORECASE
)
# Mosquitto's lines start with a Unix time.
_MOSQUITTO_TIME = re.compile(r"^\d+: ")


# Caused by the benchmark's own configuration (see MOSQUITTO_CONFIG), not news.
_EXPECTED = re.compile(r"Mosquitto should not be run as root")


def findings(log: str, problem: re.Pattern[str]) -> list[tuple[int, str]]:
    """
    Lines of C{log} matching C{problem}, without their timestamps, each with how
    often it occurred, most frequent first.
    """
    counts: Counter[str] = Counter()
    for line in log.splitlines():
        if problem.search(line) and not _EXPECTED.search(line):
            counts[_MOSQUITTO_TIME.sub("", _TIMESTAMP.sub("", line)).strip()] += 1
    return [(count, line) for line, count in counts.most_common()]


def _samples(children: dict[str, Child]) -> dict[str, ProcessSample]:
    return {name: child.sample() for name, child in children.items()}


def _cpu(
    before: dict[str, ProcessSample],
    after: dict[str, ProcessSample],
    machine_before: float,
    wall: float,
    client_seconds: float,
) -> dict[str, float]:
    """Percent of one core per process over C{wall} seconds, and C{others}."""
    machine = 100.0 * (machine_cpu_seconds() - machine_before) / wall
    cpu = {"client": 100.0 * client_seconds / wall}
    for name, start in before.items():
        cpu[name] = 100.0 * (after[name].cpu_seconds - start.cpu_seconds) / wall
    # Everything else the machine did meanwhile: other processes, the benchmark's
    # own polling, the kernel's work not charged to a process.
    cpu["others"] = max(0.0, machine - sum(cpu.values()))
    return cpu


def measure_wrk(
    url: str,
    settings: Settings,
    watched: dict[str, Child],
    script_args: list[str],
) -> tuple[WrkResult, float, dict[str, float]]:
    """
    One measured wrk run against C{url}, with the CPU time of wrk and of the
    C{watched} processes over it.

    @return: wrk's result, the wall-clock seconds and name -> percent of one core.
    """
    before = _samples(watched)
    machine_before = machine_cpu_seconds()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = wrk.run(
        url, settings.duration, settings.connections, settings.threads, script_args
    )
    wall = time.monotonic() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = _samples(watched)
    # Only wrk ends (and is reaped) during the run, so the children's totals grew
    # by exactly its CPU time.
    client = (
        children_after.ru_utime
        + children_after.ru_stime
        - children_before.ru_utime
        - children_before.ru_stime
    )
    return result, wall, _cpu(before, after, machine_before, wall, client)


def measure_python(
    target: loadgen.Target,
    settings: Settings,
    watched: dict[str, Child],
    *,
    directory: Path,
    tag: str,
    duration: float | None = None,
) -> tuple[loadgen.LoadResult, float, dict[str, float]]:
    """
    One measured run of the python client against C{target}, with its CPU time
    (as its processes measured it over the window) and the C{watched}
    processes'.

    @raise StartError: when a client process fails.
    """
    with loadgen.LoadRun(
        target,
        duration=settings.duration if duration is None else duration,
        connections=settings.connections,
        processes=settings.processes,
        directory=directory,
        tag=tag,
    ) as run:
        time.sleep(max(0.0, run.start_at - time.monotonic()))
        before = _samples(watched)
        machine_before = machine_cpu_seconds()
        started = time.monotonic()
        result = run.wait()
        wall = time.monotonic() - started
        after = _samples(watched)
    return result, wall, _cpu(before, after, machine_before, wall, result.cpu_s)


def as_wrk_result(result: loadgen.LoadResult) -> WrkResult:
    """The python client's figures in the shape of wrk's."""
    return WrkResult(
        requests=result.responses,
        runtime_s=result.wall_s,
        requests_per_s=result.requests_per_s,
        latency_ms=result.latency_ms,
        non_2xx=result.non_2xx,
        socket_errors=dict(result.errors),
        sent=result.sent,
    )


def _url(server: Server, topic: str) -> str:
    return f"http://{server.host}:{server.port}/topics/{topic}?qos=1"


def run_baseline(
    directory: Path,
    *,
    settings: Settings,
    broker: Server,
    which: Scenario,
    progress: Callable[[str], None],
) -> ServerRun:
    """Measure one baseline server, started for this run and stopped after it."""
    progress(f"{which.key}: starting")
    form_parsing = which.server == "site"
    names = {"site": "baseline", "site-noforms": "baseline-no-forms"}
    with start_baseline(
        directory,
        names.get(which.server, "baseline-llhttp"),
        form_parsing,
        llhttp=which.server == "llhttp",
    ) as server:
        ready = server.sample()
        if settings.warmup > 0:
            wrk.run(
                _url(server, WARMUP_TOPIC),
                settings.warmup,
                settings.connections,
                settings.threads,
            )
        progress(f"{which.key}: {settings.duration:g} s of load")
        url = _url(server, LOAD_TOPIC)
        result, wall, cpu = measure_wrk(
            url, settings, {"server": server, "mosquitto": broker}, []
        )
        peak = server.sample().peak_rss_kib
        server.stop()
        return ServerRun(
            scenario=which,
            load=result,
            wall_s=wall,
            cpu_percent=cpu,
            peak_rss_kib=peak,
            ready_rss_kib=ready.rss_kib,
            exit_code=server.exit_code,
            stop_s=server.stop_seconds,
            killed=server.killed,
            log_findings=findings(server.log(), _TWISTD_PROBLEM),
            commands=[
                server.argv,
                wrk.command(
                    url, settings.duration, settings.connections, settings.threads
                ),
            ],
        )


def gateway_config(which: Scenario, creds: Credentials, tls_port: int | None) -> str:
    """The gateway's configuration file for scenario C{which}."""
    lines = [
        "# Generated by python -m bench; --broker and --listen (plain HTTP, also the",
        "# readiness probe's) come from the command line.",
        "[mqtt]",
        'client_id = "bench-gateway"',
        "",
        "[limits]",
        "# The limiter runs (as it does by default) but never refuses: the",
        "# benchmark measures the gateway, not the limit.",
        "rate = 1000000",
        "burst = 1000000",
        "",
        "[log]",
        "# The access log on, to a file, as in production: one JSON line per request.",
        'access = "access.log"',
        "",
        "[auth]",
    ]
    if which.mode == "broker":
        lines += [
            "# Each sender publishes over a broker session of its own, opened with",
            "# its Basic credentials; Mosquitto checks them (same password file).",
            'mode = "broker"',
        ]
    if which.auth == "anonymous":
        lines.append("allow_anonymous = true")
    else:
        if which.mode == "gateway":
            lines.append(
                f'password_file = "{creds.relative(creds.password_file)}"'
                "  # mosquitto_passwd -b: $7$, 101 iterations"
            )
        lines.append("allow_anonymous = false")
    if which.tls:
        lines += [
            "",
            "[tls]",
            f'listen = ["tcp:{tls_port}:interface={HOST}"]',
            f'cert = "{creds.relative(creds.server_chain)}"',
            f'key = "{creds.relative(creds.server_key)}"',
            f'client_ca = "{creds.relative(creds.ca)}"',
            'client_cert = "optional"',
        ]
    return "\n".join(lines) + "\n"


def _wrk_args(which: Scenario, creds: Credentials) -> list[str]:
    args = []
    if which.auth == "basic":
        args.append(f"basic={creds.basic}")
    if which.close:
        args.append("http1.0")
    return args


def _gateway_url(which: Scenario, gateway: Gateway, topic: str) -> str:
    if which.tls:
        return f"https://{HOST}:{gateway.tls_port}/topics/{topic}?qos=1"
    return _url(gateway, topic)


def _target(
    which: Scenario, gateway: Gateway, creds: Credentials, topic: str
) -> loadgen.Target:
    port = gateway.tls_port if which.tls and gateway.tls_port else gateway.port
    return loadgen.Target(
        host=HOST,
        port=port,
        path=f"/topics/{topic}?qos=1",
        tls=which.tls,
        cafile=str(creds.ca) if which.tls else None,
        certfile=str(creds.client_chain) if which.auth == "cert" else None,
        keyfile=str(creds.client_key) if which.auth == "cert" else None,
        authorization=creds.authorization if which.auth == "basic" else None,
        close=which.close,
        resume=which.resume,
    )


class ScenarioFailed(Exception):
    """A scenario could not run; the message says why."""


def _start_reason(error: StartError) -> str:
    """The line that says why the gateway did not start, if it printed one."""
    lines = str(error).splitlines()
    refusal = [line for line in lines if line.startswith("mqtt-http-gateway: ")]
    if refusal:
        line = refusal[-1]
        if "not supported by this version" in line:
            return (
                f"the gateway refused to start: `{line}` (the feature is not wired "
                "into this version of the gateway yet)"
            )
        return f"the gateway refused to start: `{line}`"
    return "the gateway did not start: " + " / ".join(
        line.strip() for line in lines[-3:]
    )


def probe_wrk_resumption(
    directory: Path, settings: Settings, creds: Credentials, which: Scenario
) -> str:
    """
    Run wrk as C{which} runs it, for L{PROBE_SECONDS}, against L{bench.tlsprobe}
    (which counts resumed handshakes); a sentence saying what wrk did.
    """
    port = free_port()
    probe = Server(
        "tlsprobe",
        [
            sys.executable,
            "-m",
            "bench.tlsprobe",
            "--port",
            str(port),
            "--cert",
            str(creds.server_chain),
            "--key",
            str(creds.server_key),
        ],
        directory / "tlsprobe.log",
        port,
        cwd=Path(__file__).resolve().parent.parent,
    )
    with probe:
        probe.wait_for_port(10.0)
        try:
            wrk.run(
                f"https://{HOST}:{port}/topics/{WARMUP_TOPIC}?qos=1",
                PROBE_SECONDS,
                settings.connections,
                settings.threads,
                _wrk_args(which, creds),
            )
        except WrkError as e:
            return f"The wrk resumption probe failed: {e}"
        probe.stop()
    report = tlsprobe.parse_report(probe.log())
    if report is None:
        return "The wrk resumption probe printed nothing."
    full, resumed, version = report
    did = (
        "wrk resumed sessions"
        if resumed > full
        else "wrk did not resume sessions"
        if resumed == 0
        else "wrk resumed some sessions"
    )
    return (
        f"Resumption probe: the same wrk command for {PROBE_SECONDS:g} s against a "
        f"python `ssl` server with the same certificate (`bench/tlsprobe.py`, "
        f"session tickets on) made {full + resumed:,} {version} handshakes, "
        f"{resumed:,} of them resumed: {did}."
    )


def run_gateway(
    directory: Path,
    *,
    settings: Settings,
    broker: Server,
    creds: Credentials,
    which: Scenario,
    progress: Callable[[str], None],
) -> ServerRun:
    """
    Measure the gateway in scenario C{which}, with a subscriber on the load
    topic; after the load ends, wait for deliveries still on their way, then
    count them.

    @raise ScenarioFailed: when the gateway does not start, or the client fails.
    """
    key = which.key
    with contextlib.ExitStack() as stack:
        notes: list[str] = []
        own_broker = None
        if which.mode == "broker":
            progress(f"{key}: starting a Mosquitto that checks passwords")
            own_broker = stack.enter_context(
                start_mosquitto(
                    directory,
                    name="mosquitto-passwords",
                    password_file=creds.password_file,
                )
            )
            broker = own_broker
        progress(f"{key}: starting the subscriber")
        subscriber = stack.enter_context(
            Subscriber(
                directory,
                broker.port,
                (creds_module.USER, creds_module.PASSWORD) if own_broker else None,
                log_name=f"subscriber-{key}.out",
            )
        )
        subscriber.wait_ready()
        progress(f"{key}: starting the gateway")
        tls_port = free_port() if which.tls else None
        config = gateway_config(which, creds, tls_port)
        try:
            gateway = start_gateway(
                directory,
                broker.port,
                config,
                name=f"gateway-{key}",
                tls_port=tls_port,
                probe_headers=(
                    None
                    if which.auth == "anonymous"
                    else {"Authorization": creds.authorization}
                ),
            )
        except StartError as e:
            raise ScenarioFailed(_start_reason(e)) from None
        stack.enter_context(gateway)
        ready = gateway.sample()
        watched: dict[str, Child] = {
            "server": gateway,
            "mosquitto": broker,
            "subscriber": subscriber,
        }
        python: loadgen.LoadResult | None = None
        try:
            if which.client == "wrk":
                args = _wrk_args(which, creds)
                if which.tls and which.close:
                    progress(f"{key}: does wrk resume TLS sessions?")
                    notes.append(
                        probe_wrk_resumption(directory, settings, creds, which)
                    )
                if settings.warmup > 0:
                    wrk.run(
                        _gateway_url(which, gateway, WARMUP_TOPIC),
                        settings.warmup,
                        settings.connections,
                        settings.threads,
                        args,
                    )
                url = _gateway_url(which, gateway, LOAD_TOPIC)
                client_command = [
                    wrk.command(
                        url,
                        settings.duration,
                        settings.connections,
                        settings.threads,
                        args,
                    )
                ]
                progress(f"{key}: {settings.duration:g} s of load (wrk)")
                result, wall, cpu = measure_wrk(url, settings, watched, args)
            else:
                if settings.warmup > 0:
                    measure_python(
                        _target(which, gateway, creds, WARMUP_TOPIC),
                        settings,
                        {},
                        directory=directory,
                        tag=f"loadgen-{key}-warmup",
                        duration=settings.warmup,
                    )
                progress(f"{key}: {settings.duration:g} s of load (python client)")
                python, wall, cpu = measure_python(
                    _target(which, gateway, creds, LOAD_TOPIC),
                    settings,
                    watched,
                    directory=directory,
                    tag=f"loadgen-{key}",
                )
                result = as_wrk_result(python)
                client_command = python.commands[:1]
                notes += _python_notes(python)
        except (WrkError, StartError) as e:
            raise ScenarioFailed(f"the client failed: {e}") from None
        progress(f"{key}: waiting for the last deliveries")
        upper = result.sent if result.sent is not None else result.requests
        subscriber.drain(upper, DRAIN_QUIET_S, DRAIN_TIMEOUT_S)
        peak = gateway.sample().peak_rss_kib
        progress(f"{key}: stopping")
        gateway.stop()
        subscriber.stop()
        broker_findings = []
        if own_broker is not None:
            own_broker.stop()
            broker_findings = findings(own_broker.log(), _MOSQUITTO_PROBLEM)
        return ServerRun(
            scenario=which,
            load=result,
            wall_s=wall,
            cpu_percent=cpu,
            peak_rss_kib=peak,
            ready_rss_kib=ready.rss_kib,
            exit_code=gateway.exit_code,
            stop_s=gateway.stop_seconds,
            killed=gateway.killed,
            delivery=subscriber.delivery(),
            log_findings=findings(gateway.log(), _TWISTD_PROBLEM),
            python=python,
            notes=notes,
            commands=[gateway.argv, *client_command],
            config=config,
            broker_findings=broker_findings,
        )
    raise AssertionError("unreachable")


def _python_notes(result: loadgen.LoadResult) -> list[str]:
    """What the python client saw besides the table's figures."""
    notes = [
        f"Python client: {result.processes} processes, {result.connections} "
        f"connections (one thread each); its CPU in the window: "
        f"{result.cpu_s:.1f} s for {result.responses:,} responses "
        f"({1e6 * result.cpu_s / max(result.responses, 1):.0f} µs per response)."
    ]
    if result.tls_version:
        notes.append(f"TLS: {result.tls_version}, {result.cipher}.")
    if result.handshakes:
        resumed = (
            f"{result.resumed:,} of them resumed"
            if result.resumed
            else "none of them resumed"
        )
        notes.append(
            f"{result.handshakes:,} connections opened in the window, {resumed}; "
            f"connect + TLS handshake p50 {result.handshake_ms[50]:.2f} ms, p99 "
            f"{result.handshake_ms[99]:.2f} ms (not in the table's latency)."
        )
    statuses = ", ".join(
        f"{status}: {count:,}" for status, count in sorted(result.statuses.items())
    )
    notes.append(f"Statuses: {statuses or 'none'}.")
    if result.late_s > 0.05:
        notes.append(
            f"A client process was ready {result.late_s:.2f} s after the window "
            "started (its connections were late)."
        )
    return notes


def _wait_quiet(seconds: float, progress: Callable[[str], None]) -> None:
    """Wait up to C{seconds} until the machine is quiet (see L{Settings})."""
    if seconds <= 0:
        return
    deadline = time.monotonic() + seconds
    load = machine_load(0.5)
    if load <= BUSY_PERCENT:
        return
    progress(f"waiting for a quiet machine (now {load:.0f}% of one CPU busy)")
    while load > BUSY_PERCENT and time.monotonic() < deadline:
        load = machine_load(1.0)
    if load > BUSY_PERCENT:
        progress(f"the machine is still busy ({load:.0f}%): going on")


@contextlib.contextmanager
def _directory(keep: bool) -> Iterator[Path]:
    if keep:
        yield Path(tempfile.mkdtemp(prefix="mqtt-http-gateway-bench-"))
    else:
        with tempfile.TemporaryDirectory(prefix="mqtt-http-gateway-bench-") as path:
            yield Path(path)


def run(settings: Settings, progress: Callable[[str], None]) -> Results:
    """
    Run the scenarios the settings name: Mosquitto, then the baselines and the
    gateway scenarios one after the other, then the micro-measurements. Every
    child process is stopped when this returns or raises.
    """
    results = Results(settings)
    results.idle_load = machine_load()
    if results.idle_load > BUSY_PERCENT:
        progress(
            f"warning: the machine is already busy ({results.idle_load:.0f}% of one "
            "CPU used by other processes): the results will be noisy"
        )
    chosen = [s for s in SCENARIOS if s.key in settings.scenarios]
    with _directory(settings.keep_logs) as directory:
        if settings.keep_logs:
            results.log_directory = str(directory)
        creds = creds_module.make(directory)
        # "$7$101$": the hash kind and iterations, not the salt or the hash.
        hashed = creds.password_file.read_text().split(":", 1)[1]
        results.password_hash = "$".join(hashed.split("$")[:3]) + "$"
        if chosen:
            progress("mosquitto: starting")
            with start_mosquitto(directory) as broker:
                for which in chosen:

                    def once(which: Scenario = which) -> ServerRun:
                        _wait_quiet(settings.wait_quiet, progress)
                        if not which.is_gateway:
                            return run_baseline(
                                directory,
                                settings=settings,
                                broker=broker,
                                which=which,
                                progress=progress,
                            )
                        return run_gateway(
                            directory,
                            settings=settings,
                            broker=broker,
                            creds=creds,
                            which=which,
                            progress=progress,
                        )

                    try:
                        attempts = [once()]
                        while (
                            results.noisy(attempts[-1])
                            and len(attempts) <= settings.rerun_noisy
                        ):
                            others = attempts[-1].cpu_percent.get("others", 0.0)
                            progress(
                                f"{which.key}: other processes used {others:.0f}% "
                                "of a CPU during the run: once more"
                            )
                            attempts.append(once())
                        measured = min(
                            attempts, key=lambda r: r.cpu_percent.get("others", 0.0)
                        )
                        if len(attempts) > 1:
                            busy = ", ".join(
                                f"{r.cpu_percent.get('others', 0.0):.0f}%"
                                for r in attempts
                            )
                            measured.notes.append(
                                f"Measured {len(attempts)} times: other processes "
                                f"used {busy} of a CPU during the runs; this is "
                                "the quietest."
                            )
                        results.runs.append(measured)
                    except ScenarioFailed as e:
                        progress(f"{which.key}: SKIPPED: {e}")
                        results.skipped.append(Skipped(which, str(e)))
                broker.stop()
                results.broker_findings = findings(broker.log(), _MOSQUITTO_PROBLEM)
        if MICRO in settings.scenarios:
            progress("micro: password verification and the request path")
            results.micro = micro.run(
                creds.password_file, creds_module.USER, creds_module.PASSWORD
            )
    return results
