"""SQL facts: lookups and question search with bound parameters only."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect

from orchestration.errors import RetrievalError
from orchestration.retrieval import Fact, FactStore

FACTS = [
    Fact("plan-team", "monthly_price_usd", "99", "doc-team", "price cost month"),
    Fact("plan-team", "seats", "10", "doc-team", "seats users"),
    Fact("plan-business", "monthly_price_usd", "499", "doc-business", "price cost month"),
    Fact("plan-business", "seats", "50", "doc-business-seats", "seats users"),
    Fact("billing-api", "language", "Python", "doc-billing", "language written"),
]
ALIASES = {"Team plan": "plan-team", "Business plan": "plan-business",
           "billing api": "billing-api"}


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return create_engine(f"sqlite:///{tmp_path / 'facts.db'}")


@pytest.fixture
def store(engine: Engine) -> FactStore:
    facts = FactStore(engine, table="facts")
    facts.load(FACTS, ALIASES)
    return facts


def test_lookup_reads_one_subject(store: FactStore) -> None:
    assert store.count() == len(FACTS)
    assert [f.value for f in store.lookup("plan-team")] == ["99", "10"]
    assert store.lookup("plan-business", "seats") == [FACTS[3]]
    assert store.lookup("nobody") == []


def test_a_question_finds_the_documents_of_the_subjects_it_names(store: FactStore) -> None:
    found = store.search("How many seats does the Business plan have?")
    assert [h.doc_id for h in found] == ["doc-business-seats", "doc-business"]
    assert found[0].source == "sql" and found[0].score > found[1].score
    assert "plan-business seats: 50" in found[0].text
    assert [h.doc_id for h in store.search("What does the Team plan cost a month?")] == \
        ["doc-team"]
    assert store.subjects_in("Team plan or Business plan?") == ["plan-team", "plan-business"]
    assert store.search("a question that names nothing") == []


def test_injection_in_a_question_or_a_lookup_is_only_data(store: FactStore,
                                                          engine: Engine) -> None:
    attacks = ["x' OR '1'='1", "plan-team' OR 1=1 --", "'; DROP TABLE facts; --",
               "billing-api\"; DELETE FROM facts; --"]
    for attack in attacks:
        assert store.lookup(attack) == [], attack
        assert store.lookup("plan-team", attack) == [], attack
    # The question names billing-api: only its fact comes back, and nothing is dropped.
    found = store.search("billing api'; DROP TABLE facts; -- what language?")
    assert [h.doc_id for h in found] == ["doc-billing"]
    found = store.search("Team plan' OR '1'='1")
    assert [h.doc_id for h in found] == ["doc-team"]
    assert store.count() == len(FACTS)
    assert {"facts", "facts_aliases", "facts_meta"} <= set(inspect(engine).get_table_names())


def test_table_names_cannot_carry_sql(engine: Engine) -> None:
    for bad in ["facts; DROP TABLE x", "Facts", "1facts", "fa-cts", "", "x" * 60]:
        with pytest.raises(RetrievalError, match="table name"):
            FactStore(engine, table=bad)


def test_ensure_loads_once_per_version_and_replaces_on_a_new_one(engine: Engine) -> None:
    store = FactStore(engine, table="versioned")
    assert store.ensure(FACTS, ALIASES, version="v1") is True
    assert store.ensure(FACTS, ALIASES, version="v1") is False
    assert store.count() == len(FACTS)
    assert store.ensure(FACTS[:1], {}, version="v2") is True
    assert store.count() == 1
    assert store.search("What does the Business plan cost?") == []
    assert [h.doc_id for h in store.search("plan-team price")] == ["doc-team"]
