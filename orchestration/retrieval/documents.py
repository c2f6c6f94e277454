"""What retrieval stores hold and return: documents in, ranked hits out, as JSON-ready data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Document:
    """One retrievable text: a stable ``doc_id``, its ``text`` and an optional ``title``."""

    doc_id: str
    text: str
    title: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Document:
        """From ``{"doc_id", "text", "title"?}`` (a line of a JSONL corpus)."""
        return cls(doc_id=str(data["doc_id"]), text=str(data["text"]),
                   title=str(data.get("title") or ""))


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved document: its id, score (higher is better), the store that found it.

    ``rank`` is 1 for a store's best hit. ``text`` is what the store has to show for it
    (the document, the matching facts, the relations). ``ranks`` (fused hits only) maps
    each contributing store to the rank it gave the document.
    """

    doc_id: str
    score: float
    source: str
    rank: int
    text: str = ""
    title: str = ""
    ranks: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """As a JSON object (what a step returns)."""
        data: dict[str, Any] = {"doc_id": self.doc_id, "score": round(self.score, 6),
                                "source": self.source, "rank": self.rank,
                                "text": self.text, "title": self.title}
        if self.ranks:
            data["ranks"] = dict(self.ranks)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Hit:
        """From :meth:`to_dict`'s output (what an upstream step returned)."""
        return cls(doc_id=str(data["doc_id"]), score=float(data["score"]),
                   source=str(data["source"]), rank=int(data["rank"]),
                   text=str(data.get("text") or ""), title=str(data.get("title") or ""),
                   ranks={str(k): int(v) for k, v in (data.get("ranks") or {}).items()})


@runtime_checkable
class Retriever(Protocol):
    """What a RAG step needs from a store: the ``k`` best documents for a question."""

    name: str

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The ``k`` best hits for ``query``, best first (fewer when fewer match)."""


def ranked(source: str, scored: Mapping[str, float], k: int,
           texts: Mapping[str, str] | None = None,
           titles: Mapping[str, str] | None = None) -> list[Hit]:
    """Hits from ``{doc_id: score}``: best first, ties by doc id (so results are stable)."""
    order = sorted(scored.items(), key=lambda item: (-item[1], item[0]))[:max(0, k)]
    texts = texts or {}
    titles = titles or {}
    return [Hit(doc_id=doc_id, score=score, source=source, rank=index,
                text=texts.get(doc_id, ""), title=titles.get(doc_id, ""))
            for index, (doc_id, score) in enumerate(order, start=1)]


def hits_from(data: Sequence[Mapping[str, Any]] | None) -> list[Hit]:
    """Hits back from a step's JSON output; None (a failed or skipped store) is no hits."""
    return [Hit.from_dict(item) for item in data or ()]
