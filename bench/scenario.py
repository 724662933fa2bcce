"""
The benchmark scenario: the same wrk load (keep-alive connections, distinct
64-byte bodies) against two baselines and the gateway, one server at a time, with
Mosquitto running throughout and a QoS 1 subscriber counting deliveries during
the gateway's run.
"""

from __future__ import annotations

import contextlib
import re
import resource
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import wrk
from bench.processes import (
    LOAD_TOPIC,
    WARMUP_TOPIC,
    Child,
    Delivery,
    ProcessSample,
    Server,
    Subscriber,
    machine_cpu_seconds,
    machine_load,
    start_baseline,
    start_gateway,
    start_mosquitto,
)
from bench.wrk import WrkResult

#: Seconds with no new message after which the subscriber is taken to have all.
DRAIN_QUIET_S = 1.0
#: At most this long is waited for deliveries after wrk ends: the gateway's
#: publish_timeout (10 s) and a margin.
DRAIN_TIMEOUT_S = 12.0
#: Above this load (percent of one CPU) before the start, the machine is "busy".
BUSY_PERCENT = 20.0


@dataclass(frozen=True)
class Settings:
    """
    What to run.

    @ivar duration: seconds of measured load per server.
    @ivar connections: wrk's keep-alive connections.
    @ivar threads: wrk's threads.
    @ivar warmup: seconds of unmeasured load before each measured run (0: none).
    @ivar keep_logs: keep the temporary directory with every log and config.
    """

    duration: float = 10.0
    connections: int = 32
    threads: int = 1
    warmup: float = 1.0
    keep_logs: bool = False


@dataclass
class ServerRun:
    """
    The measured run against one server.

    @ivar name: how the report names the server.
    @ivar description: what exactly ran.
    @ivar wrk: wrk's figures.
    @ivar wall_s: wall-clock seconds of the measured wrk run.
    @ivar cpu_percent: process name -> CPU used during the measured run, in
        percent of one core (wrk, the server, Mosquitto, the subscriber, and
        C{others}: the rest of the machine's busy time).
    @ivar peak_rss_kib: the server's peak resident set (C{VmHWM}) at the end.
    @ivar ready_rss_kib: its resident set once ready, before any load.
    @ivar exit_code: the server's exit status after SIGTERM.
    @ivar stop_s: seconds it took to exit after SIGTERM.
    @ivar delivery: what the subscriber received (gateway only).
    @ivar log_findings: (count, line) of warnings and errors in the server's log.
    """

    name: str
    description: str
    wrk: WrkResult
    wall_s: float
    cpu_percent: dict[str, float]
    peak_rss_kib: int
    ready_rss_kib: int
    exit_code: int | None = None
    stop_s: float | None = None
    killed: bool = False
    delivery: Delivery | None = None
    log_findings: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Results:
    """
    Everything one invocation measured.

    @ivar runs: the measured runs, baselines first, the gateway last.
    @ivar gateway_config: the configuration file the gateway ran with.
    @ivar gateway_command: its command line (ports as in this run).
    @ivar wrk_command: the wrk command line of the gateway's run.
    @ivar broker_findings: (count, line) of Mosquitto's warnings and errors.
    @ivar log_directory: where the logs are, when kept.
    @ivar idle_load: percent of one CPU the machine used in the second before
        the benchmark started anything (other people's work).
    """

    settings: Settings
    runs: list[ServerRun] = field(default_factory=list)
    gateway_config: str = ""
    gateway_command: list[str] = field(default_factory=list)
    wrk_command: list[str] = field(default_factory=list)
    broker_findings: list[tuple[int, str]] = field(default_factory=list)
    log_directory: str | None = None
    idle_load: float = 0.0

    def run_named(self, name: str) -> ServerRun | None:
        """The run against the server called C{name}, if any."""
        return next((run for run in self.runs if run.name == name), None)


GATEWAY = "gateway"
BASELINE = "twisted.web Site(root)"
BASELINE_NO_FORMS = "twisted.web Site(root, parsePOSTFormSubmission=False)"

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


