-- Quotas per tree of sessions and per workspace (issue 16), not per session: a parent that spawned
-- a fresh child got a fresh quota with it. A scope is `tree:<session id>` (a child of the local user
-- and every session spawned below it) or `workspace:<id>`; each counts what its sessions wrote into
-- channels (messages, bytes of bodies and metadata) and the task queue (tasks, bytes of titles,
-- payloads, results and errors). The local user has no quota and is not counted.
CREATE TABLE usage (
    scope         TEXT PRIMARY KEY,
    messages      INTEGER NOT NULL DEFAULT 0,
    message_bytes INTEGER NOT NULL DEFAULT 0,
    tasks         INTEGER NOT NULL DEFAULT 0,
    task_bytes    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- What a task's bodies (payload, result, error) take, kept so a list weighs its page without reading them.
ALTER TABLE tasks ADD COLUMN body_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE tasks SET body_bytes = length(CAST(payload AS BLOB)) + COALESCE(length(CAST(result AS BLOB)), 0)
    + COALESCE(length(CAST(error AS BLOB)), 0);

-- Usage so far, counted from the records themselves (the per-session counts are dropped).
CREATE TEMP TABLE tree_of AS
WITH RECURSIVE down(id, tree) AS (
    SELECT id, id FROM sessions WHERE parent_session_id = 'ses_root'
    UNION ALL SELECT s.id, d.tree FROM sessions s JOIN down d ON s.parent_session_id = d.id
) SELECT id, tree FROM down;
INSERT INTO usage (scope, messages, message_bytes)
SELECT scope, sum(n), sum(b) FROM (
    SELECT 'tree:' || t.tree AS scope, count(*) AS n,
           sum(length(CAST(m.body AS BLOB)) + length(CAST(m.metadata AS BLOB))) AS b
    FROM channel_messages m JOIN tree_of t ON t.id = m.from_session_id GROUP BY t.tree
    UNION ALL
    SELECT 'workspace:' || c.workspace_id, count(*), sum(length(CAST(m.body AS BLOB)) + length(CAST(m.metadata AS BLOB)))
    FROM channel_messages m JOIN channels c ON c.id = m.channel_id
    WHERE m.from_session_id != 'ses_root' GROUP BY c.workspace_id
) GROUP BY scope;
INSERT INTO usage (scope, tasks, task_bytes)
SELECT scope, sum(n), sum(b) FROM (
    SELECT 'tree:' || t.tree AS scope, count(*) AS n, sum(length(CAST(k.title AS BLOB)) + k.body_bytes) AS b
    FROM tasks k JOIN tree_of t ON t.id = k.created_by GROUP BY t.tree
    UNION ALL
    SELECT 'workspace:' || k.workspace_id, count(*), sum(length(CAST(k.title AS BLOB)) + k.body_bytes)
    FROM tasks k WHERE k.created_by != 'ses_root' GROUP BY k.workspace_id
) WHERE true GROUP BY scope
ON CONFLICT (scope) DO UPDATE SET tasks = excluded.tasks, task_bytes = excluded.task_bytes;
DROP TABLE tree_of;
DROP TABLE channel_usage;

-- A send's correlation id is the sender's own: one that another session's message in the channel
-- already carries (a request it made) is refused, so a send cannot pass for someone else's reply.
CREATE INDEX channel_messages_by_correlation ON channel_messages (channel_id, correlation_id)
    WHERE correlation_id IS NOT NULL;
