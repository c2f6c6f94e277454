"""A vector store in one SQLite file: sqlite-vec's ``vec0`` index beside the documents.

Python's bundled ``sqlite3`` is often built without extension loading, so the file is
opened through ``apsw`` (which ships its own SQLite that can load extensions) and the
``sqlite-vec`` package's loadable extension: a single file on disk, no server, queried
with bound parameters only. Embeddings come from a local :class:`LsaEmbedder`
saved beside the database.

::

    store = VectorStore.build(directory, documents)       # fit the embedder, index all
    store = VectorStore.open(directory)                   # later, in any process
    store.search("how do I rotate an API key", k=5)       # -> [Hit, ...]
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, cast

import apsw
import numpy as np
import sqlite_vec

from orchestration.errors import RetrievalError
from orchestration.retrieval.documents import Document, Hit
from orchestration.retrieval.embedding import LsaEmbedder

DATABASE_FILE: Final = "vectors.sqlite"


def _connect(path: Path, *, readonly: bool) -> apsw.Connection:
    flags = apsw.SQLITE_OPEN_READONLY if readonly else \
        apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    try:
        connection = apsw.Connection(str(path), flags=flags)
        connection.enable_load_extension(True)
        connection.load_extension(sqlite_vec.loadable_path())
        connection.enable_load_extension(False)
    except apsw.Error as exc:
        raise RetrievalError(f"vector store {path}: cannot open it with sqlite-vec: {exc}") \
            from exc
    return connection


class VectorStore:
    """Nearest documents to a query by cosine distance of their embeddings.

    Safe to share between threads: each thread reads through its own read-only
    connection. ``name`` labels its hits (``"vector"``).
    """

    def __init__(self, directory: Path, embedder: LsaEmbedder, *, name: str = "vector") -> None:
        self.directory = directory
        self.embedder = embedder
        self.name = name
        self._local = threading.local()

    @classmethod
    def build(cls, directory: Path, documents: Sequence[Document], *, dimensions: int = 64,
              name: str = "vector") -> VectorStore:
        """Fit an embedder on ``documents``, write it and the index into ``directory``."""
        if not documents:
            raise RetrievalError("vector store: nothing to index (no documents)")
        texts = [_indexed_text(document) for document in documents]
        embedder = LsaEmbedder.fit(texts, dimensions=dimensions)
        embedder.save(directory)
        vectors = embedder.embed(texts)
        path = directory / DATABASE_FILE
        path.unlink(missing_ok=True)
        connection = _connect(path, readonly=False)
        try:
            with connection:
                connection.execute(
                    "CREATE TABLE documents (id INTEGER PRIMARY KEY, doc_id TEXT NOT NULL "
                    "UNIQUE, title TEXT NOT NULL, text TEXT NOT NULL)")
                connection.execute(
                    f"CREATE VIRTUAL TABLE embeddings USING vec0(embedding "
                    f"float[{embedder.dimensions}] distance_metric=cosine)")
                for rowid, (document, vector) in enumerate(
                        zip(documents, vectors, strict=True), start=1):
                    connection.execute(
                        "INSERT INTO documents (id, doc_id, title, text) VALUES (?, ?, ?, ?)",
                        (rowid, document.doc_id, document.title, document.text))
                    connection.execute(
                        "INSERT INTO embeddings (rowid, embedding) VALUES (?, ?)",
                        (rowid, np.ascontiguousarray(vector, dtype=np.float32).tobytes()))
        except apsw.ConstraintError as exc:
            raise RetrievalError(f"vector store {path}: two documents share an id: {exc}") \
                from exc
        finally:
            connection.close()
        return cls(directory, embedder, name=name)

    @classmethod
    def open(cls, directory: Path, *, name: str = "vector") -> VectorStore:
        """A store :meth:`build` wrote into ``directory``."""
        if not (directory / DATABASE_FILE).exists():
            raise RetrievalError(f"vector store: no {DATABASE_FILE} in {directory}")
        return cls(directory, LsaEmbedder.load(directory), name=name)

    def _connection(self) -> apsw.Connection:
        connection: apsw.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = _connect(self.directory / DATABASE_FILE, readonly=True)
            self._local.connection = connection
        return connection

    def count(self) -> int:
        """How many documents are indexed."""
        row: Any = self._connection().execute("SELECT count(*) FROM documents").fetchone()
        return int(row[0])

    def documents(self, doc_ids: Sequence[str]) -> dict[str, Document]:
        """The indexed documents with these ids (unknown ids are left out)."""
        if not doc_ids:
            return {}
        marks = ", ".join("?" for _ in doc_ids)  # placeholders only: ids stay parameters
        rows = self._connection().execute(
            f"SELECT doc_id, title, text FROM documents WHERE doc_id IN ({marks})",
            tuple(str(d) for d in doc_ids)).fetchall()
        return {str(d): Document(doc_id=str(d), title=str(t), text=str(x)) for d, t, x in rows}

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The ``k`` documents nearest to ``query``; score = cosine similarity."""
        if k <= 0:
            return []
        vector = self.embedder.embed([query])[0]
        if not vector.any():
            return []  # no known word: every distance would be a tie
        rows = self._connection().execute(
            "SELECT d.doc_id, d.title, d.text, e.distance FROM embeddings AS e "
            "JOIN documents AS d ON d.id = e.rowid "
            "WHERE e.embedding MATCH ? AND k = ? ORDER BY e.distance, d.doc_id",
            (vector.astype(np.float32).tobytes(), int(k))).fetchall()
        return [Hit(doc_id=str(doc_id), score=1.0 - cast(float, distance), source=self.name,
                    rank=rank, text=str(text), title=str(title))
                for rank, (doc_id, title, text, distance) in enumerate(rows, start=1)]


def _indexed_text(document: Document) -> str:
    return f"{document.title}. {document.text}" if document.title else document.text
