"""
Running wrk with C{bench/post.lua} (a distinct 64-byte POST body per request,
optionally with Basic credentials and as HTTP/1.0) and reading its report.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import spawn

#: The wrk script: POSTs a distinct 64-byte body per request, counts what it sent.
SCRIPT = Path(__file__).resolve().parent / "post.lua"

#: wrk's own per-request timeout. Above the gateway's default publish_timeout
#: (10 s) plus its promised second, so that no slow answer is dropped from the
#: latency statistics as a "timeout".
TIMEOUT = "15s"

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


class WrkError(RuntimeError):
    """wrk failed or printed something this module cannot read."""


def parse_duration_ms(text: str) -> float:
    """
    A wrk time (C{"812.00us"}, C{"4.26ms"}, C{"1.02s"}, C{"2.00m"}) in
    milliseconds.

    @raise WrkError: for anything else.
    """
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if match is None:
        raise WrkError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


@dataclass(frozen=True)
class WrkResult:
    """
    One wrk run.

    @ivar requests: responses received (wrk's "N requests in ...").
    @ivar runtime_s: how long wrk ran, as it reports it.
    @ivar requests_per_s: wrk's "Requests/sec".
    @ivar latency_ms: percentile (50, 75, 90, 99) -> milliseconds.
    @ivar non_2xx: wrk's "Non-2xx or 3xx responses" (statuses above 399).
    @ivar socket_errors: connect, read, write and timeout error counts.
    @ivar sent: requests written, from C{post.lua} (C{None} without it).
    @ivar output: wrk's whole output.
    """

    requests: int
    runtime_s: float
    requests_per_s: float
    latency_ms: dict[int, float]
    non_2xx: int
    socket_errors: dict[str, int] = field(default_factory=dict)
    sent: int | None = None
    output: str = ""

    @property
    def ok(self) -> int:
        """Successful responses: all but wrk's non-2xx-or-3xx ones."""
        return self.requests - self.non_2xx

    @property
    def in_flight(self) -> int | None:
        """Requests written whose response had not arrived when wrk stopped."""
        return None if self.sent is None else self.sent - self.requests

    @property
    def total_socket_errors(self) -> int:
        """All socket errors together."""
        return sum(self.socket_errors.values())


def parse(output: str) -> WrkResult:
    """
    Read wrk's report (run with C{--latency}).

    @raise WrkError: when a figure is missing.
    """

    def need(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise WrkError(f"wrk output lacks {pattern!r}:\n{output}")
        return match

    requests = need(r"^\s*(\d+) requests in ([0-9.]+\w+),")
    latency = {
        int(m.group(1)): parse_duration_ms(m.group(2))
        for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.MULTILINE)
    }
    if 50 not in latency or 99 not in latency:
        raise WrkError(f"wrk output lacks the latency distribution:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    sent = re.search(r"^bench-sent: (-?\d+)$", output, re.MULTILINE)
    return WrkResult(
        requests=int(requests.group(1)),
        runtime_s=parse_duration_ms(requests.group(2)) / 1000.0,
        requests_per_s=float(need(r"^Requests/sec:\s+([0-9.]+)").group(1)),
        latency_ms=latency,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=(
            dict(
                zip(
                    ("connect", "read", "write", "timeout"),
                    map(int, errors.groups()),
                    strict=True,
                )
            )
            if errors
            else {}
        ),
        sent=int(sent.group(1)) if sent else None,
        output=output,
    )


def command(
    url: str,
    duration: float,
    connections: int,
    threads: int,
    script_args: Sequence[str] = (),
    *,
    script: Path = SCRIPT,
) -> list[str]:
    """
    The wrk command line for one run of C{script} (C{post.lua} unless told)
    against C{url}, with the script's C{script_args} (C{basic=BASE64},
    C{http1.0}).
    """
    return [
        shutil.which("wrk") or "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={TIMEOUT}",
        "--latency",
        "-s",
        str(script),
        url,
        *(["--", *script_args] if script_args else []),
    ]


def run(
    url: str,
    duration: float,
    connections: int,
    threads: int = 1,
    script_args: Sequence[str] = (),
    *,
    script: Path = SCRIPT,
) -> WrkResult:
    """
    Run wrk against C{url} for C{duration} seconds (whole seconds, at least 1)
    and read its report. wrk is killed if it has not finished 30 s after that.

    @raise WrkError: when wrk fails or its report cannot be read.
    """
    argv = command(url, duration, connections, threads, script_args, script=script)
    process = spawn(argv, stdout=subprocess.PIPE)
    try:
        stdout, _ = process.communicate(timeout=duration + 30)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
        raise
    output = stdout.decode(errors="replace")
    if process.returncode != 0:
        raise WrkError(f"wrk exited with status {process.returncode}:\n{output}")
    return parse(output)
