"""Local, deterministic intent and sentiment extraction for the stateful agent.

Keyword rules, not a model: each intent has cue phrases, the intent with the most cues
in the message wins (ties: the order of :data:`INTENTS`), and sentiment is the balance
of positive and negative words. Good enough to drive the example's routing; swap in
``ctx.llm.complete_json`` calls when a provider is configured.
"""

from __future__ import annotations

from typing import Any, Final

from orchestration.retrieval.text import normalise

INTENTS: Final[dict[str, tuple[str, ...]]] = {
    "close_account": ("close my account", "delete my account", "cancel my account",
                      "close the workspace", "delete the workspace", "cancel subscription"),
    "change_payment": ("change my card", "update my card", "new card", "payment method",
                       "bank account", "change the card", "update billing details"),
    "account_access": ("log in", "login", "sign in", "password", "locked out", "2fa",
                       "two factor", "reset my"),
    "billing_question": ("invoice", "charged", "charge", "refund", "price", "bill", "receipt"),
    "technical_issue": ("error", "slow", "broken", "fails", "failing", "bug", "timeout",
                        "not working", "crash"),
}
GENERAL: Final = "general_question"
#: Intents that change who controls the account or its money: always verified first.
SENSITIVE_INTENTS: Final = frozenset({"close_account", "change_payment"})

POSITIVE: Final = frozenset({"thanks", "thank", "great", "love", "awesome", "appreciate",
                             "happy", "helpful", "perfect", "excellent", "good"})
NEGATIVE: Final = frozenset({"angry", "terrible", "awful", "worst", "frustrated",
                             "frustrating", "unacceptable", "ridiculous", "again", "still",
                             "broken", "useless", "hate", "disappointed", "annoyed", "bad"})


def extract_intent(message: str) -> dict[str, Any]:
    """``{"intent", "confidence", "cues"}`` for ``message``."""
    padded = f" {normalise(message)} "
    counts = {intent: [cue for cue in cues if f" {normalise(cue)} " in padded]
              for intent, cues in INTENTS.items()}
    best = max(INTENTS, key=lambda intent: len(counts[intent]))  # first wins ties
    found = counts[best]
    if not found:
        return {"intent": GENERAL, "confidence": 0.5, "cues": []}
    total = sum(len(cues) for cues in counts.values())
    return {"intent": best, "confidence": round(len(found) / total, 3), "cues": found}


def analyze_sentiment(message: str) -> dict[str, Any]:
    """``{"label": negative|neutral|positive, "score": -1..1}``."""
    words = normalise(message).split()
    positive = sum(word in POSITIVE for word in words)
    negative = sum(word in NEGATIVE for word in words)
    score = (positive - negative) / max(1, positive + negative)
    label = "negative" if score < 0 else "positive" if score > 0 else "neutral"
    return {"label": label, "score": round(score, 3)}
