"""The networkx knowledge graph: entity linking, neighbourhood, relation words."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestration.errors import RetrievalError
from orchestration.retrieval import Entity, GraphStore, Relation
from orchestration.retrieval.graph import NAMED_RELATION, OTHER_RELATION

ENTITIES = [Entity("billing-api", "doc-billing", "service", ("billing api",)),
            Entity("auth-service", "doc-auth", "service", ("auth service",)),
            Entity("payments", "doc-payments", "team", ("payments team",)),
            Entity("priya", "doc-priya", "person", ("Priya Raman",)),
            Entity("inc-1", "doc-inc-1", "incident")]
RELATIONS = [Relation("payments", "owns", "billing-api", "doc-billing"),
             Relation("billing-api", "depends_on", "auth-service", "doc-billing"),
             Relation("priya", "leads", "payments", "doc-payments"),
             Relation("inc-1", "affected", "auth-service", "doc-inc-1")]
WORDS = {"depends_on": ["depend", "rely"], "owns": ["owner"], "leads": ["lead"]}


@pytest.fixture
def graph() -> GraphStore:
    return GraphStore.build(ENTITIES, RELATIONS, relation_words=WORDS, hops=2)


def test_named_entities_and_the_relations_the_question_names_rank_first(
    graph: GraphStore
) -> None:
    assert graph.entities_in("Who leads the team that owns the billing API?") == ["billing-api"]
    found = graph.search("Who leads the team that owns the billing API?", k=3)
    assert [h.doc_id for h in found] == ["doc-billing", "doc-payments", "doc-priya"]
    assert found[0].score == 1.0
    assert found[1].score == pytest.approx(NAMED_RELATION)  # owns: named
    assert found[2].score == pytest.approx(NAMED_RELATION ** 2)  # leads: named
    assert "payments owns billing-api" in found[0].text


def test_unnamed_relations_weigh_less_and_hops_bound_the_walk(graph: GraphStore) -> None:
    near = graph.neighbourhood("tell me about priya raman")
    assert near["priya"] == 1.0
    assert near["payments"] == pytest.approx(OTHER_RELATION)
    assert near["billing-api"] == pytest.approx(OTHER_RELATION ** 2)
    assert "auth-service" not in near  # three hops away
    assert graph.search("nothing known here") == []


def test_a_saved_graph_answers_the_same(graph: GraphStore, tmp_path: Path) -> None:
    graph.save(tmp_path / "graph.json")
    again = GraphStore.load(tmp_path / "graph.json")
    question = "What does the billing api depend on?"
    assert again.search(question) == graph.search(question)


def test_relations_must_name_known_entities_and_files_must_be_graphs(tmp_path: Path) -> None:
    with pytest.raises(RetrievalError, match="unknown entity 'ghost'"):
        GraphStore.build(ENTITIES, [Relation("ghost", "owns", "billing-api", "d")])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(RetrievalError, match="cannot read"):
        GraphStore.load(tmp_path / "bad.json")
