"""Deterministic generator of labelled customer-support tickets for a fictional SaaS product.

Tickets are assembled from category templates, urgency cues and shared filler so the
vocabularies overlap across classes: a bug report may mention invoices, a billing question
may quote an error message, and urgency is carried by wording ("since yesterday", "all users",
"whenever you have time") that appears in every category. A share of tickets carry no urgency
cue or a misleading one from a neighbouring level, so neither label is recoverable from a
keyword lookup and the models in ``tasks.support.models`` have to learn from the text.

Run ``python -m tasks.support.data.generate`` to rewrite ``training.jsonl`` and
``sample_tickets.jsonl`` next to this module. Output is byte-for-byte reproducible.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from tasks.support.data.phrases import (
    ABBREVIATIONS,
    ACTIONS,
    AMBIGUOUS_CORE,
    BILLING_PAGES,
    CAPABILITIES,
    CATEGORY_URGENCY_CUES,
    CLOSINGS,
    COMPANIES,
    COMPETITORS,
    CONTEXT,
    CORE,
    DETAILS,
    ENDPOINTS,
    ERRORS,
    FEATURES,
    FORMATS,
    GREETINGS,
    HOWTOS,
    HTTP_ERRORS,
    INTEGRATIONS,
    MONTHS,
    NAMES,
    PAYMENT_ERRORS,
    PLANS,
    PLATFORMS,
    REGIONS,
    SHARED_DETAILS,
    SIGNOFF_SUFFIXES,
    SUBJECTS,
    SYMPTOMS,
    URGENCY_CUES,
)

CATEGORIES: Final[tuple[str, ...]] = ("bug", "feature_request", "billing", "general")
URGENCIES: Final[tuple[str, ...]] = ("low", "medium", "high", "critical")

TRAINING_SEED: Final = 20240611
SAMPLE_SEED: Final = 977
TRAINING_SIZE: Final = 1200
SAMPLE_SIZE: Final = 600
FIRST_TICKET_ID: Final = 10001

DATA_DIR: Final = Path(__file__).resolve().parent
TRAINING_FILE: Final = DATA_DIR / "training.jsonl"
SAMPLE_FILE: Final = DATA_DIR / "sample_tickets.jsonl"

_CATEGORY_WEIGHTS: Final[tuple[float, ...]] = (0.32, 0.22, 0.24, 0.22)

# Urgency depends on category only as a prior; the wording decides within it.
_URGENCY_WEIGHTS: Final[Mapping[str, tuple[float, ...]]] = {
    "bug": (0.15, 0.33, 0.32, 0.20),
    "feature_request": (0.50, 0.36, 0.12, 0.02),
    "billing": (0.22, 0.38, 0.28, 0.12),
    "general": (0.50, 0.34, 0.12, 0.04),
}

# Probabilities that keep the urgency task honest: no cue at all (the model must fall
# back on the category prior) or an extra cue from an adjacent level (real customers
# over- and under-state things).
_P_NO_URGENCY_CUE: Final = 0.14
_P_SECOND_CUE: Final = 0.30
_P_MISLEADING_CUE: Final = 0.10

# Probabilities that keep the category task honest: a core sentence that could honestly be
# filed under more than one category (triagers disagree on these too), or a second request
# from another category tacked on after the main one.
_P_AMBIGUOUS_CORE: Final = 0.14
_P_SECONDARY_REQUEST: Final = 0.16

# Human triage is inconsistent; a small share of labels disagree with the text outright
# (category: any other class; urgency: a neighbouring level).
_P_CATEGORY_LABEL_NOISE: Final = 0.03
_P_URGENCY_LABEL_NOISE: Final = 0.03

# --------------------------------------------------------------------------- fillers

# Word lists stay packed several to a line; one item per line would bury the templates.
# fmt: off
def _amount(rng: random.Random) -> str:
    currency = rng.choice(("$", "$", "$", "€", "£"))
    whole = rng.choice((19, 29, 49, 99, 149, 240, 499, 588, 1188, 2400, 4999, 12000))
    return f"{currency}{whole:,}" + rng.choice((".00", "", ".00"))


def _version(rng: random.Random) -> str:
    major, minor = rng.randint(2, 4), rng.randint(0, 9)
    style = rng.randrange(3)
    if style == 0:
        return f"v{major}.{minor}"
    if style == 1:
        return f"{major}.{minor}.{rng.randint(0, 12)}"
    return f"build {rng.randint(1000, 9999)}"


_SlotFactory = Callable[[random.Random], str]

_SLOTS: Final[Mapping[str, _SlotFactory]] = {
    "feature": lambda r: r.choice(FEATURES),
    "feature2": lambda r: r.choice(FEATURES),
    "billing_page": lambda r: r.choice(BILLING_PAGES),
    "action": lambda r: r.choice(ACTIONS),
    "error": lambda r: r.choice(ERRORS),
    "http_error": lambda r: r.choice(HTTP_ERRORS),
    "endpoint": lambda r: r.choice(ENDPOINTS),
    "symptom": lambda r: r.choice(SYMPTOMS),
    "platform": lambda r: r.choice(PLATFORMS),
    "version": _version,
    "old_version": _version,
    "format": lambda r: r.choice(FORMATS),
    "capability": lambda r: r.choice(CAPABILITIES),
    "integration": lambda r: r.choice(INTEGRATIONS),
    "competitor": lambda r: r.choice(COMPETITORS),
    "plan": lambda r: r.choice(PLANS),
    "plan2": lambda r: r.choice(PLANS),
    "month": lambda r: r.choice(MONTHS),
    "date": lambda r: f"{r.choice(MONTHS)} {r.randint(1, 28)}",
    "amount": _amount,
    "payment_error": lambda r: r.choice(PAYMENT_ERRORS),
    "howto": lambda r: r.choice(HOWTOS),
    "region": lambda r: r.choice(REGIONS),
    "name": lambda r: r.choice(NAMES),
    "agent": lambda r: r.choice(NAMES),
    "company": lambda r: r.choice(COMPANIES),
    "seats": lambda r: str(r.randint(3, 120)),
    "seats2": lambda r: str(r.randint(2, 60)),
    "n_users": lambda r: str(r.choice((40, 75, 120, 300, 800, 2500))),
    "invoice_no": lambda r: f"INV-{r.randint(10000, 99999)}",
    "req_id": lambda r: f"{r.getrandbits(32):08x}-{r.getrandbits(16):04x}",
    "vat": lambda r: f"{r.choice(('DE', 'FR', 'NL', 'IE', 'GB'))}{r.randint(100000000, 999999999)}",
    "email": lambda r: f"{r.choice(NAMES).lower()}@{r.choice(COMPANIES).split()[0].lower()}.com",
    "year": lambda r: str(r.randint(2017, 2023)),
    "hours": lambda r: str(r.choice((2, 3, 4, 6))),
}


class _Slots(dict[str, str]):
    """Fills template slots on demand so a slot repeated in one template keeps one value."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self._rng = rng

    def __missing__(self, key: str) -> str:
        value = _SLOTS[key](self._rng)
        if key == "plan2":
            # "Upgrade from Pro to Pro" reads as a generator artefact, not a ticket.
            while value == self.get("plan"):
                value = _SLOTS[key](self._rng)
        self[key] = value
        return value


