-- Several daemons on one database (PostgreSQL): each records itself and beats; one holds the leader's
-- lease (reapers, and settling the runs of a daemon that stopped beating). A run records the daemon
-- that started it, a device the daemon whose Docker engine holds it. NULL: made before, by the one
-- daemon of a SQLite file.
CREATE TABLE daemons (
  id TEXT PRIMARY KEY,
  home TEXT NOT NULL,
  host TEXT NOT NULL,
  pid INTEGER NOT NULL,
  started_at TEXT NOT NULL,
  heartbeat_at TEXT NOT NULL,
  lost_at TEXT
);
CREATE TABLE leases (
  name TEXT PRIMARY KEY,
  holder TEXT NOT NULL,
  expires_at TEXT NOT NULL
);
ALTER TABLE agent_runs ADD COLUMN daemon_id TEXT;
ALTER TABLE devices ADD COLUMN daemon_id TEXT;
CREATE INDEX agent_runs_live_by_daemon ON agent_runs (daemon_id) WHERE status IN ('queued', 'running');
