# -*- test-case-name: tests.test_tap -*-
"""
The one error that stops the daemon from starting.
"""

from __future__ import annotations


class StartupError(SystemExit):
    """
    The daemon cannot start. Raised while twistd sets up, it ends the process with
    exit status 1 and its one-line message on standard error, no traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"mqtt-http-gateway: {message}")
