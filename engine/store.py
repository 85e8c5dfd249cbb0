"""The SQLite store: one writer connection (WAL, BEGIN IMMEDIATE, serialized), one reader, named SQL.

Every state change goes through `Store.write()`, which holds the writer for one transaction and
shields it from cancellation, so a cancelled caller never leaves a half-known state. A transaction
notes the topics it touches; they are published to their waiters once it has committed. Reads
return typed records (`engine.records`); driver errors become the engine's (`Conflict`, `Busy`).

The writer runs on the event loop's own thread (`InlineConnection`): a write transaction here is a
handful of small statements on a WAL database whose commits do not fsync, each a few microseconds,
where a hop to a connection thread per statement costs ten times that and capped the engine at a
few hundred runs a second. What could stall the loop is kept off it: a busy database is waited for
with `anyio.sleep`, not SQLite's busy handler, and the WAL is checkpointed from the reader's thread.
Reads, which may carry a run's whole output, stay on the reader's own thread (aiosqlite).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite
import anyio

from engine import errors, models, topics
from engine.channel_models import ChannelRow, MessageRow
from engine.profile_models import ProfileRow
from engine.task_models import TaskRow, TaskRunRow
from engine.records import (ArtifactRow, DeviceRow, DispatchRow, EntryRow, EventRow, GroupRow, RunRow, SessionRow,
                            SoulSnapshotRow)

_KEPT = (
    "{t}.output || COALESCE((SELECT group_concat(text, '') FROM (SELECT text FROM output_chunks c "
    "WHERE c.run_id = {t}.id AND c.stream = 'stdout' ORDER BY c.seq)), '') AS output, "
    "{t}.stderr || COALESCE((SELECT group_concat(text, '') FROM (SELECT text FROM output_chunks c "
    "WHERE c.run_id = {t}.id AND c.stream = 'stderr' ORDER BY c.seq)), '') AS stderr"
)
RUN_COLUMNS = (
    "agent_runs.id, target_kind, target_id, provider, prompt, command, model, cwd, timeout, metadata, env, secrets, "
    "status, " + _KEPT.format(t="agent_runs") + ", output_truncated, stderr_truncated, stdout_offset, "
    "stderr_offset, exit_code, failure_kind, error, ephemeral, cancel_requested, agent_run_group_id, "
    "orchestration_role, parent_agent_run_id, profile_id, profile_snapshot, workspace_id, idempotency_key, "
    "request_hash, started_at, "
    "finished_at, created_at, updated_at, created_by"
)

SQL = {
    "device_insert": (
        "INSERT INTO devices (id, kind, name, image, cpus, memory_mb, pids_limit, network, env, metadata, "
        "ephemeral, run_id, created_at, updated_at, created_by) "
        "VALUES (:id, :kind, :name, :image, :cpus, :memory_mb, :pids_limit, :network, :env, :metadata, "
        ":ephemeral, :run_id, :created_at, :updated_at, :created_by)"
    ),
    "device_get": "SELECT * FROM devices WHERE id = ? AND deleted_at IS NULL",
    "device_list": "SELECT * FROM devices WHERE deleted_at IS NULL AND ephemeral = 0 ORDER BY created_at, id",
    "device_list_by_creator": (
        "SELECT * FROM devices WHERE deleted_at IS NULL AND ephemeral = 0 AND created_by = ? ORDER BY created_at, id"
    ),
    "device_list_live": "SELECT * FROM devices WHERE deleted_at IS NULL",
    "device_delete": "UPDATE devices SET deleted_at = :now, updated_at = :now WHERE id = :id AND deleted_at IS NULL",
    "run_insert": (
        "INSERT INTO agent_runs (id, target_kind, target_id, provider, prompt, command, model, cwd, timeout, "
        "metadata, env, secrets, status, ephemeral, idempotency_key, request_hash, created_at, updated_at, created_by, "
        "profile_id, profile_snapshot, workspace_id) "
        "VALUES (:id, :target_kind, :target_id, :provider, :prompt, :command, :model, :cwd, :timeout, "
        ":metadata, :env, :secrets, :status, :ephemeral, :idempotency_key, :request_hash, :created_at, :updated_at, "
        ":created_by, :profile_id, :profile_snapshot, :workspace_id)"
    ),
    "run_get": f"SELECT {RUN_COLUMNS} FROM agent_runs WHERE id = ?",
    "run_by_idempotency_key": f"SELECT {RUN_COLUMNS} FROM agent_runs WHERE created_by = ? AND idempotency_key = ?",
    "runs_unfinished": f"SELECT {RUN_COLUMNS} FROM agent_runs WHERE status IN ('queued', 'running') ORDER BY rowid",
    "runs_queued": (
        "SELECT id, target_id, agent_run_group_id FROM agent_runs WHERE status = 'queued' ORDER BY rowid LIMIT ?"
    ),
    "runs_active_on_target": "SELECT id FROM agent_runs WHERE target_id = ? AND status IN ('queued', 'running')",
    "stream_bump": (
        "INSERT INTO streams (name, last_sequence) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET last_sequence = last_sequence + ? RETURNING last_sequence"
    ),
    "event_insert": (
        "INSERT INTO events (id, run_id, group_id, type, message, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
    ),
    "stream_event_insert": "INSERT INTO stream_events (stream, sequence, event_id) VALUES (?, ?, ?)",
    "stream_after": (
        "SELECT e.id, e.run_id, e.group_id, s.sequence, e.type, e.message, e.payload, e.created_at "
        "FROM stream_events s JOIN events e ON e.id = s.event_id "
        "WHERE s.stream = ? AND s.sequence > ? ORDER BY s.sequence LIMIT ?"
    ),
    "chunk_insert": (
        "INSERT INTO output_chunks (run_id, stream, seq, text) VALUES (:run_id, :stream, "
        "(SELECT COALESCE(MAX(seq), 0) + 1 FROM output_chunks WHERE run_id = :run_id AND stream = :stream), :text)"
    ),
    "chunks_fold": (
        "UPDATE agent_runs SET "
        "output = output || COALESCE((SELECT group_concat(text, '') FROM (SELECT text FROM output_chunks "
        "WHERE run_id = :id AND stream = 'stdout' ORDER BY seq)), ''), "
        "stderr = stderr || COALESCE((SELECT group_concat(text, '') FROM (SELECT text FROM output_chunks "
        "WHERE run_id = :id AND stream = 'stderr' ORDER BY seq)), '') WHERE id = :id"
    ),
    "chunks_delete": "DELETE FROM output_chunks WHERE run_id = ?",
    "artifact_upsert": (
        "INSERT OR REPLACE INTO artifacts (run_id, path, size, sha256, stored_as, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)"
    ),
    "artifacts_of_run": "SELECT * FROM artifacts WHERE run_id = ? ORDER BY path",
    "artifact_get": "SELECT * FROM artifacts WHERE run_id = ? AND path = ?",
    "session_insert": (
        "INSERT INTO sessions (id, agent_name, name, token_hash, status, parent_session_id, root_session_id, "
        "spawn_depth, spawn_role, auto_stop_on_parent, permissions, spawn_budget, ttl_expires_at, workspace_id, "
        "run_id, soul_snapshot_id, provider, model, created_by, created_at, updated_at, profile_id, profile_snapshot) "
        "VALUES (:id, :agent_name, "
        ":name, :token_hash, 'active', :parent_session_id, :root_session_id, :spawn_depth, :spawn_role, "
        ":auto_stop_on_parent, :permissions, :spawn_budget, :ttl_expires_at, :workspace_id, :run_id, "
        ":soul_snapshot_id, :provider, :model, :created_by, :created_at, :updated_at, :profile_id, :profile_snapshot)"
    ),
    "session_get": "SELECT * FROM sessions WHERE id = ?",
    "session_by_token": "SELECT * FROM sessions WHERE token_hash = ?",
    "session_end": (
        "UPDATE sessions SET status = :status, stop_reason = :reason, stopped_at = :now, updated_at = :now "
        "WHERE id = :id AND status = 'active'"
    ),
    "session_set_run": "UPDATE sessions SET run_id = :run_id, updated_at = :now WHERE id = :id",
    "sessions_live_children": "SELECT count(*) AS n FROM sessions WHERE parent_session_id = ? AND status = 'active'",
    "sessions_live_in_workspace": "SELECT count(*) AS n FROM sessions WHERE workspace_id = ? AND status = 'active'",
    "sessions_descendants": (
        "WITH RECURSIVE below(id) AS (SELECT id FROM sessions WHERE parent_session_id = :id "
        "UNION SELECT s.id FROM sessions s JOIN below b ON s.parent_session_id = b.id) "
        "SELECT s.* FROM sessions s JOIN below b ON s.id = b.id ORDER BY s.spawn_depth, s.created_at"
    ),
    "sessions_all": "SELECT * FROM sessions ORDER BY created_at, id",
    "sessions_next_expiry": "SELECT min(ttl_expires_at) AS at FROM sessions WHERE status = 'active'",
    "sessions_expired": "SELECT id FROM sessions WHERE status = 'active' AND ttl_expires_at <= ? ORDER BY spawn_depth",
    "runs_unfinished_of": "SELECT id FROM agent_runs WHERE created_by = ? AND status IN ('queued', 'running')",
    "soul_document_insert": "INSERT OR IGNORE INTO soul_documents (digest, content, created_at) VALUES (?, ?, ?)",
    "soul_snapshot_insert": (
        "INSERT INTO soul_snapshots (id, agent_name, digest, source, source_path, document_modified, created_at, "
        "created_by) VALUES (:id, :agent_name, :digest, :source, :source_path, :document_modified, :created_at, "
        ":created_by)"
    ),
    "soul_snapshot_get": (
        "SELECT s.*, d.content FROM soul_snapshots s LEFT JOIN soul_documents d ON d.digest = s.digest WHERE s.id = ?"
    ),
}

ENTRIES = "agent_run_group_entries"
SQL.update({
    "group_insert": (
        "INSERT INTO agent_run_groups (id, name, workspace_id, project_id, concurrency_limit, expected_runs, metadata, "
        "status, idempotency_key, request_hash, created_at, updated_at, created_by) VALUES (:id, :name, "
        ":workspace_id, :project_id, :concurrency_limit, :expected_runs, :metadata, :status, :idempotency_key, "
        ":request_hash, :created_at, :updated_at, :created_by)"
    ),
    "group_get": "SELECT * FROM agent_run_groups WHERE id = ?",
    "group_by_idempotency_key": "SELECT * FROM agent_run_groups WHERE created_by = ? AND idempotency_key = ?",
    "dispatch_insert": (
        "INSERT INTO agent_run_group_dispatches (id, group_id, first_index, count, is_async, idempotency_key, "
        "request_hash, created_at, created_by) VALUES (:id, :group_id, :first_index, :count, :is_async, "
        ":idempotency_key, :request_hash, :created_at, :created_by)"
    ),
    "dispatch_get": "SELECT * FROM agent_run_group_dispatches WHERE id = ?",
    "dispatch_by_idempotency_key": (
        "SELECT * FROM agent_run_group_dispatches WHERE created_by = ? AND idempotency_key = ?"
    ),
    "entry_insert": (
        f"INSERT INTO {ENTRIES} (id, group_id, dispatch_id, position, item_index, status, attempts, request, "
        "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?)"
    ),
    "entry_next_position": f"SELECT COUNT(*) FROM {ENTRIES} WHERE group_id = ?",
    "entries_of_dispatch": f"SELECT * FROM {ENTRIES} WHERE dispatch_id = ? ORDER BY item_index",
    "entries_of_group": f"SELECT * FROM {ENTRIES} WHERE group_id = ? AND position >= ? ORDER BY position LIMIT ?",
    "entries_of_group_by_status": (
        f"SELECT * FROM {ENTRIES} WHERE group_id = ? AND position >= ? AND status = ? ORDER BY position LIMIT ?"
    ),
    "entry_counts": f"SELECT status, COUNT(*) AS n FROM {ENTRIES} WHERE group_id = ? GROUP BY status",
    "group_run_counts": "SELECT status, COUNT(*) AS n FROM agent_runs WHERE agent_run_group_id = ? GROUP BY status",
    # The oldest queued entries each group may start now: at most its concurrency_limit less its running
    # entries, in creation order, never from a group whose cancel was asked for.
    "entries_claimable": (
        "SELECT e.* FROM (SELECT q.*, q.rowid AS rid, ROW_NUMBER() OVER (PARTITION BY q.group_id ORDER BY q.rowid) "
        f"AS n FROM {ENTRIES} q WHERE q.status = 'queued') e JOIN agent_run_groups g ON g.id = e.group_id "
        "WHERE g.cancel_requested IS NULL AND e.n <= g.concurrency_limit - "
        f"(SELECT COUNT(*) FROM {ENTRIES} r WHERE r.group_id = g.id AND r.status = 'running') "
        "ORDER BY e.rid LIMIT ?"
    ),
    # Running entries whose child run has ended: the scheduler settles them (or retries a lost run).
    "entries_to_settle": (
        "SELECT e.*, r.status AS run_status, r.failure_kind AS run_failure_kind "
        f"FROM {ENTRIES} e JOIN agent_runs r ON r.id = e.run_id "
        "WHERE e.status = 'running' AND r.status IN ('succeeded', 'failed', 'canceled') ORDER BY e.rowid LIMIT ?"
    ),
    "entries_cancel_queued": (
        f"UPDATE {ENTRIES} SET status = 'canceled', updated_at = ? WHERE group_id = ? AND status = 'queued' "
        "RETURNING id, position"
    ),
    "entries_running_runs": f"SELECT run_id FROM {ENTRIES} WHERE group_id = ? AND status = 'running' ORDER BY position",
    "run_set_group": (
        "UPDATE agent_runs SET agent_run_group_id = :group_id, orchestration_role = :orchestration_role, "
        "parent_agent_run_id = :parent_agent_run_id WHERE id = :id"
    ),
    "stream_last": "SELECT last_sequence FROM streams WHERE name = ?",
    "group_open": (
        "UPDATE agent_run_groups SET status = 'running', updated_at = ? "
        "WHERE id = ? AND status IN ('queued', 'running') AND cancel_requested IS NULL"
    ),
    "group_request_cancel": (
        "UPDATE agent_run_groups SET cancel_requested = COALESCE(cancel_requested, ?), updated_at = ? "
        "WHERE id = ? AND status IN ('queued', 'running')"
    ),
})

# The task queue (issue 9). A claim picks the highest-priority, oldest claimable task of a workspace
# (any workspace for the local user); every change to a run is a compare-and-set on its status, its
# claim token's hash and its lease, so a stale holder's call applies to nothing.
SQL.update({
    "task_insert": (
        "INSERT INTO tasks (id, title, identifier, priority, payload, max_attempts, workspace_id, scope, status, "
        "paused, available_at, created_by, created_at, updated_at) VALUES (:id, :title, :identifier, :priority, "
        ":payload, :max_attempts, :workspace_id, :scope, 'queued', :paused, :available_at, :created_by, "
        ":created_at, :updated_at)"
    ),
    "task_get": "SELECT * FROM tasks WHERE id = ?",
    "task_list": "SELECT * FROM tasks WHERE (:ws IS NULL OR workspace_id = :ws) AND (:status IS NULL OR "
                 "status = :status) ORDER BY created_at DESC, rowid DESC LIMIT :limit",
    "task_next_claimable": (
        "SELECT id FROM tasks WHERE status = 'queued' AND workspace_id = :ws AND paused = 0 AND available_at <= :now "
        "ORDER BY priority DESC, created_at, rowid LIMIT 1"
    ),
    "task_next_claimable_anywhere": (
        "SELECT id FROM tasks WHERE status = 'queued' AND paused = 0 AND available_at <= :now "
        "ORDER BY priority DESC, created_at, rowid LIMIT 1"
    ),
    "task_next_available": (
        "SELECT min(available_at) AS at FROM tasks WHERE status = 'queued' AND paused = 0 "
        "AND (:ws IS NULL OR workspace_id = :ws)"
    ),
    "task_claim": (
        "UPDATE tasks SET status = 'claimed', attempts = attempts + 1, current_run_id = :run_id, updated_at = :now "
        "WHERE id = :id AND status = 'queued' RETURNING attempts, current_run_id"
    ),
    "task_requeue": (
        "UPDATE tasks SET status = 'queued', failures = failures + :failed, available_at = :available_at, "
        "current_run_id = NULL, updated_at = :now WHERE id = :id AND status = 'claimed' AND current_run_id = :run_id"
    ),
    "task_finish": (
        "UPDATE tasks SET status = :status, failures = failures + :failed, failure_kind = :failure_kind, "
        "error = :error, result = :result, finished_at = :now, updated_at = :now "
        "WHERE id = :id AND status = 'claimed' AND current_run_id = :run_id"
    ),
    "task_event_bump": "UPDATE tasks SET latest_event_seq = latest_event_seq + 1 WHERE id = ? RETURNING *",
    "task_event_insert": (
        "INSERT INTO task_events (task_id, sequence, run_id, type, message, payload, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    ),
    "task_events": "SELECT * FROM task_events WHERE task_id = ? ORDER BY sequence",
    "task_run_insert": (
        "INSERT INTO task_runs (id, task_id, attempt, status, session_id, claim_token_hash, lease_seconds, "
        "claimed_at, heartbeat_at, lease_until, previous_run_id) VALUES (:id, :task_id, :attempt, 'running', "
        ":session_id, :claim_token_hash, :lease_seconds, :now, :now, :lease_until, :previous_run_id) RETURNING *"
    ),
    "task_run_get": "SELECT * FROM task_runs WHERE id = ?",
    "task_runs_of": "SELECT * FROM task_runs WHERE task_id = ? ORDER BY attempt",
    "task_run_last": "SELECT id FROM task_runs WHERE task_id = ? ORDER BY attempt DESC LIMIT 1",
    "task_run_heartbeat": (
        "UPDATE task_runs SET heartbeat_at = :now, lease_until = :lease_until, lease_seconds = :lease_seconds "
        "WHERE id = :id AND claim_token_hash = :hash AND session_id = :session_id AND status = 'running' "
        "AND lease_until > :now RETURNING *"
    ),
    "task_run_end": (
        "UPDATE task_runs SET status = :status, ended_at = :now, error = :error, failure_kind = :failure_kind, "
        "result = :result WHERE id = :id AND claim_token_hash = :hash AND session_id = :session_id "
        "AND status = 'running' AND lease_until > :now RETURNING *"
    ),
    "task_run_expire": (
        "UPDATE task_runs SET status = 'expired', ended_at = :now, failure_kind = 'lease_expired', "
        "error = 'the lease ran out without a heartbeat' WHERE id = :id AND status = 'running' AND lease_until <= :now"
    ),
    "task_runs_expired": "SELECT * FROM task_runs WHERE status = 'running' AND lease_until <= ? ORDER BY lease_until",
    "task_runs_next_expiry": "SELECT min(lease_until) AS at FROM task_runs WHERE status = 'running'",
    "task_runs_held_by": (
        "SELECT count(*) AS n FROM task_runs WHERE session_id = ? AND status = 'running' AND lease_until > ?"
    ),
    "task_runs_live_of": (
        "SELECT * FROM task_runs WHERE session_id = ? AND status = 'running' AND lease_until > ? ORDER BY claimed_at"
    ),
    "session_workspace": "SELECT workspace_id FROM sessions WHERE id = ?",
    "channel_insert": (
        "INSERT INTO channels (id, channel, kind, display_name, purpose, allowed_message_kinds, workspace_id, "
        "owner_session_id, run_id, task_id, workflow_id, last_activity_at, created_at) VALUES (:id, :channel, "
        ":kind, :display_name, :purpose, :allowed_message_kinds, :workspace_id, :owner_session_id, :run_id, "
        ":task_id, :workflow_id, :now, :now) ON CONFLICT (id) DO NOTHING"
    ),
    "channel_join": (
        "INSERT INTO channel_members (channel_id, session_id, joined_at) VALUES (?, ?, ?) "
        "ON CONFLICT (channel_id, session_id) DO NOTHING"
    ),
    "channel_get": "SELECT * FROM channels WHERE id = ?",
    "channel_member": "SELECT 1 FROM channel_members WHERE channel_id = ? AND session_id = ?",
    "channels_of": (
        "SELECT c.* FROM channels c JOIN channel_members m ON m.channel_id = c.id WHERE m.session_id = ? "
        "ORDER BY c.last_activity_at DESC, c.id LIMIT ?"
    ),
    "channels_all": "SELECT * FROM channels ORDER BY last_activity_at DESC, id LIMIT ?",
    "channel_bump": (
        "UPDATE channels SET last_sequence = last_sequence + 1, last_activity_at = ? WHERE id = ? "
        "RETURNING last_sequence"
    ),
    "message_insert": (
        "INSERT INTO channel_messages (channel_id, sequence, id, from_session_id, to_session_id, message_kind, "
        "correlation_id, reply_to_message_id, metadata, body, idempotency_key, request_hash, created_at) VALUES "
        "(:channel_id, :sequence, :id, :from_session_id, :to_session_id, :message_kind, :correlation_id, "
        ":reply_to_message_id, :metadata, :body, :idempotency_key, :request_hash, :now)"
    ),
    "message_get": "SELECT * FROM channel_messages WHERE id = ?",
    "message_by_key": "SELECT * FROM channel_messages WHERE from_session_id = ? AND idempotency_key = ?",
    "messages_for": (
        "SELECT * FROM channel_messages WHERE channel_id = :channel AND sequence > :after "
        "AND from_session_id != :me AND (to_session_id IS NULL OR to_session_id = :me) ORDER BY sequence LIMIT :limit"
    ),
    "channel_cursor": "SELECT sequence FROM channel_cursors WHERE channel_id = ? AND session_id = ?",
    "channel_cursor_set": (
        "INSERT INTO channel_cursors (channel_id, session_id, sequence, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (channel_id, session_id) DO UPDATE SET sequence = excluded.sequence, "
        "updated_at = excluded.updated_at WHERE excluded.sequence > channel_cursors.sequence"
    ),
    "inbox": (
        "SELECT m.* FROM channel_members cm JOIN channel_messages m ON m.channel_id = cm.channel_id "
        "LEFT JOIN channel_cursors k ON k.channel_id = cm.channel_id AND k.session_id = cm.session_id "
        "WHERE cm.session_id = :me AND m.sequence > COALESCE(k.sequence, 0) AND m.from_session_id != :me "
        "AND (m.to_session_id IS NULL OR m.to_session_id = :me) ORDER BY m.created_at, m.channel_id, m.sequence "
        "LIMIT :limit"
    ),
    "inbox_count": (
        "SELECT count(*) AS n FROM channel_members cm JOIN channel_messages m ON m.channel_id = cm.channel_id "
        "LEFT JOIN channel_cursors k ON k.channel_id = cm.channel_id AND k.session_id = cm.session_id "
        "WHERE cm.session_id = :me AND m.sequence > COALESCE(k.sequence, 0) AND m.from_session_id != :me "
        "AND (m.to_session_id IS NULL OR m.to_session_id = :me)"
    ),
})

# Agent runtime profiles (issue 10). A scope is the tenant ('' : workspace_id NULL) or one workspace.
PROFILE_SCOPE = "COALESCE(workspace_id, '')"
SQL.update({
    "profile_insert": (
        "INSERT INTO agent_runtime_profiles (id, workspace_id, name, runtime, description, applies_to, tools, "
        "connectors, env, secrets, model, image, resources, network, policy, metadata, is_default, created_by, "
        "created_at, updated_at) VALUES (:id, :workspace_id, :name, :runtime, :description, :applies_to, :tools, "
        ":connectors, :env, :secrets, :model, :image, :resources, :network, :policy, :metadata, :is_default, "
        ":created_by, :created_at, :updated_at)"
    ),
    "profile_get": "SELECT * FROM agent_runtime_profiles WHERE id = ?",
    "profile_list": (
        "SELECT * FROM agent_runtime_profiles WHERE (:all_ws = 1 AND (:ws IS NULL OR workspace_id = :ws)) "
        "OR (:all_ws = 0 AND (workspace_id IS NULL OR workspace_id = :own) AND (:ws IS NULL OR workspace_id = :ws)) "
        "ORDER BY COALESCE(workspace_id, ''), name"
    ),
    "profile_by_name": f"SELECT id FROM agent_runtime_profiles WHERE {PROFILE_SCOPE} = ? AND name = ? AND id != ?",
    "profile_default": f"SELECT * FROM agent_runtime_profiles WHERE {PROFILE_SCOPE} = ? AND is_default = 1",
    "profile_clear_default": (
        f"UPDATE agent_runtime_profiles SET is_default = 0, updated_at = :now WHERE {PROFILE_SCOPE} = :scope "
        "AND is_default = 1 AND id != :id"
    ),
    "profile_delete": "DELETE FROM agent_runtime_profiles WHERE id = ?",
    "profile_live_runs": (
        "SELECT id FROM agent_runs WHERE profile_id = ? AND status IN ('queued', 'running') ORDER BY rowid LIMIT 5"
    ),
    "profile_live_sessions": (
        "SELECT id FROM sessions WHERE profile_id = ? AND status = 'active' ORDER BY created_at LIMIT 5"
    ),
    "profile_queued_entries": (
        f"SELECT id FROM {ENTRIES} WHERE status = 'queued' AND (json_extract(request, '$.agent_runtime_profile_id') = "
        ":id OR json_extract(request, '$.agent_profile_id') = :id) LIMIT 5"
    ),
    "devices_live_created_by_tree": (
        "WITH RECURSIVE tree(id) AS (SELECT :id UNION SELECT s.id FROM sessions s JOIN tree t "
        "ON s.parent_session_id = t.id) "
        "SELECT count(*) FROM devices WHERE deleted_at IS NULL AND created_by IN (SELECT id FROM tree)"
    ),
})
PROFILE_UPDATABLE = frozenset(
    "name runtime description applies_to tools connectors env secrets model image resources network policy "
    "metadata is_default".split())

GROUP_UPDATABLE = frozenset({"status", "cancel_requested", "finished_at"})
ENTRY_UPDATABLE = frozenset({"status", "attempts", "run_id", "diagnostic"})

# Columns a run update may set (a guard against building SQL from arbitrary keys).
RUN_UPDATABLE = frozenset(
    "status output stderr output_truncated stderr_truncated stdout_offset stderr_offset exit_code "
    "failure_kind error cancel_requested started_at finished_at target_id".split()
)


def ts(dt: datetime) -> str:
    """One sortable text form for every timestamp."""
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"  # strftime's
    # "%Y-%m-%dT%H:%M:%S.%fZ", at a tenth of its cost (a claim+complete pair formats a dozen)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def migrations() -> list[tuple[int, str]]:
    """The numbered migrations shipped in engine/migrations, in order."""
    found = []
    for item in resources.files("engine.migrations").iterdir():
        if item.name.endswith(".sql"):
            found.append((int(item.name.split("_", 1)[0]), item.read_text()))
    return sorted(found)


Draft = tuple[str, str, dict[str, Any]]
"""An event to append: type, message, payload."""


class Queued(NamedTuple):
    """What admission needs of a queued run."""

    id: str
    target_id: str
    group_id: str | None


BUSY_WAIT_SECONDS = 5.0
"""How long a write waits for another process (a second daemon, a manual `sqlite3`) to let go."""
CHECKPOINT_EVERY = 1000
"""Commits between two WAL checkpoints (SQLite's own default, run here off the loop's thread)."""


class InlineCursor:
    """The part of a cursor the store uses, awaitable like aiosqlite's."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.rowcount = cursor.rowcount
        self._cursor = cursor

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()


