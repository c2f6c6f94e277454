"""The queues the shipped workflows use, and the worker pool that suits each.

One worker service per queue (bulkheads): a slow or failing model fills only its own
queue. The Procfile and docker-compose.yml start one worker per entry; a unit test
checks they agree with the workflows in ``tasks/``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueueSpec:
    """A queue and how its workers should run."""

    name: str
    pool: str
    concurrency: int
    purpose: str


QUEUES = (
    QueueSpec("model.classifier", "prefork", 2, "ticket category model (CPU-bound, scikit-learn)"),
    QueueSpec("model.urgency", "prefork", 2, "urgency model (CPU-bound, scikit-learn)"),
    QueueSpec("model.fraud", "prefork", 2, "the seven fraud models (CPU-bound, scikit-learn)"),
    QueueSpec("model.gpt-4o-mini", "threads", 32, "LLM calls (I/O-bound: many in flight)"),
    QueueSpec("model.claude-4-haiku", "threads", 32,
              "the declared support pipeline's classifier (tasks/pipelines; I/O-bound)"),
    QueueSpec("model.gpt-4o", "threads", 32, "the RAG answer model (tasks/rag; I/O-bound)"),
    QueueSpec("rag.retrieve", "threads", 8,
              "RAG searches and fusion: embedded stores (sqlite-vec, SQL, networkx), "
              "I/O-bound once the stores are remote"),
    QueueSpec("default", "prefork", 2, "business rules and run finalisation"),
)
