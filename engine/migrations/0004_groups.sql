-- Agent run groups: a group holds durable entries (one per dispatched manifest item) that the
-- scheduler claims under the group's concurrency_limit, each claim creating the entry's child run.
CREATE TABLE agent_run_groups (
    id                TEXT PRIMARY KEY,
    name              TEXT,
    workspace_id      TEXT,
    project_id        TEXT,
    concurrency_limit INTEGER NOT NULL CHECK (concurrency_limit >= 1),
    expected_runs     INTEGER,
    metadata          TEXT NOT NULL DEFAULT '{}',
    status            TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    cancel_requested  TEXT,
    idempotency_key   TEXT,
    request_hash      TEXT,
    finished_at       TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    created_by        TEXT NOT NULL,
    UNIQUE (created_by, idempotency_key)
);
CREATE INDEX agent_run_groups_by_created ON agent_run_groups (created_at, id);
CREATE INDEX agent_run_groups_by_status ON agent_run_groups (status, created_at);

-- One dispatch call: its idempotency key (scoped to its caller) makes a retried dispatch a no-op.
CREATE TABLE agent_run_group_dispatches (
    id               TEXT PRIMARY KEY,
    group_id         TEXT NOT NULL REFERENCES agent_run_groups (id),
    first_index      INTEGER NOT NULL,
    count            INTEGER NOT NULL,
    is_async         INTEGER NOT NULL,
    idempotency_key  TEXT,
    request_hash     TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    created_by       TEXT NOT NULL,
    UNIQUE (created_by, idempotency_key)
);

CREATE TABLE agent_run_group_entries (
    id           TEXT PRIMARY KEY,
    group_id     TEXT NOT NULL REFERENCES agent_run_groups (id),
    dispatch_id  TEXT NOT NULL REFERENCES agent_run_group_dispatches (id),
    position     INTEGER NOT NULL,
    item_index   INTEGER NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    run_id       TEXT,
    request      TEXT NOT NULL,
    diagnostic   TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    UNIQUE (group_id, position)
);
CREATE INDEX agent_run_group_entries_by_status ON agent_run_group_entries (status, group_id);
CREATE INDEX agent_run_group_entries_by_dispatch ON agent_run_group_entries (dispatch_id, item_index);
CREATE INDEX agent_run_group_entries_by_run ON agent_run_group_entries (run_id);
CREATE INDEX agent_runs_by_group ON agent_runs (agent_run_group_id, status);
