"""The sqlite-vec vector store and its local LSA embedder."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from orchestration.errors import RetrievalError
from orchestration.retrieval import Document, LsaEmbedder, VectorStore
from orchestration.retrieval.embedding import ARRAYS_FILE, SETTINGS_FILE

DOCS = [
    Document("keys", "Create API keys in the console and rotate a key by creating a second "
             "one before revoking the old key.", "API keys"),
    Document("refunds", "Annual plans are refunded in full within thirty days; monthly "
             "plans are not refunded.", "Refunds"),
    Document("exports", "Exports write query results as CSV, Parquet or JSON files into "
             "a bucket.", "Exports"),
    Document("backups", "Storage is backed up every six hours to a second region.",
             "Backups"),
    Document("sso", "Single sign-on with SAML or OpenID Connect is set up in the console.",
             "Single sign-on"),
    Document("slow", "Slow queries scan too much data: filter on the time column.",
             "Slow queries"),
]


@pytest.fixture
def store(tmp_path: Path) -> VectorStore:
    return VectorStore.build(tmp_path / "vec", DOCS, dimensions=5)


def test_known_questions_find_their_documents(store: VectorStore) -> None:
    assert store.count() == len(DOCS)
    for question, expected in [("how do I rotate an API key", "keys"),
                               ("are monthly plans refunded", "refunds"),
                               ("export results as parquet", "exports"),
                               ("set up SAML single sign-on", "sso")]:
        found = store.search(question, k=2)
        assert found[0].doc_id == expected, (question, [h.doc_id for h in found])
        assert found[0].source == "vector" and found[0].rank == 1
        assert found[0].score >= found[1].score
        assert found[0].text == next(d.text for d in DOCS if d.doc_id == expected)


def test_a_reopened_store_answers_the_same_from_its_files(store: VectorStore,
                                                          tmp_path: Path) -> None:
    again = VectorStore.open(tmp_path / "vec")
    question = "how often is storage backed up"
    assert [h.doc_id for h in again.search(question, 3)] == \
        [h.doc_id for h in store.search(question, 3)]
    assert again.documents(["sso", "nope"]) == {"sso": DOCS[4]}
    # The embedder is JSON + npz, never pickle.
    assert json.loads((tmp_path / "vec" / SETTINGS_FILE).read_text())["vocabulary"]
    with np.load(tmp_path / "vec" / ARRAYS_FILE, allow_pickle=False) as arrays:
        assert set(arrays.files) == {"idf", "components"}


def test_embeddings_are_unit_vectors_and_unknown_words_find_nothing(store: VectorStore) -> None:
    vectors = store.embedder.embed(["rotate a key", "zzz qqq"])
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5)
    assert not vectors[1].any()
    assert store.search("zzz qqq") == []
    assert store.search("key", k=0) == []


def test_threads_share_a_store(store: VectorStore) -> None:
    found: list[str] = []

    def ask() -> None:
        found.append(store.search("refund of a monthly plan", 1)[0].doc_id)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == ["refunds"] * 6


def test_bad_input_is_refused_with_the_culprit(tmp_path: Path) -> None:
    with pytest.raises(RetrievalError, match="two documents share an id"):
        VectorStore.build(tmp_path / "dup", [DOCS[0], DOCS[0], DOCS[1]], dimensions=2)
    with pytest.raises(RetrievalError, match="nothing to index"):
        VectorStore.build(tmp_path / "empty", [])
    with pytest.raises(RetrievalError, match=r"no vectors\.sqlite"):
        VectorStore.open(tmp_path / "missing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "vectors.sqlite").write_text("")
    with pytest.raises(RetrievalError, match="cannot read the embedder"):
        VectorStore.open(tmp_path / "broken")


def test_the_embedder_needs_two_texts() -> None:
    with pytest.raises(RetrievalError, match="at least 2 texts"):
        LsaEmbedder.fit(["only one"])