class InlineConnection:
    """A sqlite3 connection used directly on the event loop's thread, with aiosqlite's async surface
    (so a transaction body reads the same whichever connection it runs on)."""

    def __init__(self, path: Path) -> None:
        self.raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.raw.row_factory = sqlite3.Row

    async def execute(self, sql: str, params: Any = ()) -> InlineCursor:
        return InlineCursor(self.raw.execute(sql, params))

    async def executemany(self, sql: str, rows: Iterable[Any]) -> InlineCursor:
        return InlineCursor(self.raw.executemany(sql, rows))

    async def execute_fetchall(self, sql: str, params: Any = ()) -> list[Any]:
        return self.raw.execute(sql, params).fetchall()

    async def executescript(self, script: str) -> None:
        self.raw.executescript(script)

    async def begin(self) -> None:
        """BEGIN IMMEDIATE, waiting for another process's write lock without blocking the loop."""
        delay, waited = 0.001, 0.0
        while True:
            try:
                self.raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or waited >= BUSY_WAIT_SECONDS:
                    raise
            await anyio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.1)

    async def commit(self) -> None:
        self.raw.execute("COMMIT")

    async def rollback(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("ROLLBACK")

    async def close(self) -> None:
        self.raw.close()


class Tx:
    """One open write transaction; `touched` are the topics to wake once it commits."""

    def __init__(self, conn: InlineConnection, now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.touched: set[str] = set()

    def touch(self, topic: str) -> None:
        self.touched.add(topic)

    async def insert_device(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["device_insert"], _encode(row))

    async def delete_device(self, device_id: str) -> None:
        await self.conn.execute(SQL["device_delete"], {"id": device_id, "now": ts(self.now)})

    async def insert_run(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["run_insert"], _encode({"secrets": [], "profile_id": None,
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
        cur = await self.conn.execute(sql, _encode(params))
        applied = cur.rowcount == 1
        if applied:
            self.touch(topics.run(run_id))
            if "status" in fields:
                self.touch(topics.ADMISSION)
        return applied

    async def append_output(self, run_id: str, stream: str, text: str) -> None:
        """Keep more of a run's stdout or stderr: one new chunk, not a rewrite of what is kept."""
        if text:
            await self.conn.execute(SQL["chunk_insert"], {"run_id": run_id, "stream": stream, "text": text})

    async def fold_output(self, run_id: str) -> None:
        """Move a run's chunks into its record (once, when its result is recorded)."""
        await self.conn.execute(SQL["chunks_fold"], {"id": run_id})
        await self.conn.execute(SQL["chunks_delete"], (run_id,))

    async def append_events(self, run_id: str | None, events: Iterable[Draft], *,
                            group_id: str | None = None) -> list[int]:
        """Append events to the run's stream and, when it has one, its group's: each stream gets its
        next gapless sequences in this transaction (one counter bump per stream for the whole batch).
        Returns the run-stream sequences."""
        events = list(events)
        if not events:
            return []
        streams = ([topics.run(run_id)] if run_id else []) + ([topics.group(group_id)] if group_id else [])
        ids = [new_id("ev") for _ in events]
        await self.conn.executemany(SQL["event_insert"], [
            (event_id, run_id, group_id, type_, message, json.dumps(payload), ts(self.now))
            for event_id, (type_, message, payload) in zip(ids, events, strict=True)])
        first_stream_seqs: list[int] = []
        for i, stream in enumerate(streams):
            ((last,),) = await self.conn.execute_fetchall(SQL["stream_bump"], (stream, len(events), len(events)))
            seqs = list(range(last - len(events) + 1, last + 1))
            await self.conn.executemany(SQL["stream_event_insert"], [
                (stream, seq, event_id) for seq, event_id in zip(seqs, ids, strict=True)])
            if i == 0:
                first_stream_seqs = seqs
            self.touch(stream)
        return first_stream_seqs

    async def insert_session(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["session_insert"], _encode({"profile_id": None, "profile_snapshot": None, **row}))
        self.touch(topics.SESSIONS)

    async def end_session(self, session_id: str, status: str, reason: str) -> bool:
        """Compare-and-set: stop or expire a session that is still active; says whether it did."""
        cur = await self.conn.execute(SQL["session_end"], {"id": session_id, "status": status, "reason": reason,
                                                           "now": ts(self.now)})
        self.touch(topics.SESSIONS)
        return cur.rowcount == 1

    async def set_session_run(self, session_id: str, run_id: str) -> None:
        await self.conn.execute(SQL["session_set_run"], {"id": session_id, "run_id": run_id, "now": ts(self.now)})

    async def live_children(self, session_id: str) -> int:
        """Counted inside the transaction, so two spawns cannot both take the last place."""
        ((n,),) = await self.conn.execute_fetchall(SQL["sessions_live_children"], (session_id,))
        return int(n)

    async def live_in_workspace(self, workspace_id: str) -> int:
        ((n,),) = await self.conn.execute_fetchall(SQL["sessions_live_in_workspace"], (workspace_id,))
        return int(n)

    async def upsert_artifact(self, run_id: str, path: str, size: int, sha256: str, stored_as: str) -> None:
        await self.conn.execute(SQL["artifact_upsert"], (run_id, path, size, sha256, stored_as, ts(self.now)))

    async def insert_soul_snapshot(self, row: dict[str, Any], content: bytes | None) -> None:
        """A snapshot of a soul; its document stored once per digest (none when there was no soul)."""
        if content is not None:
            await self.conn.execute(SQL["soul_document_insert"], (row["digest"], content, ts(self.now)))
        await self.conn.execute(SQL["soul_snapshot_insert"], _encode(row))

    # ------------------------------------------------------------ groups

    async def insert_group(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["group_insert"], _encode(row))

    async def insert_dispatch(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["dispatch_insert"], _encode(row))

    async def next_entry_position(self, group_id: str) -> int:
        ((n,),) = await self.conn.execute_fetchall(SQL["entry_next_position"], (group_id,))
        return int(n)

    async def insert_entries(self, group_id: str, dispatch_id: str, first: int, requests: list[dict[str, Any]],
                             ids: list[str]) -> None:
        """Queue one entry per manifest item (positions `first`, `first`+1, ...): the scheduler may claim."""
        now = ts(self.now)
        await self.conn.executemany(SQL["entry_insert"], [
            (entry_id, group_id, dispatch_id, first + i, i, json.dumps(req), now, now)
            for i, (entry_id, req) in enumerate(zip(ids, requests, strict=True))])
        self.touch(topics.ADMISSION)
        self.touch(topics.group(group_id))

    async def transition_group(self, group_id: str, expected: Iterable[str], **fields: Any) -> bool:
        """Compare-and-set on the group's status; says whether it applied."""
        return await self._cas("agent_run_groups", GROUP_UPDATABLE, group_id, list(expected), fields,
                               topics.group(group_id))

    async def transition_entry(self, entry_id: str, group_id: str, expected: Iterable[str], **fields: Any) -> bool:
        """Compare-and-set on an entry's status; says whether it applied (the scheduler may claim again)."""
        if "diagnostic" in fields and fields["diagnostic"] is not None:
            fields["diagnostic"] = json.dumps(fields["diagnostic"])
        applied = await self._cas(ENTRIES, ENTRY_UPDATABLE, entry_id, list(expected), fields, topics.group(group_id))
        if applied:
            self.touch(topics.ADMISSION)
        return applied

    async def _cas(self, table: str, allowed: frozenset[str], id_: str, expected: list[str], fields: dict[str, Any],
                   topic: str) -> bool:
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"not updatable: {bad}")
        fields["updated_at"] = self.now
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        marks = ", ".join(f":expected_{i}" for i in range(len(expected)))
        params = {**fields, "id": id_, **{f"expected_{i}": s for i, s in enumerate(expected)}}
        cur = await self.conn.execute(f"UPDATE {table} SET {sets} WHERE id = :id AND status IN ({marks})",
                                      {k: ts(v) if isinstance(v, datetime) else v for k, v in params.items()})
        if cur.rowcount == 1:
            self.touch(topic)
            return True
        return False

    async def group(self, group_id: str) -> GroupRow | None:
        """The group as this transaction sees it."""
        rows = await self.conn.execute_fetchall(SQL["group_get"], (group_id,))
        return GroupRow.model_validate(dict(rows[0])) if rows else None

    async def open_group(self, group_id: str) -> bool:
        """Mark the group running for a dispatch, unless it has ended or its cancel was asked for."""
        cur = await self.conn.execute(SQL["group_open"], (ts(self.now), group_id))
        return cur.rowcount == 1

    async def request_group_cancel(self, group_id: str) -> bool:
        cur = await self.conn.execute(SQL["group_request_cancel"], (ts(self.now), ts(self.now), group_id))
        if cur.rowcount == 1:
            self.touch(topics.group(group_id))
            self.touch(topics.ADMISSION)
            return True
        return False

    async def cancel_queued_entries(self, group_id: str) -> list[tuple[str, int]]:
        """End every queued entry of the group `canceled`; returns their (id, position)."""
        rows = await self.conn.execute_fetchall(SQL["entries_cancel_queued"], (ts(self.now), group_id))
        self.touch(topics.group(group_id))
        return [(r[0], r[1]) for r in rows]

    async def entry_counts(self, group_id: str) -> dict[str, int]:
        """The group's entries by status, as this transaction sees them."""
        return {r[0]: r[1] for r in await self.conn.execute_fetchall(SQL["entry_counts"], (group_id,))}

    async def set_run_group(self, run_id: str, group_id: str, orchestration_role: str | None,
                            parent_agent_run_id: str | None) -> None:
        await self.conn.execute(SQL["run_set_group"], {"id": run_id, "group_id": group_id,
                                                      "orchestration_role": orchestration_role,
                                                      "parent_agent_run_id": parent_agent_run_id})

    async def append_group_events(self, group_id: str, events: Iterable[tuple[str | None, str, str, dict[str, Any]]],
                                  ) -> list[int]:
        """Append events to the group's stream only (entry and group events): each a (run_id or None,
        type, message, payload); they get the group's next gapless sequences in this transaction."""
        events = list(events)
        if not events:
            return []
        stream = topics.group(group_id)
        ids = [new_id("ev") for _ in events]
        await self.conn.executemany(SQL["event_insert"], [
            (event_id, run_id, group_id, type_, message, json.dumps(payload), ts(self.now))
            for event_id, (run_id, type_, message, payload) in zip(ids, events, strict=True)])
        ((last,),) = await self.conn.execute_fetchall(SQL["stream_bump"], (stream, len(events), len(events)))
        seqs = list(range(last - len(events) + 1, last + 1))
        await self.conn.executemany(SQL["stream_event_insert"], [
            (stream, seq, event_id) for seq, event_id in zip(seqs, ids, strict=True)])
        self.touch(stream)
        return seqs


    # ------------------------------------------------------------ profiles

    async def profile(self, profile_id: str) -> ProfileRow | None:
        rows = await self.conn.execute_fetchall(SQL["profile_get"], (profile_id,))
        return ProfileRow.model_validate(dict(rows[0])) if rows else None

    async def profile_named(self, workspace_id: str | None, name: str, other_than: str = "") -> str | None:
        """The id of another profile of that name in that scope, if one exists."""
        rows = await self.conn.execute_fetchall(SQL["profile_by_name"], (workspace_id or "", name, other_than))
        return rows[0][0] if rows else None

    async def insert_profile(self, row: dict[str, Any]) -> None:
        if row.get("is_default"):
            await self._clear_default(row["workspace_id"], row["id"])
        await self.conn.execute(SQL["profile_insert"], _encode(row))

    async def update_profile(self, profile_id: str, workspace_id: str | None, **fields: Any) -> None:
        bad = set(fields) - PROFILE_UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {bad}")
        if fields.get("is_default"):
            await self._clear_default(workspace_id, profile_id)
        fields["updated_at"] = self.now
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        await self.conn.execute(f"UPDATE agent_runtime_profiles SET {sets} WHERE id = :id",
                                _encode({**fields, "id": profile_id}))

    async def _clear_default(self, workspace_id: str | None, profile_id: str) -> None:
        """A new default takes over its scope: the old one stops being it, in this transaction."""
        await self.conn.execute(SQL["profile_clear_default"], {"scope": workspace_id or "", "id": profile_id,
                                                                "now": ts(self.now)})

    async def delete_profile(self, profile_id: str) -> None:
        await self.conn.execute(SQL["profile_delete"], (profile_id,))

    async def profile_users(self, profile_id: str) -> dict[str, list[str]]:
        """What still uses a profile: unfinished runs, live sessions, queued group entries that name it."""
        out = {}
        for kind, sql in (("runs", "profile_live_runs"), ("sessions", "profile_live_sessions"),
                          ("group_entries", "profile_queued_entries")):
            params: Any = {"id": profile_id} if kind == "group_entries" else (profile_id,)
            found = [r[0] for r in await self.conn.execute_fetchall(SQL[sql], params)]
            if found:
                out[kind] = found
        return out

    async def live_devices_of_tree(self, session_id: str) -> int:
        """Live devices (sandboxes, computers, ephemeral ones of unfinished runs) created by a session or
        any session spawned below it."""
        ((n,),) = await self.conn.execute_fetchall(SQL["devices_live_created_by_tree"], {"id": session_id})
        return int(n)

    # ------------------------------------------------------------ tasks

    async def insert_task(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["task_insert"], _encode(row))
        self.touch(topics.TASKS)

    async def task(self, task_id: str) -> TaskRow | None:
        rows = await self.conn.execute_fetchall(SQL["task_get"], (task_id,))
        return TaskRow.model_validate(dict(rows[0])) if rows else None

    async def task_run(self, run_id: str) -> TaskRunRow | None:
        rows = await self.conn.execute_fetchall(SQL["task_run_get"], (run_id,))
        return TaskRunRow.model_validate(dict(rows[0])) if rows else None

    async def next_claimable_task(self, workspace_id: str | None) -> str | None:
        sql = SQL["task_next_claimable_anywhere" if workspace_id is None else "task_next_claimable"]
        rows = await self.conn.execute_fetchall(sql, {"now": ts(self.now), "ws": workspace_id})
        return rows[0][0] if rows else None

    async def leases_held(self, session_id: str) -> int:
        ((n,),) = await self.conn.execute_fetchall(SQL["task_runs_held_by"], (session_id, ts(self.now)))
        return int(n)

    async def claim_task(self, task_id: str, run: dict[str, Any]) -> TaskRunRow | None:
        """Compare-and-set: the queued task becomes claimed by a new run; returns the run, or None."""
        rows = await self.conn.execute_fetchall(SQL["task_claim"], {"id": task_id, "run_id": run["id"],
                                                                    "now": ts(self.now)})
        if not rows:
            return None
        last = await self.conn.execute_fetchall(SQL["task_run_last"], (task_id,))
        (inserted,) = await self.conn.execute_fetchall(SQL["task_run_insert"], _encode({
            **run, "task_id": task_id, "attempt": rows[0][0], "now": self.now,
            "previous_run_id": last[0][0] if last else None}))
        self.touch(topics.TASKS)
        return TaskRunRow.model_validate(dict(inserted))

    async def heartbeat_task_run(self, run_id: str, token_hash: str, session_id: str, lease_seconds: float,
                                 lease_until: datetime) -> TaskRunRow | None:
        """Compare-and-set: extend the lease only for the current holder of a live lease; the run as it
        is now, or None."""
        return self._run_changed(await self.conn.execute_fetchall(SQL["task_run_heartbeat"], {
            "id": run_id, "hash": token_hash, "session_id": session_id, "lease_seconds": lease_seconds,
            "lease_until": ts(lease_until), "now": ts(self.now)}))

    def _run_changed(self, rows: list[Any]) -> TaskRunRow | None:
        if not rows:
            return None
        self.touch(topics.TASKS)
        return TaskRunRow.model_validate(dict(rows[0]))

    async def end_task_run(self, run_id: str, token_hash: str, session_id: str, status: str, *,
                           error: str | None = None, failure_kind: str | None = None,
                           result: Any = None) -> TaskRunRow | None:
        """Compare-and-set: end a run only for the current holder of a live lease; the ended run, or None."""
        return self._run_changed(await self.conn.execute_fetchall(SQL["task_run_end"], {
            "id": run_id, "hash": token_hash, "session_id": session_id, "status": str(status), "error": error,
            "failure_kind": None if failure_kind is None else str(failure_kind),
            "result": None if result is None else json.dumps(result), "now": ts(self.now)}))

    async def expire_task_run(self, run_id: str) -> bool:
        """Compare-and-set: a running run whose lease has passed becomes expired."""
        cur = await self.conn.execute(SQL["task_run_expire"], {"id": run_id, "now": ts(self.now)})
        if cur.rowcount == 1:
            self.touch(topics.TASKS)
        return cur.rowcount == 1

    async def requeue_task(self, task_id: str, run_id: str, *, failed: bool, available_at: datetime) -> bool:
        cur = await self.conn.execute(SQL["task_requeue"], {
            "id": task_id, "run_id": run_id, "failed": int(failed), "available_at": ts(available_at),
            "now": ts(self.now)})
        self.touch(topics.TASKS)
        return cur.rowcount == 1

    async def finish_task(self, task_id: str, run_id: str, status: str, *, failed: bool = False,
                          failure_kind: str | None = None, error: str | None = None, result: Any = None) -> bool:
        cur = await self.conn.execute(SQL["task_finish"], {
            "id": task_id, "run_id": run_id, "status": str(status), "failed": int(failed),
            "failure_kind": None if failure_kind is None else str(failure_kind),
            "error": error, "result": None if result is None else json.dumps(result), "now": ts(self.now)})
        self.touch(topics.TASKS)
        return cur.rowcount == 1

    async def task_event(self, task_id: str, run_id: str | None, type_: str, message: str,
                         payload: dict[str, Any]) -> TaskRow:
        """Append to the task's own event stream (its next sequence, in this transaction); returns the
        task as it is now."""
        (row,) = await self.conn.execute_fetchall(SQL["task_event_bump"], (task_id,))
        task = TaskRow.model_validate(dict(row))
        await self.conn.execute(SQL["task_event_insert"], (task_id, task.latest_event_seq, run_id, type_, message,
                                                           json.dumps(payload), ts(self.now)))
        return task

    # ------------------------------------------------------------ channels

    async def ensure_channel(self, row: dict[str, Any], members: Iterable[str]) -> None:
        """The channel (made once; its id comes from its name) with these sessions among its members."""
        await self.conn.execute(SQL["channel_insert"], _encode({**row, "now": self.now}))
        await self.conn.executemany(SQL["channel_join"], [(row["id"], m, ts(self.now)) for m in members])

    async def channel(self, channel_id: str) -> ChannelRow | None:
        rows = await self.conn.execute_fetchall(SQL["channel_get"], (channel_id,))
        return ChannelRow.model_validate(dict(rows[0])) if rows else None

    async def is_member(self, channel_id: str, session_id: str) -> bool:
        return bool(await self.conn.execute_fetchall(SQL["channel_member"], (channel_id, session_id)))

    async def message(self, message_id: str) -> MessageRow | None:
        rows = await self.conn.execute_fetchall(SQL["message_get"], (message_id,))
        return MessageRow.model_validate(dict(rows[0])) if rows else None

    async def message_by_key(self, session_id: str, key: str) -> MessageRow | None:
        rows = await self.conn.execute_fetchall(SQL["message_by_key"], (session_id, key))
        return MessageRow.model_validate(dict(rows[0])) if rows else None

    async def append_message(self, row: dict[str, Any]) -> MessageRow:
        """The message, next in its channel's order; its waiters wake when this transaction commits."""
        ((seq,),) = await self.conn.execute_fetchall(SQL["channel_bump"], (ts(self.now), row["channel_id"]))
        await self.conn.execute(SQL["message_insert"], _encode({**row, "sequence": seq, "now": self.now}))
        self.touch(topics.channel(row["channel_id"]))
        message = await self.message(row["id"])
        assert message is not None
        return message

    async def take_messages(self, channel_id: str, session_id: str, limit: int) -> list[MessageRow]:
        """What `session_id` has not yet received on the channel (up to `limit`), its cursor moved past
        them in this same transaction: a message is handed to a session once."""
        rows = await self.conn.execute_fetchall(SQL["channel_cursor"], (channel_id, session_id))
        after = rows[0][0] if rows else 0
        found = [MessageRow.model_validate(dict(r)) for r in await self.conn.execute_fetchall(
            SQL["messages_for"], {"channel": channel_id, "after": after, "me": session_id, "limit": limit})]
        if len(found) == limit:
            upto = found[-1].sequence
        else:  # everything up to the channel's last message was looked at (the rest is not for this session)
            ((upto,),) = await self.conn.execute_fetchall("SELECT last_sequence FROM channels WHERE id = ?",
                                                          (channel_id,))
        if upto > after:
            await self.conn.execute(SQL["channel_cursor_set"], (channel_id, session_id, upto, ts(self.now)))
        return found


class Store:
    def __init__(self, path: Path, notifier: topics.Topics | None = None) -> None:
        self.path = path
        self.topics = notifier or topics.Topics()
        self._writer: InlineConnection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = anyio.Lock(fast_acquire=True)
        self.commits = 0
        """Write transactions committed since this store was opened."""

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = InlineConnection(self.path)
        for pragma in _PRAGMAS + ("journal_mode = WAL", "wal_autocheckpoint = 0", "busy_timeout = 0"):
            await self._writer.execute(f"PRAGMA {pragma}")
        await self.migrate()
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        self._reader.row_factory = aiosqlite.Row
        for pragma in _PRAGMAS + ("busy_timeout = 5000",):
            await self._reader.execute(f"PRAGMA {pragma}")

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.close()

    async def migrate(self) -> int:
        """Apply every migration newer than the database's user_version, each in its own transaction."""
        assert self._writer is not None
        cur = await self._writer.execute("PRAGMA user_version")
        (current,) = await cur.fetchone()  # type: ignore[misc]
        # Foreign keys off while tables are rebuilt (SQLite's way to change a table), checked after.
        await self._writer.execute("PRAGMA foreign_keys = OFF")
        try:
            for version, script in migrations():
                if version <= current:
                    continue
                await self._writer.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
                current = version
            broken = await self._writer.execute_fetchall("PRAGMA foreign_key_check")
            if broken:
                raise RuntimeError(f"migrations left broken references: {list(broken)[:5]}")
        finally:
            await self._writer.execute("PRAGMA foreign_keys = ON")
        return current

    @asynccontextmanager
    async def write(self, now: datetime) -> AsyncIterator[Tx]:
        """One serialized write transaction, shielded from cancellation once begun; its topics are
        published after it commits."""
        assert self._writer is not None
        async with self._lock:
            with anyio.CancelScope(shield=True):
                try:
                    await self._writer.begin()
                except sqlite3.OperationalError as exc:
                    raise _translated(exc) from exc
                tx = Tx(self._writer, now)
                try:
                    yield tx
                except BaseException as exc:
                    await self._writer.rollback()
                    if isinstance(exc, sqlite3.Error):
                        raise _translated(exc) from exc
                    raise
                else:
                    await self._writer.commit()
        self.topics.publish(tx.touched)
        self.commits += 1
        if self.commits % CHECKPOINT_EVERY == 0:
            await self.checkpoint()

    async def checkpoint(self) -> None:
        """Copy the WAL back into the database file, on the reader's thread (it may fsync)."""
        assert self._reader is not None
        await self._reader.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def _all(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        """One query, executed and drained in a single step on the reader's thread. Two reads must not
        interleave on the connection: the second would join the first's snapshot and could miss a
        commit made in between (read-your-writes would break)."""
        assert self._reader is not None
        return [dict(r) for r in await self._reader.execute_fetchall(sql, params)]

    async def _one(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    # ------------------------------------------------------------ devices

    async def device(self, device_id: str) -> DeviceRow | None:
        row = await self._one(SQL["device_get"], (device_id,))
        return DeviceRow.model_validate(row) if row else None

    async def devices(self, *, include_ephemeral: bool = False, created_by: str | None = None) -> list[DeviceRow]:
        if created_by is not None:
            rows = await self._all(SQL["device_list_by_creator"], (created_by,))
        else:
            rows = await self._all(SQL["device_list_live"] if include_ephemeral else SQL["device_list"])
        return [DeviceRow.model_validate(r) for r in rows]

    # ------------------------------------------------------------ runs

    async def run(self, run_id: str) -> RunRow | None:
        row = await self._one(SQL["run_get"], (run_id,))
        return RunRow.model_validate(row) if row else None

    async def run_by_idempotency_key(self, created_by: str, key: str) -> RunRow | None:
        row = await self._one(SQL["run_by_idempotency_key"], (created_by, key))
        return RunRow.model_validate(row) if row else None

    async def unfinished_runs(self) -> list[RunRow]:
        return [RunRow.model_validate(r) for r in await self._all(SQL["runs_unfinished"])]

    async def queued_runs(self, limit: int) -> list[Queued]:
        """The oldest queued runs, in the order they were created."""
        return [Queued(r["id"], r["target_id"], r["agent_run_group_id"])
                for r in await self._all(SQL["runs_queued"], (limit,))]

    async def active_runs_on(self, target_id: str) -> list[str]:
        return [r["id"] for r in await self._all(SQL["runs_active_on_target"], (target_id,))]

    async def runs(self, q: models.RunListQuery, *, created_by: str | None = None) -> list[RunRow]:
        """Newest first, keyset-paged by (created_at, id); fetches one extra row to know if more follow."""
        where, params = [], []
        if created_by is not None:
            where.append("created_by = ?")
            params.append(created_by)
        if q.target_id:
            where.append("target_id = ?")
            params.append(q.target_id)
        if q.status:
            where.append("status = ?")
            params.append(q.status.value)
        if q.cursor:
            where.append("(created_at, id) < (SELECT created_at, id FROM agent_runs WHERE id = ?)")
            params.append(q.cursor)
        sql = f"SELECT {RUN_COLUMNS} FROM agent_runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(q.limit + 1)
        return [RunRow.model_validate(r) for r in await self._all(sql, params)]

    async def events(self, stream: str, after: int, limit: int) -> list[EventRow]:
        """A stream's events after a sequence number (`topics.run(id)`, `topics.group(id)`)."""
        return [EventRow.model_validate(r) for r in await self._all(SQL["stream_after"], (stream, after, limit))]

    async def artifacts(self, run_id: str) -> list[ArtifactRow]:
        return [ArtifactRow.model_validate(r) for r in await self._all(SQL["artifacts_of_run"], (run_id,))]

    async def artifact(self, run_id: str, path: str) -> ArtifactRow | None:
        row = await self._one(SQL["artifact_get"], (run_id, path))
        return ArtifactRow.model_validate(row) if row else None

    # ------------------------------------------------------------ sessions

    async def session(self, session_id: str) -> SessionRow | None:
        row = await self._one(SQL["session_get"], (session_id,))
        return SessionRow.model_validate(row) if row else None

    async def session_by_token_hash(self, token_hash: str) -> SessionRow | None:
        row = await self._one(SQL["session_by_token"], (token_hash,))
        return SessionRow.model_validate(row) if row else None

    async def sessions(self) -> list[SessionRow]:
        return [SessionRow.model_validate(r) for r in await self._all(SQL["sessions_all"])]

    async def descendants(self, session_id: str) -> list[SessionRow]:
        """Every session below `session_id`, shallowest first."""
        return [SessionRow.model_validate(r) for r in await self._all(SQL["sessions_descendants"], {"id": session_id})]

    async def next_session_expiry(self) -> datetime | None:
        row = await self._one(SQL["sessions_next_expiry"])
        return datetime.fromisoformat(row["at"]) if row and row["at"] else None

    async def expired_sessions(self, now: datetime) -> list[str]:
        return [r["id"] for r in await self._all(SQL["sessions_expired"], (ts(now),))]

    async def unfinished_runs_of(self, session_id: str) -> list[str]:
        return [r["id"] for r in await self._all(SQL["runs_unfinished_of"], (session_id,))]

    # ------------------------------------------------------------ souls

    async def soul_snapshot(self, snapshot_id: str) -> SoulSnapshotRow | None:
        row = await self._one(SQL["soul_snapshot_get"], (snapshot_id,))
        return SoulSnapshotRow.model_validate(row) if row else None

    # ------------------------------------------------------------ groups

    async def group(self, group_id: str) -> GroupRow | None:
        row = await self._one(SQL["group_get"], (group_id,))
        return GroupRow.model_validate(row) if row else None

    async def group_by_idempotency_key(self, created_by: str, key: str) -> GroupRow | None:
        row = await self._one(SQL["group_by_idempotency_key"], (created_by, key))
        return GroupRow.model_validate(row) if row else None

    async def groups(self, *, status: str | None, workspace_id: str | None, project_id: str | None,
                     cursor: str | None, limit: int, created_by: str | None) -> list[GroupRow]:
        """Newest first, keyset-paged by (created_at, id); one extra row says whether more follow."""
        where, params = [], []
        for column, value in (("created_by", created_by), ("status", status), ("workspace_id", workspace_id),
                              ("project_id", project_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if cursor:
            where.append("(created_at, id) < (SELECT created_at, id FROM agent_run_groups WHERE id = ?)")
            params.append(cursor)
        sql = "SELECT * FROM agent_run_groups" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(limit + 1)
        return [GroupRow.model_validate(r) for r in await self._all(sql, params)]

    async def dispatch(self, dispatch_id: str) -> DispatchRow | None:
        row = await self._one(SQL["dispatch_get"], (dispatch_id,))
        return DispatchRow.model_validate(row) if row else None

    async def dispatch_by_idempotency_key(self, created_by: str, key: str) -> DispatchRow | None:
        row = await self._one(SQL["dispatch_by_idempotency_key"], (created_by, key))
        return DispatchRow.model_validate(row) if row else None

    async def dispatch_entries(self, dispatch_id: str) -> list[EntryRow]:
        return [EntryRow.model_validate(r) for r in await self._all(SQL["entries_of_dispatch"], (dispatch_id,))]

    async def group_entries(self, group_id: str, *, start: int = 0, limit: int = 1000,
                            status: str | None = None) -> list[EntryRow]:
        if status is None:
            rows = await self._all(SQL["entries_of_group"], (group_id, start, limit))
        else:
            rows = await self._all(SQL["entries_of_group_by_status"], (group_id, start, status, limit))
        return [EntryRow.model_validate(r) for r in rows]

    async def entry_counts(self, group_id: str) -> dict[str, int]:
        return {r["status"]: r["n"] for r in await self._all(SQL["entry_counts"], (group_id,))}

    async def group_run_counts(self, group_id: str) -> dict[str, int]:
        return {r["status"]: r["n"] for r in await self._all(SQL["group_run_counts"], (group_id,))}

    async def claimable_entries(self, limit: int) -> list[EntryRow]:
        return [EntryRow.model_validate(r) for r in await self._all(SQL["entries_claimable"], (limit,))]

    async def entries_to_settle(self, limit: int) -> list[tuple[EntryRow, str, str | None]]:
        """Running entries whose run has ended, with that run's status and failure_kind."""
        rows = await self._all(SQL["entries_to_settle"], (limit,))
        return [(EntryRow.model_validate(r), r["run_status"], r["run_failure_kind"]) for r in rows]

    async def running_entry_runs(self, group_id: str) -> list[str]:
        return [r["run_id"] for r in await self._all(SQL["entries_running_runs"], (group_id,))]

    async def runs_by_ids(self, run_ids: list[str]) -> dict[str, RunRow]:
        found: dict[str, RunRow] = {}
        for i in range(0, len(run_ids), 500):
            chunk = run_ids[i:i + 500]
            sql = f"SELECT {RUN_COLUMNS} FROM agent_runs WHERE id IN ({', '.join('?' * len(chunk))})"
            found.update({r["id"]: RunRow.model_validate(r) for r in await self._all(sql, chunk)})
        return found

    # ------------------------------------------------------------ tasks

    async def task(self, task_id: str) -> TaskRow | None:
        row = await self._one(SQL["task_get"], (task_id,))
        return TaskRow.model_validate(row) if row else None

    async def tasks(self, workspace_id: str | None, status: str | None, limit: int) -> list[TaskRow]:
        rows = await self._all(SQL["task_list"], {"ws": workspace_id, "status": status, "limit": limit})
        return [TaskRow.model_validate(r) for r in rows]

    async def task_run(self, run_id: str) -> TaskRunRow | None:
        row = await self._one(SQL["task_run_get"], (run_id,))
        return TaskRunRow.model_validate(row) if row else None

    async def task_runs(self, task_id: str) -> list[TaskRunRow]:
        return [TaskRunRow.model_validate(r) for r in await self._all(SQL["task_runs_of"], (task_id,))]

    async def task_events(self, task_id: str) -> list[dict[str, Any]]:
        return await self._all(SQL["task_events"], (task_id,))

    async def expired_task_runs(self, now: datetime) -> list[TaskRunRow]:
        return [TaskRunRow.model_validate(r) for r in await self._all(SQL["task_runs_expired"], (ts(now),))]

    async def next_lease_expiry(self) -> datetime | None:
        row = await self._one(SQL["task_runs_next_expiry"])
        return datetime.fromisoformat(row["at"]) if row and row["at"] else None

    async def next_task_available(self, workspace_id: str | None) -> datetime | None:
        row = await self._one(SQL["task_next_available"], {"ws": workspace_id})
        return datetime.fromisoformat(row["at"]) if row and row["at"] else None

    async def live_task_runs_of(self, session_id: str, now: datetime) -> list[TaskRunRow]:
        return [TaskRunRow.model_validate(r) for r in await self._all(SQL["task_runs_live_of"], (session_id, ts(now)))]

    # ------------------------------------------------------------ channels

    async def channel(self, channel_id: str) -> ChannelRow | None:
        row = await self._one(SQL["channel_get"], (channel_id,))
        return ChannelRow.model_validate(row) if row else None

    async def channels(self, session_id: str | None, limit: int) -> list[ChannelRow]:
        """The channels `session_id` is a member of (None: every channel), most recently active first."""
        rows = await (self._all(SQL["channels_all"], (limit,)) if session_id is None
                      else self._all(SQL["channels_of"], (session_id, limit)))
        return [ChannelRow.model_validate(r) for r in rows]

    async def is_member(self, channel_id: str, session_id: str) -> bool:
        return await self._one(SQL["channel_member"], (channel_id, session_id)) is not None

    async def message(self, message_id: str) -> MessageRow | None:
        row = await self._one(SQL["message_get"], (message_id,))
        return MessageRow.model_validate(row) if row else None

    async def inbox(self, session_id: str, limit: int) -> tuple[list[MessageRow], int]:
        """What `session_id` has not yet received on its channels, oldest first, and how much there is."""
        rows = await self._all(SQL["inbox"], {"me": session_id, "limit": limit})
        count = await self._one(SQL["inbox_count"], {"me": session_id})
        return [MessageRow.model_validate(r) for r in rows], int(count["n"]) if count else 0

    async def session_workspace(self, session_id: str) -> str | None:
        row = await self._one(SQL["session_workspace"], (session_id,))
        return row["workspace_id"] if row else None

    async def profile(self, profile_id: str) -> ProfileRow | None:
        row = await self._one(SQL["profile_get"], (profile_id,))
        return ProfileRow.model_validate(row) if row else None

    async def profiles(self, *, workspace_id: str | None, own_workspace: str | None) -> list[ProfileRow]:
        """Profiles by scope then name: all (or one workspace's) for the local user (`own_workspace` None);
        for a session, the tenant's and its own workspace's."""
        rows = await self._all(SQL["profile_list"], {"all_ws": int(own_workspace is None), "ws": workspace_id,
                                                     "own": own_workspace})
        return [ProfileRow.model_validate(r) for r in rows]

    async def live_devices_of_tree(self, session_id: str) -> int:
        row = await self._one(SQL["devices_live_created_by_tree"], {"id": session_id})
        return int(next(iter(row.values()))) if row else 0

    async def default_profile(self, workspace_id: str | None) -> ProfileRow | None:
        """The default of a workspace (None: the tenant's)."""
        row = await self._one(SQL["profile_default"], (workspace_id or "",))
        return ProfileRow.model_validate(row) if row else None

    async def stream_last(self, stream: str) -> int:
        """The last sequence given out in a stream (0 when it has none)."""
        row = await self._one(SQL["stream_last"], (stream,))
        return int(row["last_sequence"]) if row else 0

    async def schema(self) -> dict[str, str]:
        """Name -> normalized SQL of every table and index (for the migration test)."""
        rows = await self._all("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
        return {r["name"]: " ".join(r["sql"].split()) for r in rows}


# WAL + synchronous NORMAL: a commit survives a crash or kill of the daemon (what we promise); only
# a power loss may roll back the last commits. FULL would fsync every commit for that extra case.
_PRAGMAS = ("foreign_keys = ON", "synchronous = NORMAL")


def _translated(exc: sqlite3.Error) -> errors.EngineError:
    """The driver's errors in the engine's terms, once, here."""
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in text:
        return errors.Conflict(f"already exists ({text})", evidence={"constraint": text})
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return errors.Busy(f"the database is busy ({text}); retry", suggested_command="agentdock daemon status")
    return errors.EngineError(f"database error: {text}")


_JSON_COLUMNS = ("env", "metadata", "payload", "secrets", "permissions", "spawn_budget", "applies_to", "connectors",
                 "resources", "policy")
_NULLABLE_JSON = ("tools", "profile_snapshot")
"""JSON columns where NULL means something (no bundle list; no profile)."""


def _encode(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, datetime):
            v = ts(v)
        elif k in _JSON_COLUMNS:
            v = json.dumps(v if v is not None else {})
        elif k in _NULLABLE_JSON:
            v = None if v is None else json.dumps(v)
        elif isinstance(v, bool):
            v = int(v)
        out[k] = v
    return out
