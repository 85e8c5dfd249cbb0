-- The schema of migrations 0001-0018 in PostgreSQL's words, as one step: a PostgreSQL store starts here.
-- Types follow the SQLite schema (timestamps are the same sortable text, JSON is text, flags are 0/1);
-- the tables a query orders by SQLite's implicit rowid get it as a real column.

CREATE FUNCTION json_extract(document TEXT, path TEXT) RETURNS TEXT
  LANGUAGE SQL IMMUTABLE STRICT
  RETURN document::jsonb #>> string_to_array(substr(path, 3), '.');

CREATE TABLE sessions (
  id TEXT PRIMARY KEY,
  agent_name TEXT NOT NULL,
  name TEXT,
  token_hash TEXT NOT NULL UNIQUE,
  status TEXT NOT NULL CHECK (status IN ('active', 'stopped', 'expired')),
  stop_reason TEXT,
  parent_session_id TEXT NOT NULL,
  root_session_id TEXT NOT NULL,
  spawn_depth BIGINT NOT NULL,
  spawn_role TEXT,
  auto_stop_on_parent BIGINT NOT NULL,
  permissions TEXT NOT NULL,
  spawn_budget TEXT NOT NULL,
  ttl_expires_at TEXT NOT NULL,
  workspace_id TEXT NOT NULL,
  run_id TEXT,
  soul_snapshot_id TEXT,
  provider TEXT,
  model TEXT,
  created_by TEXT NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  stopped_at TEXT,
  profile_id TEXT,
  profile_snapshot TEXT,
  limits TEXT
);

CREATE TABLE devices (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('sandbox', 'computer')),
  name TEXT,
  image TEXT NOT NULL,
  cpus DOUBLE PRECISION NOT NULL,
  memory_mb BIGINT NOT NULL,
  pids_limit BIGINT NOT NULL,
  network BIGINT NOT NULL DEFAULT 0,
  env TEXT NOT NULL DEFAULT '{}',
  metadata TEXT NOT NULL DEFAULT '{}',
  ephemeral BIGINT NOT NULL DEFAULT 0,
  run_id TEXT,
  deleted_at TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  created_by TEXT NOT NULL DEFAULT 'ses_root',
  pool TEXT,
  workspace_mb BIGINT,
  tmp_mb BIGINT
);

CREATE TABLE agent_runs (
  rowid BIGINT GENERATED ALWAYS AS IDENTITY,
  id TEXT PRIMARY KEY,
  target_kind TEXT NOT NULL,
  target_id TEXT NOT NULL,
  provider TEXT NOT NULL,
  prompt TEXT NOT NULL,
  command TEXT,
  model TEXT,
  cwd TEXT NOT NULL,
  timeout BIGINT NOT NULL,
  metadata TEXT NOT NULL DEFAULT '{}',
  env TEXT NOT NULL DEFAULT '{}',
  status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
  output TEXT NOT NULL DEFAULT '',
  stderr TEXT NOT NULL DEFAULT '',
  output_truncated BIGINT NOT NULL DEFAULT 0,
  stderr_truncated BIGINT NOT NULL DEFAULT 0,
  stdout_offset BIGINT NOT NULL DEFAULT 0,
  stderr_offset BIGINT NOT NULL DEFAULT 0,
  exit_code BIGINT,
  failure_kind TEXT,
  error TEXT,
  ephemeral BIGINT NOT NULL DEFAULT 0,
  cancel_requested TEXT,
  agent_run_group_id TEXT,
  orchestration_role TEXT,
  parent_agent_run_id TEXT,
  profile_id TEXT,
  idempotency_key TEXT,
  request_hash TEXT,
  last_event_seq BIGINT NOT NULL DEFAULT 0,
  started_at TEXT,
  finished_at TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  created_by TEXT NOT NULL DEFAULT 'ses_root',
  secrets TEXT NOT NULL DEFAULT '[]',
  profile_snapshot TEXT,
  workspace_id TEXT,
  pids_peak BIGINT,
  memory_peak_bytes BIGINT,
  model_requests BIGINT NOT NULL DEFAULT 0,
  input_tokens BIGINT NOT NULL DEFAULT 0,
  output_tokens BIGINT NOT NULL DEFAULT 0,
  UNIQUE (created_by, idempotency_key)
);

