# -*- test-case-name: tests.mqtt.test_strings -*-
"""
What an MQTT string may hold, as strict brokers apply MQTT 5 section 1.5.4.

Mosquitto (and other strict brokers) close the connection on a PUBLISH or CONNECT
carrying a string with a control character or a non-character, so the gateway refuses
such strings before anything reaches the broker. Every function here is pure.
"""

from __future__ import annotations

import re

#: The longest MQTT string, in UTF-8 bytes.
MAX_STRING_BYTES = 65535

#: The most levels a topic may have (Mosquitto refuses deeper topics).
MAX_TOPIC_LEVELS = 200

# U+0000, the C0 and C1 controls and DEL, UTF-16 surrogates (no UTF-8 form),
# U+FDD0-U+FDEF and the last two code points of every plane.
_FORBIDDEN = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(
        f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17)
    )
    + "]"
)


def string_problem(text: str) -> str | None:
    """
    Why C{text} cannot be sent as an MQTT string, or C{None} when it can.

    A string may not hold U+0000, a control character (U+0001-U+001F,
    U+007F-U+009F), a surrogate or a non-character, and its UTF-8 form is at
    most 65535 bytes.
    """
    found = _FORBIDDEN.search(text)
    if found is not None:
        return f"contains U+{ord(found.group()):04X}, which MQTT strings may not hold"
    # Cheap before exact: a str of n code points is at most 4n UTF-8 bytes.
    if len(text) * 4 > MAX_STRING_BYTES and len(text.encode()) > MAX_STRING_BYTES:
        return f"is longer than {MAX_STRING_BYTES} bytes"
    return None


def topic_problem(topic: str) -> str | None:
    """
    Why C{topic} cannot be published to, or C{None} when it can: an MQTT string
    (L{string_problem}) that is not empty, holds no wildcard (C{+}, C{#}) and has
    at most L{MAX_TOPIC_LEVELS} levels.
    """
    if not topic:
        return "is empty"
    if "+" in topic or "#" in topic:
        return "cannot contain '+' or '#' (a topic to publish to has no wildcards)"
    problem = string_problem(topic)
    if problem is not None:
        return problem
    if topic.count("/") >= MAX_TOPIC_LEVELS:
        return f"has more than {MAX_TOPIC_LEVELS} levels"
    return None