def measure(
    url: str, settings: Settings, watched: dict[str, Child]
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
    result = wrk.run(url, settings.duration, settings.connections, settings.threads)
    wall = time.monotonic() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = _samples(watched)
    machine = 100.0 * (machine_cpu_seconds() - machine_before) / wall
    # Only wrk ends (and is reaped) during the run, so the children's totals grew
    # by exactly its CPU time.
    cpu = {
        "wrk": 100.0
        * (
            children_after.ru_utime
            + children_after.ru_stime
            - children_before.ru_utime
            - children_before.ru_stime
        )
        / wall
    }
    for name in watched:
        cpu[name] = 100.0 * (after[name].cpu_seconds - before[name].cpu_seconds) / wall
    # Everything else the machine did meanwhile: other processes, the benchmark's
    # own polling, the kernel's work not charged to a process.
    cpu["others"] = max(0.0, machine - sum(cpu.values()))
    return result, wall, cpu


def _url(server: Server, topic: str) -> str:
    return f"http://{server.host}:{server.port}/topics/{topic}?qos=1"


def _warm_up(server: Server, settings: Settings) -> None:
    if settings.warmup > 0:
        wrk.run(
            _url(server, WARMUP_TOPIC),
            settings.warmup,
            settings.connections,
            settings.threads,
        )


def run_baseline(
    directory: Path,
    *,
    settings: Settings,
    broker: Server,
    name: str,
    form_parsing: bool,
    progress: Callable[[str], None],
) -> ServerRun:
    """Measure one baseline server, started for this run and stopped after it."""
    progress(f"{name}: starting")
    with start_baseline(
        directory, "baseline" if form_parsing else "baseline-no-forms", form_parsing
    ) as server:
        ready = server.sample()
        _warm_up(server, settings)
        progress(f"{name}: {settings.duration:g} s of load")
        result, wall, cpu = measure(
            _url(server, LOAD_TOPIC),
            settings,
            {"server": server, "mosquitto": broker},
        )
        peak = server.sample().peak_rss_kib
        server.stop()
        description = (
            "Site(root)"
            if form_parsing
            else "Site(root, parsePOSTFormSubmission=False)"
        )
        return ServerRun(
            name=name,
            description=f"python -m bench.baseline: a bare Resource, {description}",
            wrk=result,
            wall_s=wall,
            cpu_percent=cpu,
            peak_rss_kib=peak,
            ready_rss_kib=ready.rss_kib,
            exit_code=server.exit_code,
            stop_s=server.stop_seconds,
            killed=server.killed,
            log_findings=findings(server.log(), _TWISTD_PROBLEM),
        )


def run_gateway(
    directory: Path,
    settings: Settings,
    broker: Server,
    results: Results,
    progress: Callable[[str], None],
) -> ServerRun:
    """
    Measure the gateway with a subscriber on the load topic; after wrk ends, wait
    for deliveries still on their way, then count them.
    """
    with contextlib.ExitStack() as stack:
        progress("subscriber: starting")
        subscriber = stack.enter_context(Subscriber(directory, broker.port))
        subscriber.wait_ready()
        progress("gateway: starting")
        gateway = stack.enter_context(start_gateway(directory, broker.port))
        results.gateway_config = (directory / "gateway.toml").read_text()
        results.gateway_command = gateway.argv
        ready = gateway.sample()
        _warm_up(gateway, settings)
        url = _url(gateway, LOAD_TOPIC)
        results.wrk_command = wrk.command(
            url, settings.duration, settings.connections, settings.threads
        )
        progress(f"gateway: {settings.duration:g} s of load")
        result, wall, cpu = measure(
            url,
            settings,
            {"server": gateway, "mosquitto": broker, "subscriber": subscriber},
        )
        progress("gateway: waiting for the last deliveries")
        upper = result.sent if result.sent is not None else result.requests
        subscriber.drain(upper, DRAIN_QUIET_S, DRAIN_TIMEOUT_S)
        peak = gateway.sample().peak_rss_kib
        progress("gateway: stopping")
        gateway.stop()
        subscriber.stop()
        delivery = subscriber.delivery()
        return ServerRun(
            name=GATEWAY,
            description="twistd -n mqtt-http-gateway (QoS 1, 200 after PUBACK)",
            wrk=result,
            wall_s=wall,
            cpu_percent=cpu,
            peak_rss_kib=peak,
            ready_rss_kib=ready.rss_kib,
            exit_code=gateway.exit_code,
            stop_s=gateway.stop_seconds,
            killed=gateway.killed,
            delivery=delivery,
            log_findings=findings(gateway.log(), _TWISTD_PROBLEM),
        )
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _directory(keep: bool) -> Iterator[Path]:
    if keep:
        yield Path(tempfile.mkdtemp(prefix="mqtt-http-gateway-bench-"))
    else:
        with tempfile.TemporaryDirectory(prefix="mqtt-http-gateway-bench-") as path:
            yield Path(path)


def run(settings: Settings, progress: Callable[[str], None]) -> Results:
    """
    Run the whole scenario: Mosquitto, then the baselines and the gateway one
    after the other. Every child process is stopped when this returns or raises.
    """
    results = Results(settings)
    results.idle_load = machine_load()
    if results.idle_load > BUSY_PERCENT:
        progress(
            f"warning: the machine is already busy ({results.idle_load:.0f}% of one "
            "CPU used by other processes): the results will be noisy"
        )
    with _directory(settings.keep_logs) as directory:
        if settings.keep_logs:
            results.log_directory = str(directory)
        progress("mosquitto: starting")
        with start_mosquitto(directory) as broker:
            for name, form_parsing in ((BASELINE, True), (BASELINE_NO_FORMS, False)):
                results.runs.append(
                    run_baseline(
                        directory,
                        settings=settings,
                        broker=broker,
                        name=name,
                        form_parsing=form_parsing,
                        progress=progress,
                    )
                )
            results.runs.append(
                run_gateway(directory, settings, broker, results, progress)
            )
            broker.stop()
            results.broker_findings = findings(broker.log(), _MOSQUITTO_PROBLEM)
    return results
