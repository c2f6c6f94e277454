"""The RAG example: shipped corpus, each store on known questions, fusion, the workflow."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestration import Orchestrator, RunStatus, StepStatus
from orchestration.retrieval import Hit, reciprocal_rank_fusion
from tasks.rag import stores as rag_stores
from tasks.rag.corpus import load_corpus, load_questions
from tasks.rag.data import generate
from tasks.rag.stores import REGISTRY, Stores
from tasks.rag.workflow import best_sentence, fuse, rag


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    """The three stores built from the shipped corpus into a throwaway cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAG_CACHE_DIR", str(tmp_path_factory.mktemp("rag-cache")))
        patch.delenv("RAG_STORES", raising=False)
        patch.delenv("RAG_FACTS_URL", raising=False)
        patch.delenv("RAG_CORPUS_DIR", raising=False)
        REGISTRY.reset()
        yield rag_stores.stores()
        REGISTRY.reset()


def recall_at_5(found: list[str], relevant: tuple[str, ...]) -> float:
    return len(set(found[:5]) & set(relevant)) / len(relevant)


# -- the shipped data -----------------------------------------------------------------------


def test_shipped_files_are_what_the_generator_writes() -> None:
    for name, text in generate.render().items():
        assert (generate.HERE / name).read_text(encoding="utf-8") == text, name


def test_the_corpus_and_questions_agree() -> None:
    corpus = load_corpus()
    questions = load_questions()
    ids = {d.doc_id for d in corpus.documents}
    assert 50 <= len(ids) == len(corpus.documents) <= 150
    assert len(questions) >= 40
    assert {q.kind for q in questions} == {"fact", "relation", "prose", "mixed"}
    for question in questions:
        assert set(question.relevant) <= ids, question
    assert {f.doc_id for f in corpus.facts} <= ids
    assert {r.doc_id for r in corpus.relations} <= ids


# -- each store alone -------------------------------------------------------------------------


@pytest.mark.parametrize(("question", "expected"), [
    ("How do I connect our SAML identity provider?", "guide-sso"),
    ("Can I get my money back on a monthly subscription?", "guide-refunds"),
    ("How can I check that a webhook call really came from you?",
     "guide-webhook-signatures"),
])
def test_the_vector_store_finds_prose_answers(built: Stores, question: str,
                                              expected: str) -> None:
    found = [h.doc_id for h in built.vector.search(question, 5)]
    assert expected in found[:3], found


@pytest.mark.parametrize(("question", "expected"), [
    ("How much does the Business plan cost per month?", "plan-business"),
    ("How many minutes did INC-2150 last?", "inc-2150"),
    ("Which programming language is the stream router written in?", "svc-stream-router"),
])
def test_the_fact_store_finds_the_document_of_a_fact(built: Stores, question: str,
                                                     expected: str) -> None:
    found = built.facts.search(question, 5)
    assert found[0].doc_id == expected
    assert found[0].source == "sql"


def test_the_graph_follows_relations_two_hops(built: Stores) -> None:
    found = [h.doc_id for h in built.graph.search(
        "Who leads the team that owns the query engine?", 5)]
    assert found[:3] == ["svc-query-engine", "team-data-plane", "person-jonas-lindqvist"]


def test_fusion_recalls_more_than_any_store_alone(built: Stores) -> None:
    questions = load_questions()
    totals = {"vector": 0.0, "facts": 0.0, "graph": 0.0, "fusion": 0.0}
    for q in questions:
        rankings = {name: getattr(built, name).search(q.question, 10)
                    for name in ("vector", "facts", "graph")}
        for name, hits in rankings.items():
            totals[name] += recall_at_5([h.doc_id for h in hits], q.relevant)
        fused = reciprocal_rank_fusion(rankings, limit=5)
        totals["fusion"] += recall_at_5([h.doc_id for h in fused], q.relevant)
    recall = {name: total / len(questions) for name, total in totals.items()}
    assert recall["fusion"] > max(recall["vector"], recall["facts"], recall["graph"]), recall
    assert recall["fusion"] >= 0.8, recall


def test_the_build_is_cached_and_reused(built: Stores) -> None:
    root = Path(os.environ["RAG_CACHE_DIR"])
    builds = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(builds) == 1
    assert {p.name for p in builds[0].iterdir()} >= {"vectors.sqlite", "graph.json",
                                                     "facts.sqlite", "embedder.json",
                                                     "embedder.npz"}
    assert REGISTRY.built() == builds[0]


