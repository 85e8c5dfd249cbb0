-- What each session has written to channels (messages and bytes of body and metadata), so a session
-- that floods its channels is stopped at its quota instead of filling the disk. The local user has none.
CREATE TABLE channel_usage (
    session_id TEXT PRIMARY KEY,
    messages   INTEGER NOT NULL,
    bytes      INTEGER NOT NULL
) WITHOUT ROWID;
