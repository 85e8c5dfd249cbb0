"""The store's SQL and operations for runs (mixed into `store.Tx` and `store.Store`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from engine import models, topics
from engine.runs import models as rm
from engine.runs.models import ArtifactRow, RunRow
from engine.devices.models import Shape
from engine.sqlvalues import Connected, Reading, encode

_KEPT = (
    "{t}.output || COALESCE((SELECT group_concat(text, '') FROM (SELECT text FROM output_chunks c "
    "WHERE c.run_id = {t}.id AND c.stream = 'stdout' ORDER BY c.seq) AS kept), '') AS output, "
    "{t}.stderr || COALESCE((SELECT group_concat(text, '') FROM (SELECT text FROM output_chunks c "
    "WHERE c.run_id = {t}.id AND c.stream = 'stderr' ORDER BY c.seq) AS kept), '') AS stderr"
)

RUN_COLUMNS = (
    "agent_runs.id, target_kind, target_id, provider, prompt, command, model, cwd, timeout, metadata, env, secrets, "
    "status, " + _KEPT.format(t="agent_runs") + ", output_truncated, stderr_truncated, stdout_offset, "
    "stderr_offset, exit_code, failure_kind, error, pids_peak, memory_peak_bytes, model_requests, input_tokens, "
    "output_tokens, ephemeral, cancel_requested, "
    "agent_run_group_id, "
    "orchestration_role, parent_agent_run_id, profile_id, profile_snapshot, workspace_id, idempotency_key, "
    "request_hash, started_at, "
    "finished_at, created_at, updated_at, created_by, daemon_id"
)

# A run list weighs each run of its page by its output and stderr (what can be a MiB each) and carries
# them only while the page's running total is within its byte budget; past it they are left out.
_BODY_SIZE = (
    "length(CAST(r.output AS BLOB)) + length(CAST(r.stderr AS BLOB)) + COALESCE((SELECT sum(length(CAST(c.text AS "
    "BLOB))) FROM output_chunks c WHERE c.run_id = r.id), 0)"
)

_LISTED = RUN_COLUMNS.replace(
    _KEPT.format(t="agent_runs"),
    "CASE WHEN w.running <= :budget THEN agent_runs.output || COALESCE((SELECT group_concat(text, '') FROM (SELECT "
    "text FROM output_chunks c WHERE c.run_id = agent_runs.id AND c.stream = 'stdout' ORDER BY c.seq) AS kept), '') ELSE '' "
    "END AS output, CASE WHEN w.running <= :budget THEN agent_runs.stderr || COALESCE((SELECT group_concat(text, '') "
    "FROM (SELECT text FROM output_chunks c WHERE c.run_id = agent_runs.id AND c.stream = 'stderr' ORDER BY c.seq) AS kept), "
    "'') ELSE '' END AS stderr, w.running > :budget AS output_omitted")

_SUMMARY = RUN_COLUMNS.replace(_KEPT.format(t="agent_runs"), "'' AS output, '' AS stderr, 1 AS output_omitted")

assert _LISTED != RUN_COLUMNS and _SUMMARY != RUN_COLUMNS

# Columns a run update may set (a guard against building SQL from arbitrary keys).
RUN_UPDATABLE = frozenset(
    "status output stderr output_truncated stderr_truncated stdout_offset stderr_offset exit_code "
    "failure_kind error cancel_requested started_at finished_at target_id pids_peak memory_peak_bytes daemon_id".split()
)

class Queued(NamedTuple):
    """What admission needs of a queued run."""

    id: str
    target_id: str
    group_id: str | None
    created_by: str = "ses_root"
    shape: Shape | None = None
    """The shape of its ephemeral sandbox when a pooled device could serve it (no network)."""
    ephemeral: bool = False

def _chunks(items: list[str], size: int = 500) -> list[list[str]]:
    """`items` in pieces small enough for one `IN (...)` each."""
    return [items[i:i + size] for i in range(0, len(items), size)]

SQL = {
    "run_insert": (
        "INSERT INTO agent_runs (id, target_kind, target_id, provider, prompt, command, model, cwd, timeout, "
        "metadata, env, secrets, status, ephemeral, idempotency_key, request_hash, created_at, updated_at, created_by, "
        "profile_id, profile_snapshot, workspace_id) "
        "VALUES (:id, :target_kind, :target_id, :provider, :prompt, :command, :model, :cwd, :timeout, "
        ":metadata, :env, :secrets, :status, :ephemeral, :idempotency_key, :request_hash, :created_at, :updated_at, "
        ":created_by, :profile_id, :profile_snapshot, :workspace_id)"
    ),
    "run_get": f"SELECT {RUN_COLUMNS} FROM agent_runs WHERE id = ?",
    "run_grant": "SELECT status, secrets, agent_run_group_id FROM agent_runs WHERE id = ?",
    "run_cancel_state": "SELECT status, cancel_requested, daemon_id FROM agent_runs WHERE id = ?",
    "run_model_usage": (
        "UPDATE agent_runs SET model_requests = model_requests + 1, input_tokens = input_tokens + :input_tokens, "
        "output_tokens = output_tokens + :output_tokens, updated_at = :now WHERE id = :id"
    ),
    "run_by_idempotency_key": f"SELECT {RUN_COLUMNS} FROM agent_runs WHERE created_by = ? AND idempotency_key = ?",
    # A daemon resumes the runs it started (NULL: started before daemons were recorded, by the one daemon
    # of a SQLite file).
    "runs_unfinished": (
        f"SELECT {RUN_COLUMNS} FROM agent_runs WHERE status IN ('queued', 'running') "
        "AND (daemon_id IS NULL OR daemon_id = ?) ORDER BY rowid"
    ),
    "runs_queued": (
        "SELECT r.id, r.target_id, r.agent_run_group_id, r.created_by, r.ephemeral, d.image, d.cpus, d.memory_mb, d.pids_limit, "
        "d.workspace_mb, d.tmp_mb "
        "FROM agent_runs r LEFT JOIN devices d ON r.ephemeral = 1 AND d.id = r.target_id AND d.deleted_at IS NULL "
        "AND d.kind = 'sandbox' AND d.network = 0 AND d.pool IS NULL "
        "WHERE r.status = 'queued' AND (r.ephemeral = 1 OR EXISTS (SELECT 1 FROM devices o WHERE o.id = r.target_id "
        "AND (o.daemon_id IS NULL OR o.daemon_id = :me))) ORDER BY r.rowid LIMIT :limit"
    ),
    "runs_active_on_target": "SELECT id FROM agent_runs WHERE target_id = ? AND status IN ('queued', 'running')",
    "chunk_insert": (
        "INSERT INTO output_chunks (run_id, stream, seq, text) VALUES (:run_id, :stream, "
        "(SELECT COALESCE(MAX(seq), 0) + 1 FROM output_chunks WHERE run_id = :run_id AND stream = :stream), :text)"
    ),
    "chunks_fold": (
        "UPDATE agent_runs SET "
        "output = output || COALESCE((SELECT group_concat(text, '') FROM (SELECT text FROM output_chunks "
        "WHERE run_id = :id AND stream = 'stdout' ORDER BY seq) AS kept), ''), "
        "stderr = stderr || COALESCE((SELECT group_concat(text, '') FROM (SELECT text FROM output_chunks "
        "WHERE run_id = :id AND stream = 'stderr' ORDER BY seq) AS kept), '') WHERE id = :id"
    ),
    "chunks_delete": "DELETE FROM output_chunks WHERE run_id = ?",
    "artifact_upsert": (
        "INSERT INTO artifacts (run_id, path, size, sha256, stored_as, created_at) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (run_id, path) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256, "
        "stored_as = excluded.stored_as, created_at = excluded.created_at"
    ),
    "artifacts_of_run": "SELECT * FROM artifacts WHERE run_id = ? ORDER BY path",
    "artifact_get": "SELECT * FROM artifacts WHERE run_id = ? AND path = ?",
}


class RunWrites(Connected):
    """Runs in a write transaction (`store.Tx`)."""

    async def insert_run(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["run_insert"], encode({"secrets": [], "profile_id": None,
                                                            "profile_snapshot": None, "workspace_id": None, **row}))
        self.touch(topics.ADMISSION)

    async def update_run(self, run_id: str, **fields: Any) -> None:
        await self._update_run(run_id, None, fields)

    async def transition_run(self, run_id: str, expected: Iterable[models.RunStatus], **fields: Any) -> bool:
        """Compare-and-set: update the run only if its status is one of `expected`; says whether it did."""
        return await self._update_run(run_id, [s.value for s in expected], fields)

    async def _update_run(self, run_id: str, expected: list[str] | None, fields: dict[str, Any]) -> bool:
        bad = set(fields) - RUN_UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {bad}")
        fields["updated_at"] = self.now
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        sql, params = f"UPDATE agent_runs SET {sets} WHERE id = :id", {**fields, "id": run_id}
        if expected is not None:
            sql += " AND status IN (" + ", ".join(f":expected_{i}" for i in range(len(expected))) + ")"
            params.update({f"expected_{i}": s for i, s in enumerate(expected)})
        touched = (topics.run(run_id), topics.ADMISSION) if "status" in fields else (topics.run(run_id),)
        return await self.cas(sql + " RETURNING id", encode(params), *touched) is not None

    async def append_output(self, run_id: str, stream: str, text: str) -> None:
        """Keep more of a run's stdout or stderr: one new chunk, not a rewrite of what is kept."""
        if text:
            await self.conn.execute(SQL["chunk_insert"], {"run_id": run_id, "stream": stream, "text": text})

    async def add_model_usage(self, run_id: str, input_tokens: int, output_tokens: int) -> None:
        """Count one model request of a run, and the tokens its answer reported, onto its record."""
        await self.conn.execute(SQL["run_model_usage"], encode({"id": run_id, "input_tokens": input_tokens,
                                                                "output_tokens": output_tokens, "now": self.now}))
        self.touch(topics.run(run_id))

    async def fold_output(self, run_id: str) -> None:
        """Move a run's chunks into its record (once, when its result is recorded)."""
        await self.conn.execute(SQL["chunks_fold"], {"id": run_id})
        await self.conn.execute(SQL["chunks_delete"], (run_id,))

    async def upsert_artifact(self, run_id: str, path: str, size: int, sha256: str, stored_as: str) -> None:
        await self.conn.execute(SQL["artifact_upsert"], (run_id, path, size, sha256, stored_as, self.stamp))


