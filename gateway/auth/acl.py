# -*- test-case-name: tests.auth.test_acl -*-
"""
Mosquitto's C{acl_file}, applied to publishing exactly as Mosquitto 2.0 applies
it to a client's PUBLISH.

The file::

    # comment
    topic [read|write|readwrite|deny] <filter>     # anonymous clients
    pattern [read|write|readwrite|deny] <filter>   # everyone; %c client id, %u user
    user <name>
    topic [read|write|readwrite|deny] <filter>     # this user only

What Mosquitto 2.0.11 does, checked against the broker itself (tests.auth.test_acl):

 1. Topics starting with C{$SYS} may only be written when they match
    C{$SYS/broker/connection/+/state}; topics starting with C{$share} never.
 2. The entries of the client's own block (the user's, or for a client without a
    user name the entries before the first C{user} line): a matching C{deny}
    refuses, then a matching C{write}/C{readwrite} allows.
 3. If there are any C{pattern} lines: a user name or client id holding C{+} or
    C{#} is refused; then a matching C{deny} pattern refuses, then a matching
    C{write}/C{readwrite} pattern allows. C{%c} and C{%u} are replaced wherever
    they appear in the text; patterns with C{%u} are skipped for clients without
    a user name, patterns without apply to them too.
 4. Anything else is refused.

So a deny only beats grants of its own kind: a user's own C{topic} grant wins over
a C{pattern deny}. Wildcards match as in subscriptions (C{#} also matches the
parent level), and a filter starting with a wildcard never matches a topic
starting with C{$}. Blocks for the same user name merge.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeAlias

import attrs

from gateway.auth.files import FileError, read_text

# What C isspace() counts as blank; str.strip() would also strip Unicode spaces.
_BLANKS = " \t\n\v\f\r"
_MAX_FILTER_BYTES = 65535
_SUBSTITUTION = re.compile(r"(%[cu])")
_Filter: TypeAlias = tuple[str, ...]


def is_valid_filter(topic_filter: str) -> bool:
    """
    Whether C{topic_filter} is a valid MQTT topic filter: not empty, at most
    65535 bytes of UTF-8, no U+0000, C{+} only as a whole level, C{#} only as the
    whole last level.
    """
    if not topic_filter or "\0" in topic_filter:
        return False
    if len(topic_filter.encode("utf-8", "surrogatepass")) > _MAX_FILTER_BYTES:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "+" in level and level != "+":
            return False
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """
    Whether the topic name C{topic} matches the valid filter C{topic_filter} as
    MQTT defines it: C{+} matches one level, a final C{#} any number of levels
    including none (C{a/#} matches C{a}), and a filter starting with a wildcard
    does not match a topic starting with C{$}.
    """
    return _matches(tuple(topic_filter.split("/")), topic.split("/"))


def _matches(topic_filter: _Filter, topic: Sequence[str]) -> bool:
    if topic[0].startswith("$") and topic_filter[0] in ("+", "#"):
        return False
    for i, level in enumerate(topic_filter):
        if level == "#":
            return True
        if i >= len(topic) or (level != "+" and level != topic[i]):
            return False
    return len(topic_filter) == len(topic)


_BRIDGE_STATE = ("$SYS", "broker", "connection", "+", "state")


@attrs.frozen
class _Block:
    """What one C{user} block (or the anonymous one) says about writing."""

    deny: tuple[_Filter, ...] = ()
    write: tuple[_Filter, ...] = ()


@attrs.frozen
class _Pattern:
    """A C{pattern} line: C{parts} alternates text with C{%c}/C{%u}."""

    parts: tuple[str, ...]
    uses_username: bool

    @classmethod
    def compile(cls, text: str) -> _Pattern:
        parts = tuple(_SUBSTITUTION.split(text))
        return cls(parts, "%u" in parts[1::2])

    def expand(self, username: str | None, client_id: str) -> _Filter:
        if len(self.parts) == 1:
            return tuple(self.parts[0].split("/"))
        text = "".join(
            (client_id if part == "%c" else username or "") if i % 2 else part
            for i, part in enumerate(self.parts)
        )
        return tuple(text.split("/"))


@attrs.frozen(eq=False)
class ACL:
    """
    A parsed Mosquitto C{acl_file}; immutable (to reload, load a new one and
    swap). See the module's docstring for the rules it applies.
    """

    _blocks: dict[str | None, _Block] = attrs.field(repr=False)
    _deny_patterns: tuple[_Pattern, ...] = attrs.field(repr=False)
    _write_patterns: tuple[_Pattern, ...] = attrs.field(repr=False)
    # Any pattern at all, read-only ones included: Mosquitto refuses user names
    # and client ids with wildcards whenever there are patterns.
    _has_patterns: bool = attrs.field(repr=False)
    name: str = "acl"

    @classmethod
    def parse(cls, text: str, name: str = "acl") -> ACL:
        """
        Parse the text of an ACL file as Mosquitto 2.0 does: words are separated
        by spaces (not tabs); after C{topic}/C{pattern} comes an access word and
        the filter (which may contain spaces), or the filter alone, which is then
        C{readwrite}, so C{topic read} grants readwrite on the topic C{read}. A
        line whose first character is C{#} is a comment; a C{#} after text is
        part of it. Unlike Mosquitto, which cuts a line at U+0000, this refuses it.

        @param name: the file's name for error messages.
        @raise FileError: for an unknown keyword or access word, a missing user
            name or filter, or an invalid filter (as Mosquitto refuses to start).
        """
        users: dict[str | None, tuple[list[_Filter], list[_Filter]]] = {}
        deny_patterns: list[_Pattern] = []
        write_patterns: list[_Pattern] = []
        has_patterns = False
        user: str | None = None
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.rstrip(_BLANKS)
            if line.startswith("#"):
                continue
            if "\0" in line:
                raise FileError(name, number, "U+0000 in line")
            keyword, rest = _word(line)
            if keyword is None:
                continue
            if keyword == "user":
                if not rest:
                    raise FileError(name, number, "'user' without a user name")
                user = rest.strip(_BLANKS)
                continue
            if keyword not in ("topic", "pattern"):
                raise FileError(
                    name,
                    number,
                    f"unknown keyword {_shorten(keyword)} "
                    "(expected topic, pattern or user)",
                )
            access, rest = _word(rest)
            if access is None:
                raise FileError(name, number, f"{keyword!r} without a topic")
            if rest:
                topic_filter = rest.strip(_BLANKS)
            else:
                topic_filter, access = access, "readwrite"
            if access not in ("read", "write", "readwrite", "deny"):
                raise FileError(
                    name,
                    number,
                    f"unknown access {_shorten(access)} "
                    "(expected read, write, readwrite or deny)",
                )
            if not is_valid_filter(topic_filter):
                raise FileError(
                    name, number, f"invalid topic filter {_shorten(topic_filter)}"
                )
            if keyword == "pattern":
                has_patterns = True
                pattern = _Pattern.compile(topic_filter)
                if access == "deny":
                    deny_patterns.append(pattern)
                elif access != "read":
                    write_patterns.append(pattern)
            elif access != "read":
                deny, write = users.setdefault(user, ([], []))
                entry = tuple(topic_filter.split("/"))
                (deny if access == "deny" else write).append(entry)
        blocks = {
            who: _Block(tuple(deny), tuple(write))
            for who, (deny, write) in users.items()
        }
        return cls(
            blocks, tuple(deny_patterns), tuple(write_patterns), has_patterns, name
        )

    @classmethod
    def load(cls, path: str) -> ACL:
        """
        Read and parse the ACL file at C{path} (see L{parse}); error messages
        name C{path}.

        @raise FileError: if it cannot be read, is not UTF-8, or does not parse.
        """
        text = read_text(path)
        return cls.parse(text, path)

    def may_publish(self, topic: str, username: str | None, client_id: str) -> bool:
        """
        Whether a client with C{client_id}, authenticated as C{username} (C{None}
        for an anonymous client), may publish to the topic name C{topic}: the
        answer Mosquitto 2.0 gives with this file as its C{acl_file}.
        """
        if not topic or "+" in topic or "#" in topic:
            return False
        levels = topic.split("/")
        if topic.startswith("$SYS"):
            if not _matches(_BRIDGE_STATE, levels):
                return False
        elif topic.startswith("$share"):
            return False

        block = self._blocks.get(username)
        if block is not None:
            if any(_matches(f, levels) for f in block.deny):
                return False
            if any(_matches(f, levels) for f in block.write):
                return True

        if not self._has_patterns:
            return False
        if _has_wildcard(username) or _has_wildcard(client_id):
            return False
        for pattern in self._deny_patterns:
            if _applies(pattern, username, client_id, levels):
                return False
        return any(
            _applies(pattern, username, client_id, levels)
            for pattern in self._write_patterns
        )


def _applies(
    pattern: _Pattern, username: str | None, client_id: str, levels: list[str]
) -> bool:
    if pattern.uses_username and username is None:
        return False
    return _matches(pattern.expand(username, client_id), levels)


def _has_wildcard(name: str | None) -> bool:
    return name is not None and ("+" in name or "#" in name)


def _word(text: str) -> tuple[str | None, str]:
    """
    The first space-separated word of C{text} and what follows the one space
    after it, as C's C{strtok(text, " ")} then C{strtok(NULL, "")} split them.
    """
    text = text.lstrip(" ")
    if not text:
        return None, ""
    word, _, rest = text.partition(" ")
    return word, rest


def _shorten(text: str, limit: int = 60) -> str:
    """C{repr(text)}, cut to about C{limit} characters (always one line)."""
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)
