-- The leased task queue (issue 9): a task waits `queued` until a session claims it; each claim is a
-- task run holding a lease (`lease_until`) and a claim token kept only as its SHA-256. A run ends
-- completed, failed, released or expired; `failures` counts the attempts that count against
-- `max_attempts`, `attempts` every claim. Events are the task's own stream (`latest_event_seq`).
CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    title            TEXT NOT NULL,
    identifier       TEXT,
    priority         INTEGER NOT NULL CHECK (priority >= 0),
    payload          TEXT NOT NULL,
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    workspace_id     TEXT NOT NULL,
    scope            TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'claimed', 'completed', 'failed')),
    paused           INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    failures         INTEGER NOT NULL DEFAULT 0,
    available_at     TEXT NOT NULL,
    current_run_id   TEXT,
    failure_kind     TEXT,
    error            TEXT,
    result           TEXT,
    latest_event_seq INTEGER NOT NULL DEFAULT 0,
    created_by       TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    finished_at      TEXT
);
CREATE UNIQUE INDEX tasks_by_identifier ON tasks (workspace_id, identifier) WHERE identifier IS NOT NULL;
CREATE INDEX tasks_claimable ON tasks (workspace_id, priority DESC, created_at) WHERE status = 'queued';
CREATE INDEX tasks_claimable_anywhere ON tasks (priority DESC, created_at) WHERE status = 'queued';
CREATE TABLE task_runs (
    id               TEXT PRIMARY KEY,
    task_id          TEXT NOT NULL REFERENCES tasks (id),
    attempt          INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'released', 'expired')),
    session_id       TEXT NOT NULL,
    claim_token_hash TEXT NOT NULL,
    lease_seconds    REAL NOT NULL,
    claimed_at       TEXT NOT NULL,
    heartbeat_at     TEXT NOT NULL,
    lease_until      TEXT NOT NULL,
    ended_at         TEXT,
    error            TEXT,
    failure_kind     TEXT,
    result           TEXT,
    previous_run_id  TEXT,
    UNIQUE (task_id, attempt)
);
CREATE INDEX task_runs_live_by_lease ON task_runs (lease_until) WHERE status = 'running';
CREATE INDEX task_runs_live_by_session ON task_runs (session_id) WHERE status = 'running';
CREATE TABLE task_events (
    task_id    TEXT NOT NULL REFERENCES tasks (id),
    sequence   INTEGER NOT NULL,
    run_id     TEXT,
    type       TEXT NOT NULL,
    message    TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (task_id, sequence)
);
