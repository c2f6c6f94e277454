"""Reciprocal rank fusion: one ranking from several stores' rankings.

A document's fused score is the sum, over the stores that returned it, of
``weight / (k + rank)`` (Cormack, Clarke and Buettcher, SIGIR 2009). Only ranks count,
so stores whose scores are on different scales (cosine similarity, matched facts, graph
distance) merge without calibration; ``k`` (60 in the paper) damps the top ranks' lead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from orchestration.errors import RetrievalError
from orchestration.retrieval.documents import Hit

DEFAULT_K: Final = 60


def reciprocal_rank_fusion(rankings: Mapping[str, Sequence[Hit]], *, k: int = DEFAULT_K,
                           limit: int | None = None,
                           weights: Mapping[str, float] | None = None) -> list[Hit]:
    """Fuse ``{store: hits best first}`` into hits best first (source ``"fusion"``).

    Ties go to the document with the better best rank, then to the store listed first,
    then to the smaller id, so the order never depends on set iteration. Each fused hit's
    ``ranks`` says which store ranked it where; its text is the best-ranked store's.
    """
    if k < 1:
        raise RetrievalError(f"reciprocal rank fusion: k must be >= 1, got {k}")
    weights = weights or {}
    scores: dict[str, float] = {}
    ranks: dict[str, dict[str, int]] = {}
    best: dict[str, Hit] = {}
    order = {store: index for index, store in enumerate(rankings)}
    for store, hits in rankings.items():
        weight = float(weights.get(store, 1.0))
        seen: set[str] = set()
        for position, hit in enumerate(hits, start=1):
            if hit.doc_id in seen:
                continue  # a store counts once per document
            seen.add(hit.doc_id)
            scores[hit.doc_id] = scores.get(hit.doc_id, 0.0) + weight / (k + position)
            ranks.setdefault(hit.doc_id, {})[store] = position
            current = best.get(hit.doc_id)
            if current is None or (position, order[store]) < (current.rank,
                                                               order[current.source]):
                best[hit.doc_id] = Hit(doc_id=hit.doc_id, score=0.0, source=store,
                                       rank=position, text=hit.text, title=hit.title)

    def key(doc_id: str) -> tuple[float, int, int, str]:
        top = best[doc_id]
        return (-scores[doc_id], min(ranks[doc_id].values()), order[top.source], doc_id)

    fused = sorted(scores, key=key)
    if limit is not None:
        fused = fused[:max(0, limit)]
    return [Hit(doc_id=doc_id, score=scores[doc_id], source="fusion", rank=rank,
                text=best[doc_id].text, title=best[doc_id].title, ranks=ranks[doc_id])
            for rank, doc_id in enumerate(fused, start=1)]
