-- Events belong to one or more streams (a run's, its group's), each with its own gapless
-- sequence assigned in the transaction that appends the event.
CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    run_id      TEXT,
    group_id    TEXT,
    type        TEXT NOT NULL,
    message     TEXT NOT NULL DEFAULT '',
    payload     TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL
);
CREATE TABLE streams (
    name           TEXT PRIMARY KEY,
    last_sequence  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE stream_events (
    stream    TEXT NOT NULL,
    sequence  INTEGER NOT NULL,
    event_id  TEXT NOT NULL REFERENCES events (id),
    PRIMARY KEY (stream, sequence)
) WITHOUT ROWID;

INSERT INTO events (id, run_id, group_id, type, message, payload, created_at)
    SELECT e.id, e.run_id, r.agent_run_group_id, e.type, e.message, e.payload, e.created_at
    FROM run_events e LEFT JOIN agent_runs r ON r.id = e.run_id;
INSERT INTO stream_events (stream, sequence, event_id) SELECT 'run:' || run_id, sequence, id FROM run_events;
INSERT INTO streams (name, last_sequence)
    SELECT 'run:' || run_id, MAX(sequence) FROM run_events GROUP BY run_id;
DROP TABLE run_events;

-- Kept output, appended a chunk at a time while a run goes (not rewritten whole on every flush),
-- folded into agent_runs.output / stderr once when the run's result is recorded.
CREATE TABLE output_chunks (
    run_id    TEXT NOT NULL REFERENCES agent_runs (id),
    stream    TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    seq       INTEGER NOT NULL,
    text      TEXT NOT NULL,
    PRIMARY KEY (run_id, stream, seq)
) WITHOUT ROWID;
