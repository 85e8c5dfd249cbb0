-- Devices (sandboxes and computers), agent runs, their events and artifacts.
CREATE TABLE devices (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('sandbox', 'computer')),
    name        TEXT,
    image       TEXT NOT NULL,
    cpus        REAL NOT NULL,
    memory_mb   INTEGER NOT NULL,
    pids_limit  INTEGER NOT NULL,
    network     INTEGER NOT NULL DEFAULT 0,
    env         TEXT NOT NULL DEFAULT '{}',
    metadata    TEXT NOT NULL DEFAULT '{}',
    ephemeral   INTEGER NOT NULL DEFAULT 0,
    run_id      TEXT,
    deleted_at  TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE agent_runs (
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
    idempotency_key  TEXT UNIQUE,
    request_hash     TEXT,
    last_event_seq   INTEGER NOT NULL DEFAULT 0,
    started_at       TEXT,
    finished_at      TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX agent_runs_by_target ON agent_runs (target_id, created_at);
CREATE INDEX agent_runs_by_status ON agent_runs (status, created_at);
CREATE INDEX agent_runs_by_created ON agent_runs (created_at, id);

CREATE TABLE run_events (
    id          TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL REFERENCES agent_runs (id),
    sequence    INTEGER NOT NULL,
    type        TEXT NOT NULL,
    message     TEXT NOT NULL DEFAULT '',
    payload     TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    UNIQUE (run_id, sequence)
);

CREATE TABLE artifacts (
    run_id      TEXT NOT NULL REFERENCES agent_runs (id),
    path        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    stored_as   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (run_id, path)
);
