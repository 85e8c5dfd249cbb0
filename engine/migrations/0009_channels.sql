-- Channels (issue 9): durable, ordered message logs. A channel is made by the engine, not asked
-- for: one per spawned family (`family:<parent session>`, the parent and the children it spawned)
-- and one per claimed task (`task:<task>`, its creator and every session that claimed it). Its id
-- is derived from its name, so whoever needs it finds it without a lookup. A message's sequence is
-- its place in the channel; a session's cursor is the last sequence it has received there. A send
-- repeated with its idempotency key (per sender) finds the message the first one stored.
CREATE TABLE channels (
    id                    TEXT PRIMARY KEY,
    channel               TEXT NOT NULL UNIQUE,
    kind                  TEXT NOT NULL CHECK (kind IN ('family', 'task')),
    display_name          TEXT NOT NULL,
    purpose               TEXT NOT NULL,
    allowed_message_kinds TEXT NOT NULL,
    workspace_id          TEXT NOT NULL,
    owner_session_id      TEXT NOT NULL,
    run_id                TEXT,
    task_id               TEXT,
    workflow_id           TEXT,
    last_sequence         INTEGER NOT NULL DEFAULT 0,
    last_activity_at      TEXT NOT NULL,
    created_at            TEXT NOT NULL
);
CREATE TABLE channel_members (
    channel_id TEXT NOT NULL REFERENCES channels (id),
    session_id TEXT NOT NULL,
    joined_at  TEXT NOT NULL,
    PRIMARY KEY (channel_id, session_id)
) WITHOUT ROWID;
CREATE INDEX channel_members_by_session ON channel_members (session_id);
CREATE TABLE channel_messages (
    channel_id          TEXT NOT NULL REFERENCES channels (id),
    sequence            INTEGER NOT NULL,
    id                  TEXT NOT NULL UNIQUE,
    from_session_id     TEXT NOT NULL,
    to_session_id       TEXT,
    message_kind        TEXT NOT NULL,
    correlation_id      TEXT,
    reply_to_message_id TEXT,
    metadata            TEXT NOT NULL,
    body                TEXT NOT NULL,
    idempotency_key     TEXT,
    request_hash        TEXT,
    created_at          TEXT NOT NULL,
    PRIMARY KEY (channel_id, sequence)
);
CREATE UNIQUE INDEX channel_messages_by_key ON channel_messages (from_session_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE channel_cursors (
    channel_id TEXT NOT NULL REFERENCES channels (id),
    session_id TEXT NOT NULL,
    sequence   INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (channel_id, session_id)
) WITHOUT ROWID;
