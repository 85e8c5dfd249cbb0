-- Records remember who created them, and idempotency keys are scoped to that caller.
-- agent_runs is rebuilt to drop the global UNIQUE on idempotency_key (SQLite cannot drop it in
-- place); Store.migrate() turns foreign keys off around migrations and checks them after.
ALTER TABLE devices ADD COLUMN created_by TEXT NOT NULL DEFAULT 'ses_root';

CREATE TABLE agent_runs_new (
    id               TEXT PRIMARY KEY,
    target_kind      TEXT NOT NULL,
    target_id        TEXT NOT NULL,
    provider         TEXT NOT NULL,
    prompt           TEXT NOT NULL,
    command          TEXT,
    model            TEXT,
    cwd              TEXT NOT NULL,
    timeout          INTEGER NOT NULL,
    metadata         TEXT NOT NULL DEFAULT '{}',
    env              TEXT NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    output           TEXT NOT NULL DEFAULT '',
    stderr           TEXT NOT NULL DEFAULT '',
    output_truncated INTEGER NOT NULL DEFAULT 0,
    stderr_truncated INTEGER NOT NULL DEFAULT 0,
    stdout_offset    INTEGER NOT NULL DEFAULT 0,
    stderr_offset    INTEGER NOT NULL DEFAULT 0,
    exit_code        INTEGER,
    failure_kind     TEXT,
    error            TEXT,
    ephemeral        INTEGER NOT NULL DEFAULT 0,
    cancel_requested TEXT,
    agent_run_group_id  TEXT,
    orchestration_role  TEXT,
    parent_agent_run_id TEXT,
    profile_id       TEXT,
    idempotency_key  TEXT,
    request_hash     TEXT,
    last_event_seq   INTEGER NOT NULL DEFAULT 0,
    started_at       TEXT,
    finished_at      TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    created_by       TEXT NOT NULL DEFAULT 'ses_root',
    UNIQUE (created_by, idempotency_key)
);
INSERT INTO agent_runs_new (id, target_kind, target_id, provider, prompt, command, model, cwd, timeout, metadata,
    env, status, output, stderr, output_truncated, stderr_truncated, stdout_offset, stderr_offset, exit_code,
    failure_kind, error, ephemeral, cancel_requested, agent_run_group_id, orchestration_role, parent_agent_run_id,
    profile_id, idempotency_key, request_hash, last_event_seq, started_at, finished_at, created_at, updated_at)
SELECT id, target_kind, target_id, provider, prompt, command, model, cwd, timeout, metadata,
    env, status, output, stderr, output_truncated, stderr_truncated, stdout_offset, stderr_offset, exit_code,
    failure_kind, error, ephemeral, cancel_requested, agent_run_group_id, orchestration_role, parent_agent_run_id,
    profile_id, idempotency_key, request_hash, last_event_seq, started_at, finished_at, created_at, updated_at
FROM agent_runs;
DROP TABLE agent_runs;
ALTER TABLE agent_runs_new RENAME TO agent_runs;
CREATE INDEX agent_runs_by_target ON agent_runs (target_id, created_at);
CREATE INDEX agent_runs_by_status ON agent_runs (status, created_at);
CREATE INDEX agent_runs_by_created ON agent_runs (created_at, id);
CREATE INDEX agent_runs_by_creator ON agent_runs (created_by, created_at, id);
