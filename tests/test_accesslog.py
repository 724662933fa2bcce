"""
The access log: one JSON object per line, written in small batches, reopened for
log rotation.
"""

from __future__ import annotations

import json
import os
import tempfile

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.accesslog import AccessLog
from gateway.web.messages import API, AccessRecord

RECORD: dict[str, object] = {
    "time": "2026-11-22T04:00:00.000Z",
    "peer": "127.0.0.1:5000",
    "method": "POST",
    "path": "/topics/home",
    "http_version": "1.1",
    "status": 200,
    "bytes": 0,
    "duration_ms": 0.5,
    "client_id": "curl-x",
    "user": None,
    "message_id": "0123456789ABCDEF0123456789ABCDEF",
}


class AccessLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.path = os.path.join(tempfile.mkdtemp(), "access.log")
        self.log = AccessLog(self.path, self.clock)
        self.log.startService()
        self.addCleanup(self.log.stopService)

    def lines(self) -> list[dict[str, object]]:
        with open(self.path) as f:
            return [json.loads(line) for line in f]

    def test_json_lines_within_a_moment(self) -> None:
        """Records appear as JSON lines within 0.2 s, every key kept."""
        self.log(RECORD)
        self.log(dict(RECORD, status=503, message_id=None))
        self.assertEqual(self.lines(), [])
        self.clock.advance(0.2)
        self.assertEqual(
            self.lines(), [RECORD, dict(RECORD, status=503, message_id=None)]
        )

    def test_typed_record(self) -> None:
        """The server's typed record is written with exactly the log's keys (the
        API that answered is the metrics', not a key of the line)."""
        self.log(AccessRecord(**RECORD, api=API.TOPICS))  # type: ignore[arg-type]
        self.log.flush()
        self.assertEqual(self.lines(), [RECORD])

    def test_large_batches_written_at_once(self) -> None:
        """64 KiB of records are written without waiting for the timer."""
        for _ in range(300):
            self.log(RECORD)
        self.assertGreater(len(self.lines()), 200)

    def test_reopen(self) -> None:
        """After the file is moved away (log rotation), reopen writes a new file."""
        self.log(RECORD)
        os.rename(self.path, self.path + ".1")
        self.log.reopen()
        self.log(dict(RECORD, status=400))
        self.log.flush()
        with open(self.path + ".1") as f:
            self.assertEqual([json.loads(x) for x in f], [RECORD])
        self.assertEqual(self.lines(), [dict(RECORD, status=400)])


class AccessLogServiceTests(SynchronousTestCase):
    def test_file_opened_by_the_service(self) -> None:
        """Building the access log opens nothing; starting it opens the file
        (records handed over before are written then), stopping it writes what
        is buffered and closes the file."""
        path = os.path.join(tempfile.mkdtemp(), "access.log")
        log = AccessLog(path, Clock())
        log(RECORD)
        self.assertFalse(os.path.exists(path))
        log.startService()
        log(dict(RECORD, status=400))
        log.stopService()
        with open(path) as f:
            self.assertEqual(
                [json.loads(x) for x in f], [RECORD, dict(RECORD, status=400)]
            )


class RecordLineTests(SynchronousTestCase):
    """L{AccessRecord.as_json} writes what C{json.dumps} writes of L{as_dict}."""

    @given(
        st.builds(
            AccessRecord,
            time=st.text(),
            peer=st.text(),
            method=st.text(),
            path=st.text(),
            http_version=st.text(),
            status=st.integers(),
            bytes=st.integers(min_value=0),
            duration_ms=st.floats() | st.integers(),
            client_id=st.none() | st.text(),
            user=st.none() | st.text(),
            message_id=st.none() | st.text(),
        )
    )
    def test_same_as_json_dumps(self, record: AccessRecord) -> None:
        self.assertEqual(
            record.as_json(), json.dumps(record.as_dict(), separators=(", ", ": "))
        )
        self.assertEqual(json.loads(record.as_json())["path"], record.path)
