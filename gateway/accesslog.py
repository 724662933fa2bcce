# -*- test-case-name: tests.test_accesslog -*-
"""
The access log: one JSON object per request, to stdout or a file.

It is a service: the file is opened when the service starts and closed (after
the last records are written) when it stops; records handed over before it
starts wait in the buffer.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import IO

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from gateway.startup import StartupError
from gateway.web.messages import AccessRecord

# Lines are written in batches: one write per request would cost a system call on the
# hot path; a short delay keeps the log near real time.
_FLUSH_DELAY = 0.2
_FLUSH_SIZE = 65536


class AccessLog(Service):
    """
    Writes access-log records as JSON lines while the service runs.

    Records are buffered for at most 0.2 s (or 64 KiB) and written together.

    @ivar path: the file written to, or C{"-"} for standard output.
    """

    def __init__(self, path: str, clock: IReactorTime) -> None:
        self.path = path
        self._clock = clock
        self._stream: IO[str] | None = None
        self._lines: list[str] = []
        self._size = 0
        self._flush_call: IDelayedCall | None = None

    def _open(self) -> IO[str]:
        if self.path == "-":
            # twistd replaces sys.stdout with a logger; the access log wants the
            # process's real standard output.
            return sys.__stdout__ or sys.stdout
        return open(self.path, "a", encoding="utf-8")

    def startService(self) -> None:
        """
        Open the file (for appending).

        @raise StartupError: naming the file when it cannot be opened.
        """
        try:
            self._stream = self._open()
        except OSError as e:
            raise StartupError(
                f"log.access: cannot open {self.path}: {e.strerror or e}"
            ) from None
        super().startService()
        if self._lines:
            self.flush()

    def stopService(self) -> None:
        """Write what is buffered and close the file."""
        super().stopService()
        self.close()

    def __call__(self, record: AccessRecord | Mapping[str, object]) -> None:
        """Log one request: its record, or any JSON object as given."""
        if isinstance(record, AccessRecord):
            line = record.as_json()
        else:
            line = json.dumps(record, separators=(", ", ": "))
        self._lines.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_SIZE and self._stream is not None:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self._clock.callLater(_FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Write what is buffered now."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._lines and self._stream is not None:
            lines, self._lines, self._size = self._lines, [], 0
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()

    def reopen(self) -> None:
        """Write what is buffered, then reopen the file (after log rotation)."""
        self.flush()
        if self.path != "-" and self._stream is not None:
            self._stream.close()
            self._stream = self._open()

    def close(self) -> None:
        """Write what is buffered and close the file."""
        self.flush()
        if self.path != "-" and self._stream is not None:
            self._stream.close()
        self._stream = None