CREATE TABLE events (
  id TEXT PRIMARY KEY,
  run_id TEXT,
  group_id TEXT,
  type TEXT NOT NULL,
  message TEXT NOT NULL DEFAULT '',
  payload TEXT NOT NULL DEFAULT '{}',
  created_at TEXT NOT NULL
);

CREATE TABLE streams (
  name TEXT PRIMARY KEY,
  last_sequence BIGINT NOT NULL
);

CREATE TABLE stream_events (
  stream TEXT NOT NULL,
  sequence BIGINT NOT NULL,
  event_id TEXT NOT NULL REFERENCES events (id),
  PRIMARY KEY (stream, sequence)
);

CREATE TABLE output_chunks (
  run_id TEXT NOT NULL REFERENCES agent_runs (id),
  stream TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr')),
  seq BIGINT NOT NULL,
  text TEXT NOT NULL,
  PRIMARY KEY (run_id, stream, seq)
);

CREATE TABLE artifacts (
  run_id TEXT NOT NULL REFERENCES agent_runs (id),
  path TEXT NOT NULL,
  size BIGINT NOT NULL,
  sha256 TEXT NOT NULL,
  stored_as TEXT NOT NULL,
  created_at TEXT NOT NULL,
  PRIMARY KEY (run_id, path)
);

CREATE TABLE agent_run_groups (
  id TEXT PRIMARY KEY,
  name TEXT,
  workspace_id TEXT,
  project_id TEXT,
  concurrency_limit BIGINT NOT NULL CHECK (concurrency_limit >= 1),
  expected_runs BIGINT,
  metadata TEXT NOT NULL DEFAULT '{}',
  status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
  cancel_requested TEXT,
  idempotency_key TEXT,
  request_hash TEXT,
  finished_at TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  created_by TEXT NOT NULL,
  UNIQUE (created_by, idempotency_key)
);

CREATE TABLE agent_run_group_dispatches (
  id TEXT PRIMARY KEY,
  group_id TEXT NOT NULL REFERENCES agent_run_groups (id),
  first_index BIGINT NOT NULL,
  count BIGINT NOT NULL,
  is_async BIGINT NOT NULL,
  idempotency_key TEXT,
  request_hash TEXT NOT NULL,
  created_at TEXT NOT NULL,
  created_by TEXT NOT NULL,
  UNIQUE (created_by, idempotency_key)
);

CREATE TABLE agent_run_group_entries (
  rowid BIGINT GENERATED ALWAYS AS IDENTITY,
  id TEXT PRIMARY KEY,
  group_id TEXT NOT NULL REFERENCES agent_run_groups (id),
  dispatch_id TEXT NOT NULL REFERENCES agent_run_group_dispatches (id),
  position BIGINT NOT NULL,
  item_index BIGINT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
  attempts BIGINT NOT NULL DEFAULT 0,
  run_id TEXT,
  request TEXT NOT NULL,
  diagnostic TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  UNIQUE (group_id, position)
);

CREATE TABLE soul_documents (
  digest TEXT PRIMARY KEY,
  content BYTEA NOT NULL,
  created_at TEXT NOT NULL
);

CREATE TABLE soul_snapshots (
  id TEXT PRIMARY KEY,
  agent_name TEXT NOT NULL,
  digest TEXT REFERENCES soul_documents (digest),
  source TEXT NOT NULL,
  source_path TEXT,
  document_modified TEXT,
  created_at TEXT NOT NULL,
  created_by TEXT NOT NULL
);

