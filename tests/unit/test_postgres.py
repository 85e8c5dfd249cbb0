"""The store on real PostgreSQL (a throwaway cluster): its schema follows SQLite's migrations, every named
query says itself there, driver errors become the engine's, and a commit in one daemon's store wakes the
waiters of another's (NOTIFY). The rest of the suite runs on it too: `AGENTDOCK_TEST_STORE=postgres`."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import anyio
import pytest

from engine import errors, topics
from engine.dialect import postgres
from engine.postgres import PostgresStore
from engine.postgres import migrations as pg_migrations
from engine.store import SQL, Store, migrations
from tests.unit.test_store import run_row

pytestmark = pytest.mark.anyio
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
"""The time `run_row` stamps its runs with."""


@pytest.fixture
async def store(pg_url):
    async with PostgresStore(pg_url) as s:
        yield s


def test_sqlites_words_become_postgresqls():
    assert postgres("SELECT * FROM t WHERE a = ? AND b = ?") == "SELECT * FROM t WHERE a = %s AND b = %s"
    assert postgres("UPDATE t SET a = :a WHERE id = :id") == "UPDATE t SET a = %(a)s WHERE id = %(id)s"
    # quoted text keeps its ? and :, and a literal % doubles for psycopg
    assert postgres("SELECT 'a?:b', \"x:y\" FROM t WHERE n LIKE '50%' AND m = ?") == (
        "SELECT 'a?:b', \"x:y\" FROM t WHERE n LIKE '50%%' AND m = %s")
    assert postgres("SELECT 'it''s ?' , ?") == "SELECT 'it''s ?' , %s"
    assert postgres("SELECT group_concat(text, '') FROM c") == "SELECT string_agg(text, '') FROM c"
    assert postgres("SELECT sum(length(CAST(x.payload AS BLOB)) + length(CAST(x.m AS BLOB)))") == (
        "SELECT sum(octet_length(x.payload) + octet_length(x.m))")
    # row locks SQLite has no need of (its one writer), written as comments
    assert postgres("SELECT id FROM t ORDER BY id LIMIT 1 /*FOR UPDATE SKIP LOCKED*/") == (
        "SELECT id FROM t ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED")
    assert postgres("SELECT 1 FROM s WHERE id = ? /*FOR SHARE*/") == "SELECT 1 FROM s WHERE id = %s FOR SHARE"
    # a parameter the server binds but could not type from its use alone
    assert postgres("SELECT * FROM t WHERE (:ws IS NULL OR ws = :ws) AND ? is not null") == (
        "SELECT * FROM t WHERE (%(ws)s::text IS NULL OR ws = %(ws)s) AND %s::text is not null")


async def test_the_postgresql_schema_is_at_sqlites_latest_version_with_the_same_columns(store, tmp_path):
    assert pg_migrations()[-1][0] == migrations()[-1][0], "a SQLite migration needs its PostgreSQL form"
    assert await store.migrate() == migrations()[-1][0]
    async with Store(tmp_path / "db.sqlite") as lite:
        tables = {name for name, sql in (await lite.schema()).items() if sql.startswith("CREATE TABLE")}
        expected = {t: {r["name"] for r in await lite._all(f"SELECT name FROM pragma_table_info('{t}')")}
                    for t in tables}
    found = await store._all("SELECT table_name, column_name FROM information_schema.columns "
                             "WHERE table_schema = current_schema() AND table_name != 'schema_migrations'")
    columns: dict[str, set[str]] = {}
    for r in found:
        columns.setdefault(r["table_name"], set()).add(r["column_name"])
    assert {t: c - {"rowid"} for t, c in columns.items()} == expected


async def test_every_named_query_explains_on_postgresql(store):
    for name, sql in SQL.items():
        params = re.findall(r":(\w+)", sql)
        args = {p: None for p in params} if params else (None,) * sql.count("?")
        try:
            await store._writer.execute(f"EXPLAIN {sql}", args)
        except Exception as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"query {name!r} does not fit the PostgreSQL schema: {exc}")


async def test_two_daemons_starting_at_once_migrate_once_and_reopening_applies_nothing(pg_url):
    async def open_one() -> None:
        async with PostgresStore(pg_url) as s:
            assert await s.migrate() == migrations()[-1][0]

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(open_one)
    async with PostgresStore(pg_url) as s:
        applied = await s._all("SELECT version FROM schema_migrations")
    assert [r["version"] for r in applied] == [v for v, _ in pg_migrations()], "each applied once"


async def test_rows_read_like_sqlites_and_a_taken_key_is_a_conflict(store):
    async with store.write(NOW) as tx:
        await tx.runs.insert_run(run_row("run_a", idempotency_key="k"))
        assert await tx.append_events("run_a", [("run_queued", "queued", {"n": 1})]) == [1]
    row = await store.runs.run("run_a")
    assert (row.status, row.ephemeral, row.timeout, row.created_at) == ("queued", False, 60, NOW)
    assert [(e.sequence, e.payload) for e in await store.events("run:run_a", 0, 10, budget=10_000)] == [(1, {"n": 1})]
    with pytest.raises(errors.Conflict):
        async with store.write(NOW) as tx:
            await tx.runs.insert_run(run_row("run_b", idempotency_key="k"))
    assert await store.runs.run("run_b") is None, "the refused transaction left nothing"


async def test_a_commit_in_one_daemons_store_wakes_a_waiter_in_anothers(pg_url):
    async with PostgresStore(pg_url, topics.Topics()) as first, PostgresStore(pg_url, topics.Topics()) as second:
        async with anyio.create_task_group() as tg:
            await tg.start(second.serve)
            woken = second.topics.watch(topics.run("run_a"))
            async with first.write(NOW) as tx:
                await tx.runs.insert_run(run_row("run_a"))
                await tx.append_events("run_a", [("run_queued", "queued", {})])
            with anyio.fail_after(10):
                await woken.wait()
            assert [e.type for e in await second.events("run:run_a", 0, 10)] == ["run_queued"]
            tg.cancel_scope.cancel()


async def test_an_unreachable_database_is_a_diagnostic_not_a_traceback(tmp_path):
    with pytest.raises(errors.EngineError) as caught:
        async with PostgresStore(f"postgresql://postgres@/nope?host={tmp_path}&connect_timeout=2"):
            pass
    assert "AGENTDOCK_DATABASE_URL" in caught.value.message


def test_a_settings_database_url_must_be_postgresql(tmp_path):
    from engine.settings import Settings

    with pytest.raises(errors.InvalidInput) as caught:
        Settings.load(home=tmp_path, database_url="mysql://x")
    assert "AGENTDOCK_DATABASE_URL" in caught.value.message
    assert Settings.load(home=tmp_path, database_url="postgresql:///db").database_url == "postgresql:///db"
