"""Pure functions behind the summary quality gate and the extractive fallback.

Nothing here calls a model or touches the engine's state, so each rule is testable alone:

- :func:`repeated_ngram`: the first word n-gram (4 words by default) a text repeats, a
  cheap detector of the loops sampling at the wrong temperature produces;
- :func:`too_long`: a summary with more than half the article's words is no summary;
- :func:`is_local_answer`: the labelled template the engine's local provider answers
  with when no LLM is configured (never a real summary);
- :func:`summary_problem`: all three together, the reason a summary fails or None;
- :func:`extractive_summary`: the leading sentences of the article, up to about a quarter
  of its words, used when no acceptable LLM summary was produced.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from orchestration.llm.providers.local import LABEL as LOCAL_LABEL

__all__ = [
    "EXTRACTIVE_RATIO",
    "LOCAL_LABEL",
    "MAX_SUMMARY_RATIO",
    "NGRAM",
    "extractive_summary",
    "is_local_answer",
    "normalised_words",
    "repeated_ngram",
    "split_sentences",
    "summary_problem",
    "too_long",
    "word_count",
]

NGRAM: Final = 4
MAX_SUMMARY_RATIO: Final = 0.5
EXTRACTIVE_RATIO: Final = 0.25

_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")
_EDGE_PUNCTUATION = re.compile(r"^\W+|\W+$")


def word_count(text: str) -> int:
    """Words as a reader counts them: whitespace-separated tokens."""
    return len(text.split())


def normalised_words(text: str) -> list[str]:
    """Lower-cased words with surrounding punctuation removed (empty tokens dropped)."""
    words = (_EDGE_PUNCTUATION.sub("", token.lower()) for token in text.split())
    return [word for word in words if word]


def repeated_ngram(text: str, n: int = NGRAM) -> str | None:
    """The first ``n``-word phrase that occurs twice in ``text`` (case and punctuation
    ignored), or None when no phrase repeats."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    words = normalised_words(text)
    seen: set[tuple[str, ...]] = set()
    for start in range(len(words) - n + 1):
        gram = tuple(words[start:start + n])
        if gram in seen:
            return " ".join(gram)
        seen.add(gram)
    return None


def too_long(summary: str, article_words: int, ratio: float = MAX_SUMMARY_RATIO) -> bool:
    """True when ``summary`` has more than ``ratio`` times the article's word count."""
    return word_count(summary) > ratio * article_words


def is_local_answer(text: str) -> bool:
    """True for the local provider's labelled stand-in answer."""
    return text.lstrip().startswith(LOCAL_LABEL)


def summary_problem(summary: str, article_words: int) -> str | None:
    """Why ``summary`` is not acceptable for an article of ``article_words`` words, or None."""
    if not summary.strip():
        return "empty summary"
    if is_local_answer(summary):
        return "no LLM configured: the answer is the local provider's labelled template"
    if too_long(summary, article_words):
        return (f"too long: {word_count(summary)} words for a {article_words}-word article "
                f"(limit {int(MAX_SUMMARY_RATIO * article_words)})")
    phrase = repeated_ngram(summary)
    if phrase is not None:
        return f"repeated phrase: {phrase!r}"
    return None


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after ., ! or ? (and closing quotes) before whitespace."""
    pieces: Sequence[str] = _SENTENCE_END.split(" ".join(text.split()))
    return [piece.strip() for piece in pieces if piece.strip()]


def extractive_summary(text: str, ratio: float = EXTRACTIVE_RATIO) -> str:
    """The article's leading sentences, up to ``ratio`` of its words.

    Sentences are taken in order; one that would push the summary past the budget ends it,
    and one that would repeat a 4-word phrase already in the summary is skipped, so the
    result passes :func:`summary_problem` itself. The first sentence is always kept (cut to
    the budget if it alone is longer).
    """
    budget = max(1, int(ratio * word_count(text)))
    chosen: list[str] = []
    used = 0
    for sentence in split_sentences(text):
        size = word_count(sentence)
        if not chosen:
            if size > budget:
                return " ".join(sentence.split()[:budget]).rstrip(",;:") + " ..."
            chosen.append(sentence)
            used = size
            continue
        if used + size > budget:
            break
        if repeated_ngram(" ".join([*chosen, sentence])) is not None:
            continue
        chosen.append(sentence)
        used += size
    return " ".join(chosen)
