"""A test's look at what the store holds, whichever store the settings name (the SQLite file, or the
PostgreSQL database of AGENTDOCK_DATABASE_URL): plain SQL in SQLite's words, outside the engine."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg

from engine.dialect import postgres
from engine.settings import Settings
from tests import pgcluster


def database_url(settings: Settings) -> str | None:
    """The PostgreSQL database the settings' engine uses (None: the home's SQLite file)."""
    if settings.database_url:
        return settings.database_url
    return pgcluster.HOMES.url(settings.home) if pgcluster.HOMES else None


def rows(settings: Settings, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """Every row of `sql`, as tuples; a statement that writes is committed."""
    url = database_url(settings)
    if url:
        with psycopg.connect(url, autocommit=True,
                             cursor_factory=psycopg.ClientCursor) as db:
            cur = db.execute(postgres(sql), params)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []
    with sqlite3.connect(settings.db_path) as db:
        return [tuple(r) for r in db.execute(sql, params).fetchall()]


def count(settings: Settings, sql: str, params: Any = ()) -> int:
    """The first column of the first row (`SELECT count(*) ...`)."""
    return int(rows(settings, sql, params)[0][0])


def columns(settings: Settings, table: str) -> set[str]:
    """The names of a table's columns."""
    if database_url(settings):
        return {r[0] for r in rows(settings, "SELECT column_name FROM information_schema.columns "
                                             "WHERE table_schema = current_schema() AND table_name = ?", (table,))}
    return {r[0] for r in rows(settings, f"SELECT name FROM pragma_table_info('{table}')")}


def text_of(settings: Settings, table: str) -> str:
    """Everything a table holds, as text (to show a value is stored nowhere in it)."""
    if database_url(settings):
        return " ".join(str(r[0]) for r in rows(settings, f"SELECT t::text FROM {table} t"))
    return settings.db_path.read_bytes().decode(errors="replace")
