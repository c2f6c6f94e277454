"""The RAG chat workflow: retrieve from three stores at once, fuse, answer with memory.

::

    search_vectors ─┐
    search_facts   ─┼─> fuse (reciprocal rank fusion, top 5) ─> answer (LLM + memory)
    search_graph   ─┘

The three searches are independent steps, so workers run them in parallel; each is
``critical=False``, so a store that fails (or times out) leaves the answer to the
others, and ``fuse`` says which stores answered. ``answer`` asks ``gpt-4o`` with the
conversation's history; on a timeout or an unavailable model it goes straight to the
catalogue's smaller fallback (``gpt-4o-mini``, then the local provider), which is what
``on_error={"timeout": "route_to_fallback", ...}`` says. With no API key configured the
local provider answers, labelled, and the answer quotes the best-matching sentence of
the retrieved documents.

Stores are built from the shipped corpus on first use and cached on disk; point the
workflow at your own with ``RAG_CORPUS_DIR``, ``RAG_FACTS_URL`` or ``RAG_STORES``
(:mod:`tasks.rag.stores`).
"""

from __future__ import annotations

from typing import Any, Final

from orchestration import Memory, StepContext, Workflow
from orchestration.retrieval import Hit, hits_from, reciprocal_rank_fusion
from orchestration.retrieval.text import terms
from tasks.rag.stores import documents as indexed
from tasks.rag.stores import fact_store, graph_store, vector_store

__all__ = ["ANSWER_MODEL", "CANDIDATES", "RETRIEVE_QUEUE", "TOP_K", "answer", "best_sentence",
           "fuse", "rag", "search_facts", "search_graph", "search_vectors"]

RETRIEVE_QUEUE: Final = "rag.retrieve"
ANSWER_MODEL: Final = "gpt-4o"
SUMMARY_MODEL: Final = "gpt-4o-mini"
CANDIDATES: Final = 10  # hits each store hands to the fusion
TOP_K: Final = 5  # documents the answer sees
SEARCH_TIMEOUT_S: Final = 10.0
ANSWER_TIMEOUT_S: Final = 60.0

PROMPT: Final = (
    "Answer the question using only the documents below; say so if they do not contain "
    "the answer, and cite the document ids you used in brackets.\n\n{documents}\n\n"
    "Question: {question}"
)

rag = Workflow("rag_chat", inputs=["conversation_id", "question"],
               memory=Memory(key="conversation_id", window=6, summarize_with=SUMMARY_MODEL))


def _json(hits: list[Hit]) -> list[dict[str, Any]]:
    return [hit.to_dict() for hit in hits]


@rag.task(queue=RETRIEVE_QUEUE, timeout=SEARCH_TIMEOUT_S, retries=1, critical=False)
def search_vectors(question: str) -> list[dict[str, Any]]:
    """Nearest documents by embedding (sqlite-vec, local LSA embeddings)."""
    return _json(vector_store().search(question, CANDIDATES))


@rag.task(queue=RETRIEVE_QUEUE, timeout=SEARCH_TIMEOUT_S, retries=1, critical=False)
def search_facts(question: str, ctx: StepContext) -> list[dict[str, Any]]:
    """Documents stating facts about what the question names (SQL, bound parameters)."""
    return _json(fact_store(ctx.store.engine).search(question, CANDIDATES))


@rag.task(queue=RETRIEVE_QUEUE, timeout=SEARCH_TIMEOUT_S, retries=1, critical=False)
def search_graph(question: str) -> list[dict[str, Any]]:
    """Documents in the knowledge-graph neighbourhood of what the question names."""
    return _json(graph_store().search(question, CANDIDATES))


@rag.task(queue=RETRIEVE_QUEUE)
def fuse(search_vectors: list[dict[str, Any]] | None, search_facts: list[dict[str, Any]] | None,
         search_graph: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The top documents by reciprocal rank fusion, and which stores took part.

    A store whose step failed contributes None (its step is non-critical): it is listed
    under ``failed`` and the fusion goes on with the others.
    """
    outputs = {"vector": search_vectors, "facts": search_facts, "graph": search_graph}
    rankings = {store: hits_from(output) for store, output in outputs.items()
                if output is not None}
    fused = reciprocal_rank_fusion(rankings, limit=TOP_K)
    return {"documents": _json(fused),
            "answered": sorted(rankings), "failed": sorted(set(outputs) - set(rankings))}


@rag.task(model=ANSWER_MODEL, timeout=ANSWER_TIMEOUT_S, retries=1,
          on_error={"timeout": "route_to_fallback", "model_unavailable": "route_to_fallback"})
def answer(question: str, fuse: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """The LLM's answer from the fused documents and the conversation so far."""
    full = indexed([hit["doc_id"] for hit in fuse["documents"]])
    documents = [Hit(doc_id=hit.doc_id, score=hit.score, source=hit.source, rank=hit.rank,
                     text=full[hit.doc_id].text if hit.doc_id in full else hit.text,
                     title=full[hit.doc_id].title if hit.doc_id in full else hit.title,
                     ranks=hit.ranks)
                 for hit in hits_from(fuse["documents"])]
    listing = "\n".join(f"[{hit.doc_id}] {hit.title}: {_document_text(hit)}"
                        for hit in documents) or "(no documents found)"
    history = ctx.memory.context().messages()  # summary of older turns + recent window
    prompt = PROMPT.format(documents=listing, question=question)
    completion = ctx.llm.complete([*history, {"role": "user", "content": prompt}])
    text = completion.text
    if completion.local_fallback and documents:
        # The local stand-in does not read: quote the retrieved sentence that fits best.
        doc_id, sentence = best_sentence(question, documents)
        text = f"{text} Closest passage [{doc_id}]: {sentence}"
    ctx.memory.append(user=question, assistant=text)  # written with the step's outcome
    return {"answer": text, "model": completion.model, "local": completion.local_fallback,
            "sources": [hit.doc_id for hit in documents], "history_messages": len(history)}


def _document_text(hit: Hit) -> str:
    return hit.text or hit.title


def best_sentence(question: str, documents: list[Hit]) -> tuple[str, str]:
    """The sentence of ``documents`` sharing most words with ``question`` (and its doc)."""
    wanted = terms(question)
    best: tuple[int, int, str, str] = (-1, 0, "", "")
    for position, hit in enumerate(documents):
        for sentence in _document_text(hit).replace("; ", ". ").split(". "):
            overlap = len(wanted & terms(sentence))
            if (overlap, -position) > (best[0], best[1]):
                best = (overlap, -position, hit.doc_id, sentence.strip().rstrip(".") + ".")
    return best[2], best[3]
