-- Sessions: agent identities below the root session (the local user, never a row here). A token is
-- kept only as its SHA-256; lineage, permission policy and spawn budget are seed 002's.
CREATE TABLE sessions (
    id                  TEXT PRIMARY KEY,
    agent_name          TEXT NOT NULL,
    name                TEXT,
    token_hash          TEXT NOT NULL UNIQUE,
    status              TEXT NOT NULL CHECK (status IN ('active', 'stopped', 'expired')),
    stop_reason         TEXT,
    parent_session_id   TEXT NOT NULL,
    root_session_id     TEXT NOT NULL,
    spawn_depth         INTEGER NOT NULL,
    spawn_role          TEXT,
    auto_stop_on_parent INTEGER NOT NULL,
    permissions         TEXT NOT NULL,
    spawn_budget        TEXT NOT NULL,
    ttl_expires_at      TEXT NOT NULL,
    workspace_id        TEXT NOT NULL,
    run_id              TEXT,
    soul_snapshot_id    TEXT,
    provider            TEXT,
    model               TEXT,
    created_by          TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    stopped_at          TEXT
);
CREATE INDEX sessions_by_parent ON sessions (parent_session_id, status);
CREATE INDEX sessions_by_workspace ON sessions (workspace_id, status);
CREATE INDEX sessions_live_by_expiry ON sessions (ttl_expires_at) WHERE status = 'active';