CREATE TABLE tasks (
  rowid BIGINT GENERATED ALWAYS AS IDENTITY,
  id TEXT PRIMARY KEY,
  title TEXT NOT NULL,
  identifier TEXT,
  priority BIGINT NOT NULL CHECK (priority >= 0),
  payload TEXT NOT NULL,
  max_attempts BIGINT NOT NULL CHECK (max_attempts >= 1),
  workspace_id TEXT NOT NULL,
  scope TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('queued', 'claimed', 'completed', 'failed')),
  paused BIGINT NOT NULL DEFAULT 0,
  attempts BIGINT NOT NULL DEFAULT 0,
  failures BIGINT NOT NULL DEFAULT 0,
  available_at TEXT NOT NULL,
  current_run_id TEXT,
  failure_kind TEXT,
  error TEXT,
  result TEXT,
  latest_event_seq BIGINT NOT NULL DEFAULT 0,
  created_by TEXT NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  finished_at TEXT,
  body_bytes BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE task_runs (
  id TEXT PRIMARY KEY,
  task_id TEXT NOT NULL REFERENCES tasks (id),
  attempt BIGINT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'released', 'expired')),
  session_id TEXT NOT NULL,
  claim_token_hash TEXT NOT NULL,
  lease_seconds DOUBLE PRECISION NOT NULL,
  claimed_at TEXT NOT NULL,
  heartbeat_at TEXT NOT NULL,
  lease_until TEXT NOT NULL,
  ended_at TEXT,
  error TEXT,
  failure_kind TEXT,
  result TEXT,
  previous_run_id TEXT,
  UNIQUE (task_id, attempt)
);

CREATE TABLE task_events (
  task_id TEXT NOT NULL REFERENCES tasks (id),
  sequence BIGINT NOT NULL,
  run_id TEXT,
  type TEXT NOT NULL,
  message TEXT NOT NULL,
  payload TEXT NOT NULL,
  created_at TEXT NOT NULL,
  PRIMARY KEY (task_id, sequence)
);

CREATE TABLE channels (
  id TEXT PRIMARY KEY,
  channel TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL CHECK (kind IN ('family', 'task')),
  display_name TEXT NOT NULL,
  purpose TEXT NOT NULL,
  allowed_message_kinds TEXT NOT NULL,
  workspace_id TEXT NOT NULL,
  owner_session_id TEXT NOT NULL,
  run_id TEXT,
  task_id TEXT,
  workflow_id TEXT,
  last_sequence BIGINT NOT NULL DEFAULT 0,
  last_activity_at TEXT NOT NULL,
  created_at TEXT NOT NULL
);

CREATE TABLE channel_members (
  channel_id TEXT NOT NULL REFERENCES channels (id),
  session_id TEXT NOT NULL,
  joined_at TEXT NOT NULL,
  PRIMARY KEY (channel_id, session_id)
);

CREATE TABLE channel_cursors (
  channel_id TEXT NOT NULL REFERENCES channels (id),
  session_id TEXT NOT NULL,
  sequence BIGINT NOT NULL,
  updated_at TEXT NOT NULL,
  PRIMARY KEY (channel_id, session_id)
);

CREATE TABLE channel_messages (
  channel_id TEXT NOT NULL REFERENCES channels (id),
  sequence BIGINT NOT NULL,
  id TEXT NOT NULL UNIQUE,
  from_session_id TEXT NOT NULL,
  to_session_id TEXT,
  message_kind TEXT NOT NULL,
  correlation_id TEXT,
  reply_to_message_id TEXT,
  metadata TEXT NOT NULL,
  body TEXT NOT NULL,
  idempotency_key TEXT,
  request_hash TEXT,
  created_at TEXT NOT NULL,
  PRIMARY KEY (channel_id, sequence)
);

CREATE TABLE agent_runtime_profiles (
  id TEXT PRIMARY KEY,
  workspace_id TEXT,
  name TEXT NOT NULL,
  runtime TEXT NOT NULL,
  description TEXT,
  applies_to TEXT NOT NULL,
  tools TEXT,
  connectors TEXT NOT NULL,
  env TEXT NOT NULL,
  secrets TEXT NOT NULL,
  model TEXT,
  image TEXT,
  resources TEXT NOT NULL,
  network BIGINT NOT NULL DEFAULT 0,
  policy TEXT NOT NULL,
  metadata TEXT NOT NULL,
  is_default BIGINT NOT NULL DEFAULT 0,
  created_by TEXT NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);

