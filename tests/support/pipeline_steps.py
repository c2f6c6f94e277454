"""Code steps (``call: "tests.support.pipeline_steps:..."``) of the test pipeline files."""

from __future__ import annotations

from typing import Any


def word_count(text: str) -> int:
    """Words in ``text``."""
    return len(text.split())


def label_of(ticket: dict[str, Any]) -> str:
    """The label of a parsed ticket."""
    return str(ticket["label"])


def needs_foo(text: str, foo: str) -> str:
    """Reads an input no pipeline declares (to test binding problems)."""
    return text + foo


def shout(text: str) -> str:
    """``text`` in capitals."""
    return text.upper()


NOT_A_FUNCTION = 42


def first_word(text: str) -> str:
    """The first word of ``text`` (what a test routes on)."""
    return text.split()[0] if text.split() else ""


def echo_label(label: str) -> str:
    """The label a routing step passed on to a child."""
    return f"label={label}"


def py_child_step(text: str) -> str:
    """The step of the Python workflow a test pipeline routes to."""
    return f"python saw {len(text)} characters"
