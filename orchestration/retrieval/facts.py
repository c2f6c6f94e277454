"""SQL facts: a ``(subject, attribute, value)`` table in SQLite or PostgreSQL.

A question is linked to the subjects it names (their names and aliases, kept in a
second table), and those subjects' facts are read with bound parameters, never with
SQL built from the question: a question is data, whatever quotes it holds. Table names
cannot be parameters, so they are checked against a strict pattern when the store is
made. Facts are ranked by how many of the question's words their attribute (and its
keywords) share.

::

    store = FactStore(create_engine("sqlite:///facts.db"))   # or the results DB's engine
    store.load(facts, aliases={"Business": "plan-business"})
    store.lookup("plan-business", "monthly_price_usd")        # -> [Fact]
    store.search("How much is the Business plan a month?")    # -> [Hit]
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Column, Engine, MetaData, String, Table, Text, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from orchestration.errors import RetrievalError
from orchestration.retrieval.documents import Hit
from orchestration.retrieval.text import Mentions, terms

TABLE_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")
SUBJECT_WEIGHT: Final = 1.0  # a fact of a named subject, before its attribute matches
TERM_WEIGHT: Final = 1.0  # each question word the attribute or its keywords share
FACTS_SHOWN: Final = 3  # facts quoted in a hit's text


@dataclass(frozen=True, slots=True)
class Fact:
    """One fact: ``subject`` has ``attribute`` = ``value``, stated in document ``doc_id``.

    ``keywords`` are other words for the attribute that questions use (``"cost price"``).
    """

    subject: str
    attribute: str
    value: str
    doc_id: str
    keywords: str = ""

    @property
    def fact_id(self) -> str:
        """The fact's key: one value per subject and attribute."""
        return f"{self.subject}/{self.attribute}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fact:
        """From ``{"subject", "attribute", "value", "doc_id", "keywords"?}``."""
        return cls(subject=str(data["subject"]), attribute=str(data["attribute"]),
                   value=str(data["value"]), doc_id=str(data["doc_id"]),
                   keywords=str(data.get("keywords") or ""))

    def sentence(self) -> str:
        """The fact as a line of text: ``plan-business monthly price usd: 499``."""
        return f"{self.subject} {self.attribute.replace('_', ' ')}: {self.value}"


