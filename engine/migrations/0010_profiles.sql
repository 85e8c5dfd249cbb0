-- Agent runtime profiles (issue 10, seed 003): reusable run configuration, scoped to the tenant
-- (workspace_id NULL) or one workspace. A name is unique in its scope and a scope has at most one
-- default (both enforced here, whatever the service checks first). 0009 is the channels'.
CREATE TABLE agent_runtime_profiles (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT,
    name         TEXT NOT NULL,
    runtime      TEXT NOT NULL,
    description  TEXT,
    applies_to   TEXT NOT NULL,
    tools        TEXT,
    connectors   TEXT NOT NULL,
    env          TEXT NOT NULL,
    secrets      TEXT NOT NULL,
    model        TEXT,
    image        TEXT,
    resources    TEXT NOT NULL,
    network      INTEGER NOT NULL DEFAULT 0,
    policy       TEXT NOT NULL,
    metadata     TEXT NOT NULL,
    is_default   INTEGER NOT NULL DEFAULT 0,
    created_by   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE UNIQUE INDEX profiles_by_scope_name ON agent_runtime_profiles (COALESCE(workspace_id, ''), name);
CREATE UNIQUE INDEX profiles_default_of_scope ON agent_runtime_profiles (COALESCE(workspace_id, ''))
    WHERE is_default = 1;
-- What a run resolved its profile to, as it was then (a later update never rewrites history), and
-- the workspace whose default it looked for.
ALTER TABLE agent_runs ADD COLUMN profile_snapshot TEXT;
ALTER TABLE agent_runs ADD COLUMN workspace_id TEXT;
CREATE INDEX agent_runs_live_by_profile ON agent_runs (profile_id) WHERE status IN ('queued', 'running');
-- A session spawned under a profile is governed by it (tool bundles, child sandboxes, approval).
ALTER TABLE sessions ADD COLUMN profile_id TEXT;
ALTER TABLE sessions ADD COLUMN profile_snapshot TEXT;
