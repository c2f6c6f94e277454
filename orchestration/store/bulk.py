"""Many rows in one statement: ``COPY ... FROM STDIN`` on PostgreSQL, executemany elsewhere.

``submit_many`` writes a run row and a row per step for every run: 5,000 runs of a 4-step
workflow are 25,000 rows. psycopg's ``executemany`` sends them as 25,000 INSERTs through
its pipeline; ``COPY`` streams them as one statement (bench/README.md, "round two").
COPY bypasses SQLAlchemy's Python-side column defaults, so callers give every column
whose default is not the server's. It runs on the caller's connection, inside its
transaction: the rows commit, or roll back, with everything else the transaction writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, Connection, Table, insert


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys) into ``table`` in ``conn``'s transaction."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(insert(table), list(rows))
        return
    from psycopg import sql

    columns = list(rows[0])
    # JSON columns as SQLAlchemy writes them: None is JSON null unless none_as_null.
    json_columns = {name: bool(getattr(table.c[name].type, "none_as_null", False))
                    for name in columns if isinstance(table.c[name].type, JSON)}
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns)))
    raw: Any = conn.connection.dbapi_connection  # psycopg's: this transaction's connection
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row([_json(row[name], json_columns[name]) if name in json_columns
                            else row[name] for name in columns])


def _json(value: Any, none_as_null: bool) -> Any:
    from psycopg.types.json import Jsonb

    return None if value is None and none_as_null else Jsonb(value)
