"""The store on real SQLite: migrations, the queries the code names, events and idempotency keys."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import anyio
import pytest

from engine.runs import models as rm
from engine.store import SQL, Store, migrations

pytestmark = pytest.mark.anyio
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path):
    async with Store(tmp_path / "db.sqlite") as s:
        yield s


def run_row(run_id: str, **kw):
    row = {"id": run_id, "target_kind": "sandbox", "target_id": "sbx_1", "provider": "custom", "prompt": "p",
           "command": "true", "model": None, "cwd": "/workspace", "timeout": 60, "metadata": {}, "env": {},
           "status": "queued", "ephemeral": False, "idempotency_key": None, "request_hash": "h",
           "created_at": NOW, "updated_at": NOW, "created_by": "ses_root"}
    return {**row, **kw}


async def test_migrations_bring_a_new_database_to_the_latest_version(store):
    cur = await store._writer.execute("PRAGMA user_version")
    assert (await cur.fetchone())[0] == migrations()[-1][0]


async def test_every_named_query_compiles_against_the_migrated_schema(store):
    for name, sql in SQL.items():
        params = re.findall(r":(\w+)", sql)
        args = {p: None for p in params} if params else (None,) * sql.count("?")
        try:
            await store._writer.execute(f"EXPLAIN {sql}", args)
        except Exception as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"query {name!r} does not fit the schema: {exc}")


async def test_reopening_an_existing_database_applies_nothing_twice(tmp_path):
    async with Store(tmp_path / "db.sqlite") as s:
        before = await s.schema()
    async with Store(tmp_path / "db.sqlite") as s:
        assert await s.migrate() == migrations()[-1][0]
        assert await s.schema() == before


async def test_migrated_schema_has_the_columns_the_run_record_needs(store):
    cur = await store._writer.execute("SELECT name FROM pragma_table_info('agent_runs')")
    columns = {r[0] for r in await cur.fetchall()}
    needed = set(rm.Run.model_fields) - {"env_keys", "output_omitted"}
    assert needed <= columns, needed - columns


async def test_events_get_gapless_sequences_per_run_even_when_appended_concurrently(store):
    async with store.write(NOW) as tx:
        await tx.runs.insert_run(run_row("run_a"))
        await tx.runs.insert_run(run_row("run_b"))

    async def append(run_id: str) -> None:
        for i in range(20):
            async with store.write(NOW) as tx:
                await tx.append_events(run_id, [("output", "", {"i": i}), ("stderr", "", {"i": i})])

    async with anyio.create_task_group() as tg:
        tg.start_soon(append, "run_a")
        tg.start_soon(append, "run_b")
        tg.start_soon(append, "run_a")
    a = await store.events("run:run_a", 0, 1000)
    assert [e.sequence for e in a] == list(range(1, 81))
    assert [e.sequence for e in await store.events("run:run_b", 0, 1000)] == list(range(1, 41))
    assert [e.sequence for e in await store.events("run:run_a", 75, 1000)] == [76, 77, 78, 79, 80]


async def test_a_failed_transaction_leaves_nothing_behind(store):
    with pytest.raises(RuntimeError):
        async with store.write(NOW) as tx:
            await tx.runs.insert_run(run_row("run_x"))
            await tx.append_events("run_x", [("run_queued", "", {})])
            raise RuntimeError("boom")
    assert await store.runs.run("run_x") is None
    assert await store.events("run:run_x", 0, 10) == []


async def test_a_cancelled_writer_still_commits_what_it_began(store):
    with anyio.CancelScope() as scope:
        async with store.write(NOW) as tx:
            scope.cancel()
            await tx.runs.insert_run(run_row("run_c"))
            await anyio.sleep(0)  # a checkpoint inside the shielded transaction
    assert (await store.runs.run("run_c")).id == "run_c"


async def test_an_idempotency_key_holds_one_run_per_caller_and_each_caller_has_its_own(store):
    async with store.write(NOW) as tx:
        await tx.runs.insert_run(run_row("run_1", idempotency_key="k"))
    with pytest.raises(Exception, match="UNIQUE"):
        async with store.write(NOW) as tx:
            await tx.runs.insert_run(run_row("run_2", idempotency_key="k"))
    async with store.write(NOW) as tx:
        await tx.runs.insert_run(run_row("run_3", idempotency_key="k", created_by="ses_other"))
    assert (await store.runs.run_by_idempotency_key("ses_root", "k")).id == "run_1"
    assert (await store.runs.run_by_idempotency_key("ses_other", "k")).id == "run_3"


async def test_run_list_pages_newest_first_without_repeats(store):
    async with store.write(NOW) as tx:
        for i in range(7):
            await tx.runs.insert_run(run_row(f"run_{i:020x}", created_at=NOW.replace(minute=i)))
    seen, cursor = [], None
    while True:
        rows = await store.runs.list(rm.RunListQuery(limit=3, cursor=cursor))
        page = rows[:3]
        seen += [r.id for r in page]
        if len(rows) <= 3:
            break
        cursor = page[-1].id
    assert seen == [f"run_{i:020x}" for i in reversed(range(7))]


async def test_a_read_right_after_a_write_sees_it_while_other_reads_run(store):
    """Reads share one connection; one must never join another's older snapshot."""
    stop = anyio.Event()

    async def busy_reader() -> None:
        while not stop.is_set():
            await store.runs.list(rm.RunListQuery(limit=200))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(busy_reader)
        for i in range(150):
            async with store.write(NOW) as tx:
                await tx.runs.insert_run(run_row(f"run_{i}"))
            assert await store.runs.run(f"run_{i}") is not None, f"run_{i} was committed but not read back"
        stop.set()


