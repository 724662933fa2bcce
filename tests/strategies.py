"""
Hypothesis strategies shared by the tests.
"""

from __future__ import annotations

from hypothesis import strategies as st

from gateway.mqtt.strings import string_problem


def mqtt_text(min_size: int = 0, max_size: int | None = None) -> st.SearchStrategy[str]:
    """Text a strict broker accepts as an MQTT string (no controls, surrogates or
    non-characters)."""
    return st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs")),
        min_size=min_size,
        max_size=max_size,
    ).filter(lambda text: string_problem(text) is None)
