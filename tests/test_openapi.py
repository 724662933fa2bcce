"""
The OpenAPI description (C{gateway/openapi.yaml}, served at C{/openapi.json} on the
admin listener) checked against the running gateway with a real broker by
schemathesis: it generates requests from the description, valid and invalid, and
every response must be documented (status, content type, headers, body schema) and
none may be a 500.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from gateway import openapi
from tests.brokers import Mosquitto, Subscriber, free_port
from tests.gateway import RunningGateway, curl

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
)


def schemathesis(*args: str) -> Any:
    """Run the schemathesis CLI; fires with (output, exit code)."""

    async def run() -> tuple[str, int]:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            (
                "-m",
                "schemathesis.cli",
                "run",
                "--no-color",
                "--generation-database",
                "none",
                "--seed",
                "20261203",
                "-c",
                CHECKS,
                *args,
            ),
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
            path=tempfile.mkdtemp(prefix="schemathesis-"),
        )
        return (out + err).decode(errors="replace"), code

    return ensureDeferred(run())


class OpenAPITests(TestCase):
    """Mosquitto, the gateway with an admin listener, a subscriber on part of
    the topics (so that both 200 and 202 answers occur)."""

    timeout = 240

    async def start(self) -> None:
        self.broker = Mosquitto()
        self.addCleanup(self.broker.stop)
        await self.broker.start()
        self.admin_port = free_port()
        self.gateway = RunningGateway(
            f'[mqtt]\nbrokers = ["mqtt://127.0.0.1:{self.broker.port}"]\n'
            "publish_timeout = 2\n"
            '[log]\naccess = ""\n'
            "[http]\nmax_body = 65536\nmax_batch = 20\n"
            "[auth]\nallow_anonymous = true\n",
            "--admin",
            f"tcp:{self.admin_port}:interface=127.0.0.1",
        )
        self.addCleanup(self.gateway.stop)
        await self.gateway.start()
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        subscriber = Subscriber("127.0.0.1", self.broker.port, "api/#")
        self.addCleanup(subscriber.stop)
        await subscriber.start()

    def setUp(self) -> Any:
        return ensureDeferred(self.start())

    async def test_served(self) -> None:
        """/openapi.json on the admin listener is the shipped description."""
        result = await curl(f"{self.admin}/openapi.json")
        self.assertEqual(result.status, 200)
        self.assertEqual(result.headers["content-type"], "application/json")
        self.assertEqual(json.loads(result.body), openapi.document())

    async def test_publish_operations_conform(self) -> None:
        """Every answer of API 1 and the EMQX-compatible API to generated
        requests is documented, and none is a 500."""
        output, code = await schemathesis(
            f"{self.admin}/openapi.json",
            "--url",
            self.gateway.url,
            "--include-tag",
            "publish",
            "-n",
            "40",
        )
        self.assertEqual(code, 0, output)
        self.assertIn("3 selected", output)
        self.assertIn("No issues found", output)

    async def test_admin_operations_conform(self) -> None:
        """Every answer of the admin listener is documented, none is a 500."""
        output, code = await schemathesis(
            f"{self.admin}/openapi.json",
            "--url",
            self.admin,
            "--include-tag",
            "admin",
            "-n",
            "20",
        )
        self.assertEqual(code, 0, output)
        self.assertIn("4 selected", output)
        self.assertIn("No issues found", output)

    async def test_undocumented_answer_found(self) -> None:
        """The run can fail: with the 200 answer left out of the description,
        schemathesis reports the documented example's answer as undocumented."""
        document = openapi.document()
        operation = document["paths"]["/api/v5/publish"]
        del operation["post"]["responses"]["200"]
        document["paths"] = {"/api/v5/publish": operation}
        path = os.path.join(tempfile.mkdtemp(prefix="openapi-"), "broken.json")
        with open(path, "w") as f:
            json.dump(document, f)
        output, code = await schemathesis(
            path,
            "--url",
            self.gateway.url,
            "--phases",
            "examples",
        )
        self.assertNotEqual(code, 0, output)
        self.assertIn("Undocumented status code", output)
