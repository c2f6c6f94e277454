"""Token counts offline: a documented estimate per model, corrected by reported usage.

Nothing is downloaded to count: the catalogue names each model's estimate (``tokens:``),

- ``chars/4``: one token per 4 characters, rounded up (the rule of thumb OpenAI and
  Anthropic document for English text; the default);
- ``words*1.3``: 1.3 tokens per whitespace-separated word, rounded up (closer for prose
  in languages with long words, and for providers that count words);

plus :data:`MESSAGE_OVERHEAD` tokens per chat message (role and separators). Each
process keeps, per model, the ratio of the prompt tokens a provider *reported* to what
the estimate said for the same prompt (a moving average, clamped to [0.25, 4]) and
multiplies later estimates by it, so a model whose tokenizer runs denser than the
estimate is soon counted as the provider counts.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

Estimate = Literal["chars/4", "words*1.3"]
MESSAGE_OVERHEAD = 4
_SMOOTHING = 0.3  # weight of the newest observed ratio
_RATIO_LIMITS = (0.25, 4.0)

ESTIMATES: dict[str, Callable[[str], int]] = {
    "chars/4": lambda text: math.ceil(len(text) / 4),
    "words*1.3": lambda text: math.ceil(len(text.split()) * 1.3),
}


class TokenCounter:
    """Counts tokens for one model: its estimate times the correction learnt so far."""

    def __init__(self, estimate: str = "chars/4") -> None:
        if estimate not in ESTIMATES:
            raise ValueError(f"unknown token estimate {estimate!r} "
                             f"(known: {', '.join(sorted(ESTIMATES))})")
        self.estimate = estimate
        self._estimate = ESTIMATES[estimate]
        self.ratio = 1.0
        self._lock = threading.Lock()

    def raw(self, text: str) -> int:
        """The uncorrected estimate for ``text``."""
        return self._estimate(text) if text else 0

    def count(self, text: str) -> int:
        """Tokens of ``text`` (estimate x correction, rounded up)."""
        return math.ceil(self.raw(text) * self.ratio)

    def raw_messages(self, messages: Iterable[Mapping[str, str]]) -> int:
        """The uncorrected estimate for a chat prompt (content plus per-message overhead)."""
        return sum(self.raw(str(message.get("content", ""))) + MESSAGE_OVERHEAD
                   for message in messages)

    def count_messages(self, messages: Iterable[Mapping[str, str]]) -> int:
        """Tokens of a chat prompt: each message's content, corrected, plus its overhead."""
        return sum(self.count(str(message.get("content", ""))) + MESSAGE_OVERHEAD
                   for message in messages)

    def observe(self, estimated: int, reported: int) -> None:
        """Learn from a provider's reported prompt tokens for a prompt estimated raw."""
        if estimated <= 0 or reported <= 0:
            return
        low, high = _RATIO_LIMITS
        observed = min(high, max(low, reported / estimated))
        with self._lock:
            self.ratio += _SMOOTHING * (observed - self.ratio)


class TokenCounters:
    """One counter per catalogue model (unknown models count ``chars/4``)."""

    def __init__(self, estimates: Mapping[str, str]) -> None:
        self._counters = {model: TokenCounter(estimate) for model, estimate in estimates.items()}
        self._lock = threading.Lock()

    def get(self, model: str | None) -> TokenCounter:
        """The counter of ``model``."""
        counter = self._counters.get(model or "")
        if counter is None:
            with self._lock:
                counter = self._counters.setdefault(model or "", TokenCounter())
        return counter
