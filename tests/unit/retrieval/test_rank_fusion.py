"""Reciprocal rank fusion: exact order, ties, weights, duplicates."""

from __future__ import annotations

import pytest

from orchestration.errors import RetrievalError
from orchestration.retrieval import Hit, reciprocal_rank_fusion


def hits(store: str, *doc_ids: str) -> list[Hit]:
    return [Hit(doc_id=d, score=1.0 / rank, source=store, rank=rank, text=f"{store}:{d}")
            for rank, d in enumerate(doc_ids, start=1)]


def test_documents_found_by_several_stores_rise_to_the_top() -> None:
    fused = reciprocal_rank_fusion({"vector": hits("vector", "d1", "d2", "d3"),
                                    "facts": hits("facts", "d3", "d1"),
                                    "graph": hits("graph", "d4")})

    # d1: 1/61 + 1/62; d3: 1/63 + 1/61; d4: 1/61; d2: 1/62.
    assert [h.doc_id for h in fused] == ["d1", "d3", "d4", "d2"]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 62)
    assert fused[1].score == pytest.approx(1 / 63 + 1 / 61)
    assert [h.rank for h in fused] == [1, 2, 3, 4]
    assert fused[0].ranks == {"vector": 1, "facts": 2}
    assert fused[1].ranks == {"vector": 3, "facts": 1}
    assert all(h.source == "fusion" for h in fused)
    # The text shown is the best-ranked store's.
    assert fused[1].text == "facts:d3"


def test_ties_go_to_the_best_rank_then_the_store_listed_first_then_the_id() -> None:
    fused = reciprocal_rank_fusion({"a": hits("a", "x", "y"), "b": hits("b", "y", "x"),
                                    "c": hits("c", "q"), "d": hits("d", "p")})

    # x and y tie (1/61 + 1/62); q and p tie (1/61): best rank equal, store order decides.
    assert [h.doc_id for h in fused] == ["x", "y", "q", "p"]
    same = reciprocal_rank_fusion({"a": hits("a", "n"), "b": hits("b", "m")})
    assert [h.doc_id for h in same] == ["n", "m"]


def test_limit_weights_and_k() -> None:
    rankings = {"vector": hits("vector", "d1", "d2"), "graph": hits("graph", "d2", "d3")}
    assert [h.doc_id for h in reciprocal_rank_fusion(rankings, limit=1)] == ["d2"]
    apart = {"vector": hits("vector", "d1"), "graph": hits("graph", "d3")}
    assert [h.doc_id for h in reciprocal_rank_fusion(apart)] == ["d1", "d3"]
    weighted = reciprocal_rank_fusion(apart, weights={"graph": 2.0})
    assert [h.doc_id for h in weighted] == ["d3", "d1"]
    assert weighted[0].score == pytest.approx(2 / 61)
    assert reciprocal_rank_fusion(rankings, k=1)[0].score == pytest.approx(1 / 3 + 1 / 2)
    with pytest.raises(RetrievalError, match="k must be >= 1"):
        reciprocal_rank_fusion(rankings, k=0)


def test_a_store_counts_once_per_document_and_empty_rankings_fuse_to_nothing() -> None:
    fused = reciprocal_rank_fusion({"vector": hits("vector", "d1", "d1", "d2")})
    assert [h.doc_id for h in fused] == ["d1", "d2"]
    assert fused[0].score == pytest.approx(1 / 61)
    assert fused[1].ranks == {"vector": 3}
    assert reciprocal_rank_fusion({}) == []
    assert reciprocal_rank_fusion({"vector": []}) == []


def test_hits_round_trip_through_json() -> None:
    fused = reciprocal_rank_fusion({"a": hits("a", "d1"), "b": hits("b", "d1")})
    assert Hit.from_dict(fused[0].to_dict()) == Hit(
        doc_id="d1", score=round(2 / 61, 6), source="fusion", rank=1, text="a:d1",
        ranks={"a": 1, "b": 1})