# -- the steps ------------------------------------------------------------------------------


def _hit(doc_id: str, source: str, rank: int) -> dict[str, object]:
    return Hit(doc_id=doc_id, score=1.0, source=source, rank=rank).to_dict()


def test_fuse_goes_on_without_a_failed_store() -> None:
    output = fuse(search_vectors=[_hit("a", "vector", 1), _hit("b", "vector", 2)],
                  search_facts=None, search_graph=[_hit("b", "graph", 1)])
    assert [d["doc_id"] for d in output["documents"]] == ["b", "a"]
    assert output["answered"] == ["graph", "vector"]
    assert output["failed"] == ["facts"]


def test_best_sentence_quotes_the_passage_that_fits() -> None:
    docs = [Hit("d1", 1.0, "fusion", 1, text="Plans differ. Refunds are paid within ten days."),
            Hit("d2", 0.5, "fusion", 2, text="Backups run every six hours.")]
    assert best_sentence("how often do backups run", docs) == (
        "d2", "Backups run every six hours.")


def test_custom_stores_replace_the_shipped_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_STORES", "tests.unit.tasks.test_rag:my_stores")
    REGISTRY.reset()
    try:
        assert rag_stores.vector_store().search("anything")[0].doc_id == "mine"
    finally:
        monkeypatch.delenv("RAG_STORES")
        REGISTRY.reset()


class _Mine:
    name = "mine"

    def search(self, query: str, k: int = 5) -> list[Hit]:
        return [Hit(doc_id="mine", score=1.0, source=self.name, rank=1)]


def my_stores() -> Stores:
    return Stores(vector=_Mine(), facts=_Mine(), graph=_Mine())


def test_rag_workflow_runs_on_the_embedded_default(built: Stores,
                                                   embedded_default: Orchestrator) -> None:
    result = rag.run(conversation_id="unit-1",
                     question="Who leads the team that owns the query engine?", timeout=60)

    assert result.status is RunStatus.SUCCEEDED, result.error
    for step in ("search_vectors", "search_facts", "search_graph", "fuse", "answer"):
        assert result.steps[step].status is StepStatus.SUCCEEDED, step
    fused = result.outputs["fuse"]
    assert fused["answered"] == ["facts", "graph", "vector"] and fused["failed"] == []
    answer = result.outputs["answer"]
    assert "svc-query-engine" in answer["sources"]
    assert "team-data-plane" in answer["sources"]
    # No provider is configured: gpt-4o -> gpt-4o-mini -> the labelled local answer.
    assert answer["local"] is True
    assert "[local fallback" in answer["answer"]


def test_the_answer_reads_and_extends_the_conversation(built: Stores,
                                                       embedded_default: Orchestrator) -> None:
    first = rag.run(conversation_id="unit-2", question="Which team owns billing-api?",
                    timeout=60)
    second = rag.run(conversation_id="unit-2", question="Who leads that team?", timeout=60)
    other = rag.run(conversation_id="unit-3", question="Who leads that team?", timeout=60)

    assert first.outputs["answer"]["history_messages"] == 0
    assert second.outputs["answer"]["history_messages"] == 2  # the first exchange
    assert other.outputs["answer"]["history_messages"] == 0  # another conversation
    turns = embedded_default.store.memory.turns("unit-2")["rag_chat"]
    assert [(t.role, t.content) for t in turns] == [
        ("user", "Which team owns billing-api?"),
        ("assistant", first.outputs["answer"]["answer"]),
        ("user", "Who leads that team?"),
        ("assistant", second.outputs["answer"]["answer"])]


def test_workers_import_the_examples_and_serve_their_queues() -> None:
    from config import WORKFLOW_MODULES
    from config.queues import QUEUES
    from tasks.agent.workflow import agent

    assert {"tasks.rag.workflow", "tasks.agent.workflow"} <= set(WORKFLOW_MODULES)
    queues = {bound.queue for workflow in (rag, agent)
              for bound in workflow.validate().steps.values()}
    assert queues == {"rag.retrieve", "model.gpt-4o", "default", "model.gpt-4o-mini"}
    root = Path(__file__).resolve().parents[3]
    procfile = (root / "Procfile").read_text()
    compose = (root / "docker-compose.yml").read_text()
    for queue in queues:
        assert queue in {spec.name for spec in QUEUES}
        assert f"-Q {queue} " in procfile and f"-Q {queue} " in compose