# ------------------------------------------------------------------------- templates

def _pick(rng: random.Random, options: Sequence[str]) -> str:
    return options[rng.randrange(len(options))]


def _urgency_cue(rng: random.Random, category: str, urgency: str) -> str:
    specific = CATEGORY_URGENCY_CUES[(category, urgency)]
    if rng.random() < 0.6:
        return _pick(rng, specific)
    return _pick(rng, URGENCY_CUES[urgency])


def _adjacent(rng: random.Random, urgency: str) -> str:
    index = URGENCIES.index(urgency)
    neighbours = [URGENCIES[i] for i in (index - 1, index + 1) if 0 <= i < len(URGENCIES)]
    return _pick(rng, neighbours)


def _typo(rng: random.Random, word: str) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def _add_noise(rng: random.Random, text: str) -> str:
    if rng.random() < 0.35:
        rate = rng.uniform(0.02, 0.06)
        text = " ".join(_typo(rng, w) if rng.random() < rate else w for w in text.split(" "))
    if rng.random() < 0.15:
        for full, short in ABBREVIATIONS:
            text = text.replace(full, short)
    if rng.random() < 0.08:
        text = text.lower()
    if rng.random() < 0.06:
        text = text.replace(".", "!", 1)
    return text


def _core_sentence(rng: random.Random, category: str) -> str:
    if rng.random() < _P_AMBIGUOUS_CORE:
        return _pick(rng, [text for labels, text in AMBIGUOUS_CORE if category in labels])
    return _pick(rng, CORE[category])


