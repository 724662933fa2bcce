# -*- test-case-name: tests.config.test_loader -*-
"""
The one error of a configuration that cannot be used.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """
    The configuration cannot be used.

    C{str(error)} is one line that starts with what is wrong: a key
    (C{"mqtt.keepalive: expected an integer, got 'x'"}), a file
    (C{"/etc/gw.toml: Expected '=' after a key ... (at line 3, column 5)"}) or a
    command-line option (C{"--broker: unsupported scheme 'http' ..."}).
    """
