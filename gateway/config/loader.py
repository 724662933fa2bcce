# -*- test-case-name: tests.config.test_loader -*-
"""
Reading a configuration: L{load} a TOML file, L{parse} a decoded document,
L{default} for no file at all.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from gateway.config.error import ConfigError
from gateway.config.rules import check
from gateway.config.schema import SCHEMA, alternatives, describe, join_key
from gateway.config.settings import Config

__all__ = ["default", "load", "parse"]


def _unknown(
    label: str, what: str, name: str, candidates: Sequence[str]
) -> ConfigError:
    """An error for an unknown name, with the closest valid name as a hint."""
    # The right key in the wrong section (or no section at all) is the likelier
    # mistake when a section has a key of that very name.
    elsewhere = [
        f"{section}.{name}" for section, (_, keys) in SCHEMA.items() if name in keys
    ]
    close = difflib.get_close_matches(name, candidates, n=1)
    if not close or (what == "section" and elsewhere):
        close = elsewhere
    hint = f" (did you mean {alternatives(close)}?)" if close else ""
    return ConfigError(f"{label}: unknown {what}{hint}")


def _section(name: str, table: Any, base_dir: str) -> Any:
    cls, converters = SCHEMA[name]
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: expected a table [{name}], got {describe(table)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        label = join_key(name, key)
        if key not in converters:
            raise _unknown(label, "key", str(key), list(converters))
        values[key] = converters[key](label, value, base_dir)
    if "brokers" in values:
        values["brokers_configured"] = True
    return cls(**values)


def parse(document: Mapping[str, Any], base_dir: str) -> Config:
    """
    Validate a decoded TOML document (the documented layout).

    Missing sections and keys take their defaults. Relative paths are resolved
    against C{base_dir} (the config file's folder) and made absolute; C{~} is
    expanded.

    @raise ConfigError: one line naming the first bad key.
    """
    base_dir = os.path.abspath(base_dir)
    sections: dict[str, Any] = {}
    for name, table in document.items():
        if name not in SCHEMA:
            raise _unknown(join_key("", name), "section", str(name), list(SCHEMA))
        sections[name] = _section(name, table, base_dir)
    config = Config(**sections)
    check(config)
    return config


def load(path: str) -> Config:
    """
    Read and validate the TOML file at C{path}; relative paths in it are relative
    to its folder.

    @raise ConfigError: C{"<path>: <reason>"} when the file cannot be read or is not
        TOML (the reason carries the line and column), or a key's error as from
        L{parse}.
    """
    try:
        with open(path, "rb") as stream:
            document = tomllib.load(stream)
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {error.start}: {error.reason})"
        ) from None
    except tomllib.TOMLDecodeError as error:
        reason = " ".join(str(error).split())
        raise ConfigError(f"{path}: {reason}") from None
    source = os.path.abspath(path)
    return attrs.evolve(parse(document, os.path.dirname(source)), source=source)


def default() -> Config:
    """The settings with no config file: every key at its default."""
    return Config()
