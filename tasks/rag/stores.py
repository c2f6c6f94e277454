"""The RAG workflow's three stores, built from the corpus on first use and cached on disk.

- **vector**: sqlite-vec in ``<cache>/<corpus key>/vectors.sqlite``, with the LSA
  embedder (TF-IDF + SVD, fitted on the corpus) saved beside it;
- **facts**: the ``rag_facts`` table in ``<cache>/<corpus key>/facts.sqlite``, or in the
  results database when that is PostgreSQL, or in ``RAG_FACTS_URL`` when set;
- **graph**: networkx, saved as ``<cache>/<corpus key>/graph.json``.

Settings (environment, read when a store is first used):

- ``RAG_CACHE_DIR``: where built stores go (default ``./var/rag``). A directory per
  corpus fingerprint, built once under a file lock, so worker processes that start
  together build it once and a changed corpus never mixes with an old build;
- ``RAG_CORPUS_DIR``: a folder with your own ``documents/facts/aliases/entities/
  relations.jsonl`` (default: the corpus shipped in ``tasks/rag/data``);
- ``RAG_FACTS_URL``: an SQLAlchemy URL for the facts table (SQLite or PostgreSQL);
- ``RAG_STORES``: ``"package.module:function"`` returning a :class:`Stores` of your own
  retrievers (anything with ``name`` and ``search(query, k)``): the workflow then uses
  those and builds nothing.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, create_engine

from orchestration import ConfigurationError
from orchestration.retrieval import (
    Document,
    FactStore,
    GraphStore,
    Retriever,
    VectorStore,
    built_once,
    fingerprint,
)
from tasks.rag.corpus import Corpus, load_corpus
from tasks.rag.data.knowledge import RELATION_WORDS

DIMENSIONS: Final = 64
GRAPH_HOPS: Final = 2
FACTS_TABLE: Final = "rag_facts"
GRAPH_FILE: Final = "graph.json"
FACTS_FILE: Final = "facts.sqlite"
BUILD_VERSION: Final = 1  # bump when what a build writes changes


@dataclass(frozen=True)
class Stores:
    """The three retrievers a RAG run asks, by role."""

    vector: Retriever
    facts: Retriever
    graph: Retriever


def cache_dir() -> Path:
    """Where built stores are kept (``RAG_CACHE_DIR``, default ``./var/rag``)."""
    return Path(os.environ.get("RAG_CACHE_DIR") or Path("var") / "rag").resolve()


def _corpus_dir() -> Path | None:
    value = os.environ.get("RAG_CORPUS_DIR")
    return Path(value).resolve() if value else None


class _Registry:
    """Process-wide stores, each built or opened once (threads of a worker share them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._corpus: Corpus | None = None
        self._built: dict[str, Path] = {}
        self._vector: VectorStore | None = None
        self._graph: GraphStore | None = None
        self._facts: dict[str, FactStore] = {}
        self._custom: Stores | None = None
        self._custom_loaded = False

    def reset(self) -> None:
        """Forget every store (tests point ``RAG_*`` elsewhere, then call this)."""
        with self._lock:
            self.__init__()  # type: ignore[misc]

    def custom(self) -> Stores | None:
        with self._lock:
            if not self._custom_loaded:
                self._custom = _custom_stores()
                self._custom_loaded = True
            return self._custom

    def corpus(self) -> Corpus:
        with self._lock:
            if self._corpus is None:
                self._corpus = load_corpus(_corpus_dir())
            return self._corpus

    def built(self) -> Path:
        """The build directory of the current corpus (built on first call)."""
        corpus = self.corpus()
        root = cache_dir()
        with self._lock:
            path = self._built.get(str(root))
            if path is None:
                key = fingerprint(corpus.key, DIMENSIONS, GRAPH_HOPS, BUILD_VERSION)
                path = built_once(root, key, lambda scratch: _build(corpus, scratch))
                self._built[str(root)] = path
            return path

    def vector(self) -> VectorStore:
        path = self.built()
        with self._lock:
            if self._vector is None:
                self._vector = VectorStore.open(path)
            return self._vector

    def graph(self) -> GraphStore:
        path = self.built()
        with self._lock:
            if self._graph is None:
                self._graph = GraphStore.load(path / GRAPH_FILE)
            return self._graph

    def facts(self, results_engine: Engine | None) -> FactStore:
        path = self.built()
        url = os.environ.get("RAG_FACTS_URL")
        engine: Engine | None = None
        if url:
            label = url
        elif results_engine is not None and results_engine.dialect.name == "postgresql":
            label, engine = results_engine.url.render_as_string(), results_engine
        else:
            label = str(path / FACTS_FILE)
        with self._lock:
            store = self._facts.get(label)
            if store is None:
                if engine is None:
                    engine = create_engine(url or f"sqlite:///{path / FACTS_FILE}")
                store = FactStore(engine, table=FACTS_TABLE)
                corpus = self._corpus
                assert corpus is not None  # loaded by built()
                store.ensure(corpus.facts, corpus.aliases, version=corpus.key)
                self._facts[label] = store
            return store


def _build(corpus: Corpus, directory: Path) -> None:
    """Write every file-backed store of ``corpus`` into ``directory``."""
    VectorStore.build(directory, corpus.documents, dimensions=DIMENSIONS)
    GraphStore.build(corpus.entities, corpus.relations, relation_words=RELATION_WORDS,
                     hops=GRAPH_HOPS).save(directory / GRAPH_FILE)
    engine = create_engine(f"sqlite:///{directory / FACTS_FILE}")
    try:
        FactStore(engine, table=FACTS_TABLE).ensure(corpus.facts, corpus.aliases,
                                                    version=corpus.key)
    finally:
        engine.dispose()


def _custom_stores() -> Stores | None:
    spec = os.environ.get("RAG_STORES")
    if not spec:
        return None
    module_name, _, attribute = spec.partition(":")
    try:
        factory: Any = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"RAG_STORES={spec!r}: cannot import it ({exc}); expected "
                                 "'package.module:function'") from exc
    stores = factory()
    for role in ("vector", "facts", "graph"):
        if not isinstance(getattr(stores, role, None), Retriever):
            raise ConfigurationError(f"RAG_STORES={spec!r}: its {role!r} has no name and "
                                     "search(query, k)")
    return stores  # type: ignore[no-any-return]


REGISTRY: Final = _Registry()


def vector_store() -> Retriever:
    """The vector retriever (yours if ``RAG_STORES`` is set)."""
    custom = REGISTRY.custom()
    return custom.vector if custom else REGISTRY.vector()


def fact_store(results_engine: Engine | None = None) -> Retriever:
    """The SQL facts retriever; in the results DB when that engine is PostgreSQL."""
    custom = REGISTRY.custom()
    return custom.facts if custom else REGISTRY.facts(results_engine)


def graph_store() -> Retriever:
    """The knowledge-graph retriever."""
    custom = REGISTRY.custom()
    return custom.graph if custom else REGISTRY.graph()


def documents(doc_ids: list[str]) -> dict[str, Document]:
    """Indexed documents by id, to show in full ({} with your own stores: hits carry text)."""
    if REGISTRY.custom():
        return {}
    return REGISTRY.vector().documents(doc_ids)


def stores(results_engine: Engine | None = None) -> Stores:
    """All three (the bench and the tests use this)."""
    return Stores(vector=vector_store(), facts=fact_store(results_engine),
                  graph=graph_store())
