# -*- test-case-name: tests.web.test_admin,tests.test_openapi -*-
"""
The gateway's OpenAPI 3.1 description: C{openapi.yaml}, shipped in the package,
served as JSON on the admin listener at C{/openapi.json}.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import yaml

#: The file's name in the package.
RESOURCE = "openapi.yaml"


def document() -> dict[str, Any]:
    """The description, as read from the package's C{openapi.yaml}."""
    text = resources.files("gateway").joinpath(RESOURCE).read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


@functools.cache
def as_json() -> bytes:
    """The description as compact JSON (read once, then kept)."""
    return json.dumps(document(), separators=(",", ":")).encode()
