-- A session's effective limits (issue 16): its runtime profile's intersected with its parent's, all the
-- way down, recorded at spawn as JSON (engine.authority.Limits). NULL only for a session spawned
-- before this migration; the daemon fills those in on start, parents before children.
ALTER TABLE sessions ADD COLUMN limits TEXT;