class FactStore:
    """Facts in table ``table`` (and aliases in ``<table>_aliases``) of ``engine``.

    ``create()`` makes the tables if missing (``<table>_meta`` holds the loaded version);
    ``load()`` upserts; ``ensure()`` replaces everything when the version differs. Any
    SQLAlchemy engine works; the workflow in ``tasks/rag`` uses SQLite, or the results database's
    engine when that is PostgreSQL.
    """

    def __init__(self, engine: Engine, *, table: str = "rag_facts", name: str = "sql") -> None:
        if not isinstance(table, str) or not TABLE_NAME.match(table):
            raise RetrievalError(f"fact store: table name {table!r} is not allowed (lower-case "
                                 "letters, digits and _, starting with a letter or _)")
        self.engine = engine
        self.name = name
        metadata = MetaData()
        self.facts = Table(
            table, metadata,
            Column("fact_id", String(400), primary_key=True),
            Column("subject", String(200), nullable=False, index=True),
            Column("attribute", String(200), nullable=False),
            Column("value", Text, nullable=False),
            Column("doc_id", String(200), nullable=False),
            Column("keywords", Text, nullable=False, default=""),
        )
        self.aliases = Table(
            f"{table}_aliases", metadata,
            Column("alias", String(200), primary_key=True),
            Column("subject", String(200), nullable=False),
        )
        self.meta = Table(
            f"{table}_meta", metadata,
            Column("key", String(100), primary_key=True),
            Column("value", Text, nullable=False),
        )
        self._metadata = metadata
        self._mentions: Mentions | None = None
        self._lock = threading.Lock()

    def create(self) -> None:
        """Create the tables if they do not exist (safe to race from several processes)."""
        try:
            self._metadata.create_all(self.engine, checkfirst=True)
        except SQLAlchemyError:
            # Another process created them between the check and the CREATE.
            self._metadata.create_all(self.engine, checkfirst=True)

    def load(self, facts: Iterable[Fact], aliases: Mapping[str, str] | None = None) -> int:
        """Insert or replace ``facts`` and ``{alias: subject}``; returns the facts written."""
        rows = [{"fact_id": f.fact_id, "subject": f.subject, "attribute": f.attribute,
                 "value": f.value, "doc_id": f.doc_id, "keywords": f.keywords} for f in facts]
        alias_rows = self._alias_rows(rows, aliases)
        self.create()
        with self.engine.begin() as connection:
            for table, key, batch in ((self.facts, "fact_id", rows),
                                      (self.aliases, "alias", alias_rows)):
                if batch:
                    connection.execute(self._upsert(table, key), batch)
        with self._lock:
            self._mentions = None
        return len(rows)

    def ensure(self, facts: Iterable[Fact], aliases: Mapping[str, str] | None,
               version: str) -> bool:
        """Make the table hold exactly ``facts`` at ``version``; False if it already did.

        Replaces every fact and alias in one transaction, under a row lock on the version
        (several processes starting at once load it once, and a reader never sees half).
        """
        rows = [{"fact_id": f.fact_id, "subject": f.subject, "attribute": f.attribute,
                 "value": f.value, "doc_id": f.doc_id, "keywords": f.keywords} for f in facts]
        self.create()
        with self.engine.begin() as connection:
            connection.execute(self._insert(self.meta).on_conflict_do_nothing(
                index_elements=["key"]), {"key": "version", "value": ""})
            current = connection.execute(
                select(self.meta.c.value).where(self.meta.c.key == "version")
                .with_for_update()).scalar_one()
            if current == version:
                return False
            connection.execute(delete(self.facts))
            connection.execute(delete(self.aliases))
            if rows:
                connection.execute(self.facts.insert(), rows)
            alias_rows = self._alias_rows(rows, aliases)
            if alias_rows:
                connection.execute(self.aliases.insert(), alias_rows)
            connection.execute(update(self.meta).where(self.meta.c.key == "version")
                               .values(value=version))
        with self._lock:
            self._mentions = None
        return True

    @staticmethod
    def _alias_rows(rows: list[dict[str, str]], aliases: Mapping[str, str] | None
                    ) -> list[dict[str, str]]:
        given = dict(aliases or {})
        for subject in sorted({row["subject"] for row in rows}):
            given.setdefault(subject, subject)
        return [{"alias": alias, "subject": subject} for alias, subject in given.items()]

    def _insert(self, table: Table) -> Any:
        dialect = self.engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise RetrievalError(f"fact store: dialect {dialect!r} is not supported "
                                 "(SQLite or PostgreSQL)")
        return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)

    def _upsert(self, table: Table, key: str) -> Any:
        insert = self._insert(table)
        updated = {column.name: insert.excluded[column.name]
                   for column in table.columns if column.name != key}
        return insert.on_conflict_do_update(index_elements=[key], set_=updated)

    def count(self) -> int:
        """How many facts the table holds."""
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(self.facts))
                       .scalar_one())

    def lookup(self, subject: str, attribute: str | None = None) -> list[Fact]:
        """The facts of ``subject`` (only ``attribute``'s, if given), by attribute."""
        query = select(self.facts).where(self.facts.c.subject == subject)
        if attribute is not None:
            query = query.where(self.facts.c.attribute == attribute)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(self.facts.c.attribute)).mappings().all()
        return [Fact.from_dict(dict(row)) for row in rows]

    def subjects_in(self, question: str) -> list[str]:
        """The subjects ``question`` names, by name or alias."""
        return self._known().find(question)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """Documents stating facts about the subjects ``query`` names, best first."""
        subjects = self.subjects_in(query)
        if not subjects or k <= 0:
            return []
        statement = select(self.facts).where(self.facts.c.subject.in_(subjects))
        with self.engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        wanted = terms(query)
        scored: dict[str, float] = defaultdict(float)
        shown: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for row in rows:
            fact = Fact.from_dict(dict(row))
            overlap = len(wanted & terms(f"{fact.attribute.replace('_', ' ')} {fact.keywords}"))
            score = SUBJECT_WEIGHT + TERM_WEIGHT * overlap
            scored[fact.doc_id] = max(scored[fact.doc_id], score)
            shown[fact.doc_id].append((score, fact.sentence()))
        order = sorted(scored.items(), key=lambda item: (-item[1], item[0]))[:k]
        return [Hit(doc_id=doc_id, score=score, source=self.name, rank=rank,
                    text="; ".join(text for _, text in sorted(
                        shown[doc_id], key=lambda item: (-item[0], item[1]))[:FACTS_SHOWN]))
                for rank, (doc_id, score) in enumerate(order, start=1)]

    def _known(self) -> Mentions:
        with self._lock:
            if self._mentions is None:
                with self.engine.connect() as connection:
                    pairs = connection.execute(
                        select(self.aliases.c.alias, self.aliases.c.subject)).all()
                self._mentions = Mentions({str(alias): str(subject) for alias, subject in pairs})
            return self._mentions
