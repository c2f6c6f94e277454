"""Text helpers shared by the stores: normalising, crude stemming, finding named mentions.

Deliberately simple and dependency-free: the stores link a question to the entities
they know by their names and aliases, not by a language model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_NON_WORD = re.compile(r"[^0-9a-z]+")
_SUFFIXES = ("encies", "ency", "ities", "ity", "ings", "ing", "ers", "er", "ies", "ied",
             "ed", "es", "ly", "s")
_STOPWORDS_TEXT = (
    "a about after all also an and any are as at be been before being but by can could did do "
    "does doing for from had has have how i if in into is it its may me more most my no not of "
    "on or our out over same should so some than that the their them then there these they "
    "this those through to too under up us very was we were what when where which while who "
    "whom why will with would you your")
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def normalise(text: str) -> str:
    """Lower case; each run of non-alphanumerics becomes one space (``"Billing-API?"``
    -> ``"billing api"``)."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def stem(word: str) -> str:
    """A crude suffix-stripping stem (``owners``/``owned``/``owns`` -> ``own``)."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def terms(text: str) -> set[str]:
    """The stemmed content words of ``text`` (stopwords dropped)."""
    return {stem(word) for word in normalise(text).split() if word not in STOPWORDS}


class Mentions:
    """Finds which known names a text mentions, longest alias first, each span once.

    ``aliases`` maps every way of writing a name (the name itself included) to the
    canonical name; matching is on whole normalised words, so ``"api"`` never matches
    inside ``"rapid"``.
    """

    def __init__(self, aliases: Mapping[str, str]) -> None:
        pairs = {normalise(alias): name for alias, name in aliases.items() if normalise(alias)}
        self._aliases = sorted(pairs.items(), key=lambda item: (-len(item[0]), item[0]))

    def __len__(self) -> int:
        return len(self._aliases)

    def find(self, text: str) -> list[str]:
        """Canonical names mentioned in ``text``, in order of first appearance."""
        padded = f" {normalise(text)} "
        found: dict[str, int] = {}
        for alias, name in self._aliases:
            needle = f" {alias} "
            start = padded.find(needle)
            if start < 0:
                continue
            if name not in found or start < found[name]:
                found[name] = start
            # Blank the span so a shorter alias inside it ("api") is not matched again.
            padded = padded[:start] + " " * len(needle) + padded[start + len(needle):]
        return sorted(found, key=lambda name: (found[name], name))


def aliases_of(names: Iterable[tuple[str, Iterable[str]]]) -> dict[str, str]:
    """``{alias: name}`` from ``(name, aliases)`` pairs, each name also its own alias."""
    table: dict[str, str] = {}
    for name, extra in names:
        table[name] = name
        for alias in extra:
            table[alias] = name
    return table