def _secondary_request(rng: random.Random, category: str) -> str:
    other = _pick(rng, [c for c in CATEGORIES if c != category])
    sentence = _pick(rng, CORE[other])
    if not sentence.startswith(("I ", "I'")):
        sentence = sentence[0].lower() + sentence[1:]
    return _pick(rng, ("Also, ", "Unrelated, but ", "One more thing: ")) + sentence


def _body_sentences(rng: random.Random, category: str, urgency: str) -> list[str]:
    sentences = [_core_sentence(rng, category)]
    if rng.random() < 0.55:
        pool = DETAILS[category] if rng.random() < 0.7 else SHARED_DETAILS
        sentences.append(_pick(rng, pool))

    cues: list[str] = []
    if rng.random() >= _P_NO_URGENCY_CUE:
        cues.append(_urgency_cue(rng, category, urgency))
        if rng.random() < _P_SECOND_CUE:
            second = _urgency_cue(rng, category, urgency)
            if second != cues[0]:
                cues.append(second)
    if rng.random() < _P_MISLEADING_CUE:
        cues.append(_urgency_cue(rng, category, _adjacent(rng, urgency)))
    for cue in cues:
        sentences.insert(rng.randint(1, len(sentences)), cue)

    if rng.random() < 0.35:
        sentences.insert(rng.randint(0, len(sentences)), _pick(rng, CONTEXT))
    if rng.random() < _P_SECONDARY_REQUEST:
        sentences.append(_secondary_request(rng, category))
    return sentences


def _render_ticket(rng: random.Random, category: str, urgency: str) -> str:
    slots = _Slots(rng)
    lines: list[str] = []
    if rng.random() < 0.3:
        subject = _pick(rng, SUBJECTS[category])
        # Some customers flag everything as urgent; the label must not follow blindly.
        shouting = urgency == "critical" or (urgency != "low" and rng.random() < 0.05)
        if shouting and rng.random() < 0.5:
            subject = "URGENT: " + subject
        lines.append("Subject: " + subject)
    if rng.random() < 0.6:
        lines.append(_pick(rng, GREETINGS))
    lines.append(" ".join(_body_sentences(rng, category, urgency)))
    if rng.random() < 0.55:
        signoff = _pick(rng, CLOSINGS) + " {name}" + _pick(rng, SIGNOFF_SUFFIXES)
        lines.append(signoff)
    text = "\n".join(lines).format_map(slots)
    return _add_noise(rng, text)


def generate_tickets(count: int, seed: int) -> list[dict[str, str]]:
    """Return ``count`` labelled tickets as ``{"text", "category", "urgency"}`` dicts.

    The same ``(count, seed)`` always yields the same tickets, in the same order.
    """
    rng = random.Random(seed)
    tickets: list[dict[str, str]] = []
    for _ in range(count):
        category = rng.choices(CATEGORIES, weights=_CATEGORY_WEIGHTS)[0]
        urgency = rng.choices(URGENCIES, weights=_URGENCY_WEIGHTS[category])[0]
        text = _render_ticket(rng, category, urgency)
        if rng.random() < _P_CATEGORY_LABEL_NOISE:
            category = _pick(rng, [c for c in CATEGORIES if c != category])
        if rng.random() < _P_URGENCY_LABEL_NOISE:
            urgency = _adjacent(rng, urgency)
        tickets.append({"text": text, "category": category, "urgency": urgency})
    return tickets


def generate_sample_tickets(
    count: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED
) -> list[dict[str, object]]:
    """Return the demo batch: tickets from an independent seed with ``ticket_id`` from 10001."""
    return [
        {"ticket_id": FIRST_TICKET_ID + i, **ticket}
        for i, ticket in enumerate(generate_tickets(count, seed))
    ]


def to_jsonl(records: Iterable[Mapping[str, object]]) -> str:
    """Serialise records one JSON object per line, in a stable byte-exact form."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def write_datasets(directory: Path = DATA_DIR) -> tuple[Path, Path]:
    """Write the training set and the demo batch into ``directory`` and return both paths."""
    training_path = directory / TRAINING_FILE.name
    sample_path = directory / SAMPLE_FILE.name
    training_path.write_bytes(to_jsonl(generate_tickets(TRAINING_SIZE, TRAINING_SEED)).encode())
    sample_path.write_bytes(to_jsonl(generate_sample_tickets()).encode())
    return training_path, sample_path


def main() -> None:
    """Regenerate the shipped datasets and print where they went."""
    for path in write_datasets():
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
