"""The shipped RAG corpus (``data/*.jsonl``): documents, facts, graph, questions.

Read through ``importlib.resources`` so it works from an installed package too. A
deployment pointing the workflow at its own corpus sets ``RAG_CORPUS_DIR`` to a folder
holding the same files (see ``tasks/rag/stores.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from orchestration.retrieval import Document, Entity, Fact, Relation
from orchestration.retrieval.cache import fingerprint

DATA_PACKAGE: Final = "tasks.rag.data"
FILES: Final = ("documents", "facts", "aliases", "entities", "relations")


@dataclass(frozen=True)
class Question:
    """A labelled question: its id, kind, text and the documents that answer it."""

    qid: str
    kind: str
    question: str
    relevant: tuple[str, ...]


@dataclass(frozen=True)
class Corpus:
    """Everything the three stores are built from."""

    documents: tuple[Document, ...]
    facts: tuple[Fact, ...]
    aliases: dict[str, str]
    entities: tuple[Entity, ...]
    relations: tuple[Relation, ...]
    key: str  # a fingerprint of all of it: a changed corpus is rebuilt, never mixed

    def document(self, doc_id: str) -> Document:
        """A document by id (KeyError if unknown)."""
        return next(d for d in self.documents if d.doc_id == doc_id)


def _read(name: str, directory: Path | None) -> list[dict[str, Any]]:
    if directory is None:
        text = resources.files(DATA_PACKAGE).joinpath(f"{name}.jsonl").read_text("utf-8")
    else:
        text = (directory / f"{name}.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_corpus(directory: Path | None = None) -> Corpus:
    """The corpus in ``directory`` (default: the shipped one)."""
    raw = {name: _read(name, directory) for name in FILES}
    return Corpus(
        documents=tuple(Document.from_dict(row) for row in raw["documents"]),
        facts=tuple(Fact.from_dict(row) for row in raw["facts"]),
        aliases={str(row["alias"]): str(row["subject"]) for row in raw["aliases"]},
        entities=tuple(Entity.from_dict(row) for row in raw["entities"]),
        relations=tuple(Relation.from_dict(row) for row in raw["relations"]),
        key=fingerprint(raw),
    )


def load_questions(directory: Path | None = None) -> list[Question]:
    """The labelled questions (default: the shipped ones)."""
    return [Question(qid=str(row["qid"]), kind=str(row["kind"]),
                     question=str(row["question"]),
                     relevant=tuple(str(d) for d in row["relevant"]))
            for row in _read("questions", directory)]