async def test_migrating_a_version_1_database_keeps_its_runs_and_events_and_scopes_their_keys(tmp_path):
    import aiosqlite

    path = tmp_path / "old.sqlite"
    (version, script), *_ = migrations()
    async with aiosqlite.connect(path) as db:
        await db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
        await db.execute("INSERT INTO agent_runs (id, target_kind, target_id, provider, prompt, cwd, timeout, status, "
                         "idempotency_key, created_at, updated_at) VALUES ('run_old', 'sandbox', 'sbx_1', 'custom', "
                         "'p', '/workspace', 60, 'succeeded', 'k', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')")
        await db.execute("INSERT INTO run_events (id, run_id, sequence, type, created_at) "
                         "VALUES ('ev_1', 'run_old', 1, 'run_queued', '2026-01-01T00:00:00.000000Z')")
        await db.commit()

    async with Store(path) as s:
        row = await s.runs.run("run_old")
        assert (row.status, row.created_by) == ("succeeded", "ses_root")
        assert [e.type for e in await s.events("run:run_old", 0, 10)] == ["run_queued"]
        assert (await s.runs.run_by_idempotency_key("ses_root", "k")).id == "run_old"
        fks = await s._writer.execute_fetchall("PRAGMA foreign_keys")
        assert list(fks)[0][0] == 1


async def test_an_event_in_a_run_and_its_group_gets_a_gapless_sequence_in_each_stream(store):
    async with store.write(NOW) as tx:
        await tx.runs.insert_run(run_row("run_a"))
        await tx.runs.insert_run(run_row("run_b"))

    async def append(run_id: str) -> None:
        for i in range(10):
            async with store.write(NOW) as tx:
                await tx.append_events(run_id, [("output", "", {"i": i}), ("stderr", "", {"i": i})], group_id="grp_1")

    async with anyio.create_task_group() as tg:
        tg.start_soon(append, "run_a")
        tg.start_soon(append, "run_b")
    group = await store.events("group:grp_1", 0, 1000)
    assert [e.sequence for e in group] == list(range(1, 41))
    for run_id in ("run_a", "run_b"):
        own = await store.events(f"run:{run_id}", 0, 1000)
        assert [e.sequence for e in own] == list(range(1, 21))
        assert {e.id for e in own} <= {e.id for e in group}  # one event, two streams
        assert all(e.group_id == "grp_1" and e.run_id == run_id for e in own)


async def test_a_write_waits_for_another_process_lock_without_holding_up_the_event_loop(store):
    """The writer runs on the loop's thread, so a locked database is waited for with anyio.sleep."""
    import sqlite3

    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    committed = anyio.Event()

    async def writer() -> None:
        async with store.write(NOW) as tx:
            await tx.runs.insert_run(run_row("run_w"))
        committed.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            for _ in range(20):  # the loop keeps turning while the write waits
                await anyio.sleep(0.005)
            assert not committed.is_set()
            other.execute("COMMIT")
            with anyio.fail_after(10):
                await committed.wait()
    finally:
        other.close()
    assert (await store.runs.run("run_w")).id == "run_w"


async def test_a_write_blocked_past_the_busy_wait_is_refused_as_busy(store, monkeypatch):
    import sqlite3

    from engine import errors, store as store_module

    monkeypatch.setattr(store_module, "BUSY_WAIT_SECONDS", 0.05)
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(errors.Busy):
            async with store.write(NOW) as tx:
                await tx.runs.insert_run(run_row("run_b"))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await store.runs.run("run_b") is None


async def test_the_wal_is_checkpointed_into_the_database_file_as_commits_go(tmp_path, monkeypatch):
    """The writer's automatic checkpoints are off (they would run on the loop); the store runs them."""
    import shutil
    import sqlite3

    from engine import store as store_module

    monkeypatch.setattr(store_module, "CHECKPOINT_EVERY", 5)
    async with Store(tmp_path / "db.sqlite") as s:
        for i in range(5):
            async with s.write(NOW) as tx:
                await tx.runs.insert_run(run_row(f"run_{i}"))
        shutil.copy(tmp_path / "db.sqlite", tmp_path / "copy.sqlite")  # the main file alone, no WAL
    copy = sqlite3.connect(tmp_path / "copy.sqlite")
    try:
        assert copy.execute("SELECT count(*) FROM agent_runs").fetchone()[0] == 5
    finally:
        copy.close()
