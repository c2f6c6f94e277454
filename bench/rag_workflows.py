"""The two shapes ``bench/rag.py`` times: the three retrievals in parallel, and in sequence.

Both call the RAG example's stores (``tasks/rag/stores.py``) and fuse like its workflow;
``BENCH_RAG_LATENCY_MS`` (read per call) adds that many milliseconds of sleep to every
store call, standing in for a store across a network.
"""

from __future__ import annotations

import os
import time
from typing import Any

from orchestration import Workflow
from orchestration.retrieval import hits_from, reciprocal_rank_fusion
from tasks.rag.stores import fact_store, graph_store, vector_store

QUEUE = "bench.rag"
CANDIDATES = 10


def _search(store: Any, question: str) -> list[dict[str, Any]]:
    latency = float(os.environ.get("BENCH_RAG_LATENCY_MS") or 0) / 1000
    if latency:
        time.sleep(latency)
    return [hit.to_dict() for hit in store.search(question, CANDIDATES)]


def vectors(question: str) -> list[dict[str, Any]]:
    """The vector store's hits."""
    return _search(vector_store(), question)


def facts(question: str) -> list[dict[str, Any]]:
    """The SQL store's hits (SQLite beside the bench's cache)."""
    return _search(fact_store(), question)


def graph(question: str) -> list[dict[str, Any]]:
    """The graph store's hits."""
    return _search(graph_store(), question)


def fused(vectors: list[dict[str, Any]], facts: list[dict[str, Any]],
          graph: list[dict[str, Any]]) -> list[str]:
    """The top 5 ids by reciprocal rank fusion."""
    rankings = {"vector": hits_from(vectors), "facts": hits_from(facts),
                "graph": hits_from(graph)}
    return [hit.doc_id for hit in reciprocal_rank_fusion(rankings, limit=5)]


parallel = Workflow("bench_rag_parallel", inputs=["question"], queue=QUEUE)
for function in (vectors, facts, graph, fused):
    parallel.task(name=function.__name__)(function)

sequence = Workflow("bench_rag_sequence", inputs=["question"], queue=QUEUE)
sequence.task(name="vectors")(vectors)
sequence.task(name="facts", depends_on="vectors")(facts)
sequence.task(name="graph", depends_on="facts")(graph)
sequence.task(name="fused")(fused)
