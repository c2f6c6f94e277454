"""Closed-set answers: a model asked to answer with one of a few choices.

A request carries its choices as one line of its messages, written by
:func:`instruction` (``Answer with exactly one of: a | b | c``): a real model reads it as
an instruction, the offline local provider recognises it with :func:`requested` and
answers with a choice (:func:`pick`). The answer, whoever gave it, is normalised by
:func:`normalise` to exactly one choice, or refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

PREFIX = "Answer with exactly one of: "
SEPARATOR = " | "
_NOTE = re.compile(r"^\s*\[[^\]]*\]\s*")  # a leading bracketed note, e.g. a provider's label
_TRIM = " \t\r\n\"'`.,;:!?*_()"


def instruction(choices: Sequence[str]) -> str:
    """The line that carries ``choices`` in a request (choices hold no ``|`` or newline)."""
    return PREFIX + SEPARATOR.join(choices)


def requested(messages: Iterable[Mapping[str, str]]) -> list[str] | None:
    """The choices a request carries (its last instruction line), or None."""
    found: list[str] | None = None
    for message in messages:
        for line in str(message.get("content", "")).splitlines():
            if line.startswith(PREFIX):
                found = [part.strip() for part in line[len(PREFIX):].split(SEPARATOR.strip())
                         if part.strip()]
    return found or None


def without_instruction(text: str) -> str:
    """``text`` without its instruction lines (what the request asks about)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith(PREFIX))


def pick(text: str, choices: Sequence[str]) -> str:
    """The choice mentioned first in ``text`` (whole words, any case), else the last choice.

    This is how the offline local provider answers: a keyword match on the choices'
    own names, never a judgement.
    """
    best: tuple[int, str] | None = None
    for choice in choices:
        match = _word(choice).search(text)
        if match is not None and (best is None or match.start() < best[0]):
            best = (match.start(), choice)
    return best[1] if best is not None else choices[-1]


def normalise(answer: str, choices: Sequence[str]) -> str | None:
    """The one choice ``answer`` gives, or None.

    A leading bracketed note (``[local fallback ...]``), quotes, punctuation and case are
    ignored; an answer that is not a choice itself must mention exactly one choice as a
    whole word ("The category is Billing." gives ``billing``).
    """
    text = _NOTE.sub("", answer).strip().strip(_TRIM)
    by_fold = {choice.casefold(): choice for choice in choices}
    if text.casefold() in by_fold:
        return by_fold[text.casefold()]
    mentioned = [choice for choice in choices if _word(choice).search(text)]
    return mentioned[0] if len(mentioned) == 1 else None


def _word(choice: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(choice)}(?!\w)", re.IGNORECASE)