class RunReads(Reading):
    """Runs as the store reads them (`store.Store`)."""

    async def run(self, run_id: str) -> RunRow | None:
        row = await self._one(SQL["run_get"], (run_id,))
        return RunRow.model_validate(row) if row else None

    async def run_grant(self, run_id: str) -> tuple[models.RunStatus, list[str], str | None] | None:
        """What the gateway checks on each request, without reading the run's output: its status, its
        secrets' names and its group."""
        row = await self._one(SQL["run_grant"], (run_id,))
        if row is None:
            return None
        return models.RunStatus(row["status"]), json.loads(row["secrets"] or "[]"), row["agent_run_group_id"]

    async def run_cancel_state(self, run_id: str) -> tuple[str, bool, str | None] | None:
        """A run's status, whether a cancel was asked, and the daemon that started it (a light read)."""
        row = await self._one(SQL["run_cancel_state"], (run_id,))
        return (row["status"], row["cancel_requested"] is not None, row["daemon_id"]) if row else None

    async def run_by_idempotency_key(self, created_by: str, key: str) -> RunRow | None:
        row = await self._one(SQL["run_by_idempotency_key"], (created_by, key))
        return RunRow.model_validate(row) if row else None

    async def unfinished_runs(self, daemon_id: str) -> list[RunRow]:
        """The runs not yet ended that this daemon started, and those queued."""
        return [RunRow.model_validate(r) for r in await self._all(SQL["runs_unfinished"], (daemon_id,))]

    async def queued_runs(self, limit: int, daemon_id: str) -> list[Queued]:
        """The oldest queued runs this daemon can start (an ephemeral one anywhere; one in an existing
        device only where that device is), in the order they were created."""
        return [Queued(r["id"], r["target_id"], r["agent_run_group_id"], r["created_by"],
                       Shape(r["image"], r["cpus"], r["memory_mb"], r["pids_limit"], r["workspace_mb"], r["tmp_mb"])
                       if r["image"] and r["workspace_mb"] else None, bool(r["ephemeral"]))
                for r in await self._all(SQL["runs_queued"], {"limit": limit, "me": daemon_id})]

    async def active_runs_on(self, target_id: str) -> list[str]:
        return [r["id"] for r in await self._all(SQL["runs_active_on_target"], (target_id,))]

    async def list(self, q: rm.RunListQuery, *, created_by: str | None = None,
                   budget: int = 1 << 62) -> list[RunRow]:
        """Newest first, keyset-paged by (created_at, id); fetches one extra row to know if more follow.
        Output and stderr only while the page's running total of them is within `budget` bytes; past it
        the runs come without them (`output_omitted`), and are never read."""
        where, params = [], {}
        if created_by is not None:
            where.append("created_by = :created_by")
            params["created_by"] = created_by
        if q.target_id:
            where.append("target_id = :target_id")
            params["target_id"] = q.target_id
        if q.status:
            where.append("status = :status")
            params["status"] = q.status.value
        if q.cursor:
            where.append("(created_at, id) < (SELECT created_at, id FROM agent_runs WHERE id = :cursor)")
            params["cursor"] = q.cursor
        page = "SELECT id, created_at FROM agent_runs" + (" WHERE " + " AND ".join(where) if where else "")
        sql = (f"WITH page AS ({page} ORDER BY created_at DESC, id DESC LIMIT :limit), weighed AS (SELECT p.id AS "
               f"wid, p.created_at AS wat, sum({_BODY_SIZE}) OVER (ORDER BY p.created_at DESC, p.id DESC) AS running "
               f"FROM page p JOIN agent_runs r ON r.id = p.id) SELECT {_LISTED} FROM weighed w JOIN agent_runs ON "
               "agent_runs.id = w.wid ORDER BY w.wat DESC, w.wid DESC")
        params |= {"limit": q.limit + 1, "budget": budget}
        return [RunRow.model_validate(r) for r in await self._all(sql, params)]

    async def artifacts(self, run_id: str) -> list[ArtifactRow]:
        return [ArtifactRow.model_validate(r) for r in await self._all(SQL["artifacts_of_run"], (run_id,))]

    async def artifact(self, run_id: str, path: str) -> ArtifactRow | None:
        row = await self._one(SQL["artifact_get"], (run_id, path))
        return ArtifactRow.model_validate(row) if row else None

    async def runs_by_ids(self, run_ids: list[str], *, budget: int | None = None) -> dict[str, RunRow]:
        """The runs by id. With `budget`, output and stderr only of the first runs (in `run_ids`' order)
        whose outputs together are within it; the rest come without (`output_omitted`), never read."""
        carried = set(run_ids)
        if budget is not None:
            sizes: dict[str, int] = {}
            for chunk in _chunks(run_ids):
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT r.id, {_BODY_SIZE} AS size FROM agent_runs r WHERE r.id IN ({marks})"
                sizes.update({r["id"]: r["size"] for r in await self._all(sql, chunk)})
            carried, total = set(), 0
            for run_id in run_ids:
                total += sizes.get(run_id, 0)
                if total > budget:
                    break
                carried.add(run_id)
        found: dict[str, RunRow] = {}
        for columns, ids in ((RUN_COLUMNS, [i for i in run_ids if i in carried]),
                             (_SUMMARY, [i for i in run_ids if i not in carried])):
            for chunk in _chunks(ids):
                sql = f"SELECT {columns} FROM agent_runs WHERE id IN ({', '.join('?' * len(chunk))})"
                found.update({r["id"]: RunRow.model_validate(r) for r in await self._all(sql, chunk)})
        return found