CREATE TABLE usage (
  scope TEXT PRIMARY KEY,
  messages BIGINT NOT NULL DEFAULT 0,
  message_bytes BIGINT NOT NULL DEFAULT 0,
  tasks BIGINT NOT NULL DEFAULT 0,
  task_bytes BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE approvals (
  rowid BIGINT GENERATED ALWAYS AS IDENTITY,
  id TEXT PRIMARY KEY,
  session_id TEXT NOT NULL REFERENCES sessions (id),
  workspace_id TEXT NOT NULL,
  profile_id TEXT,
  action TEXT NOT NULL,
  summary TEXT NOT NULL,
  detail TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'used')),
  expires_at TEXT NOT NULL,
  decided_by TEXT,
  decided_at TEXT,
  reason TEXT,
  used_at TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);

CREATE INDEX agent_run_group_entries_by_dispatch ON agent_run_group_entries (dispatch_id, item_index);
CREATE INDEX agent_run_group_entries_by_run ON agent_run_group_entries (run_id);
CREATE INDEX agent_run_group_entries_by_status ON agent_run_group_entries (status, group_id);
CREATE INDEX agent_run_groups_by_created ON agent_run_groups (created_at, id);
CREATE INDEX agent_run_groups_by_status ON agent_run_groups (status, created_at);
CREATE INDEX agent_runs_by_created ON agent_runs (created_at, id);
CREATE INDEX agent_runs_by_creator ON agent_runs (created_by, created_at, id);
CREATE INDEX agent_runs_by_group ON agent_runs (agent_run_group_id, status);
CREATE INDEX agent_runs_by_status ON agent_runs (status, created_at);
CREATE INDEX agent_runs_by_target ON agent_runs (target_id, created_at);
CREATE INDEX agent_runs_live_by_profile ON agent_runs (profile_id) WHERE status IN ('queued', 'running');
CREATE INDEX approvals_by_action ON approvals (session_id, action, created_at);
CREATE INDEX approvals_by_created ON approvals (created_at);
CREATE INDEX approvals_open ON approvals (expires_at) WHERE status IN ('pending', 'approved');
CREATE INDEX channel_members_by_session ON channel_members (session_id);
CREATE INDEX channel_messages_by_correlation ON channel_messages (channel_id, correlation_id) WHERE correlation_id IS NOT NULL;
CREATE UNIQUE INDEX channel_messages_by_key ON channel_messages (from_session_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX devices_pooled ON devices (pool) WHERE pool IS NOT NULL AND deleted_at IS NULL;
CREATE UNIQUE INDEX profiles_by_scope_name ON agent_runtime_profiles (COALESCE(workspace_id, ''), name);
CREATE UNIQUE INDEX profiles_default_of_scope ON agent_runtime_profiles (COALESCE(workspace_id, '')) WHERE is_default = 1;
CREATE INDEX sessions_by_parent ON sessions (parent_session_id, status);
CREATE INDEX sessions_by_workspace ON sessions (workspace_id, status);
CREATE INDEX sessions_live_by_expiry ON sessions (ttl_expires_at) WHERE status = 'active';
CREATE INDEX soul_snapshots_by_agent ON soul_snapshots (agent_name, created_at);
CREATE INDEX task_runs_live_by_lease ON task_runs (lease_until) WHERE status = 'running';
CREATE INDEX task_runs_live_by_session ON task_runs (session_id) WHERE status = 'running';
CREATE UNIQUE INDEX tasks_by_identifier ON tasks (workspace_id, identifier) WHERE identifier IS NOT NULL;
CREATE INDEX tasks_claimable ON tasks (workspace_id, priority DESC, created_at) WHERE status = 'queued';
CREATE INDEX tasks_claimable_anywhere ON tasks (priority DESC, created_at) WHERE status = 'queued';
