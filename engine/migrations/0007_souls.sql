-- Soul snapshots: a spawned session keeps the soul it had at spawn. A document is stored once per
-- digest; each snapshot names one (or none: there was no soul at spawn).
CREATE TABLE soul_documents (
    digest     TEXT PRIMARY KEY,
    content    BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE soul_snapshots (
    id                TEXT PRIMARY KEY,
    agent_name        TEXT NOT NULL,
    digest            TEXT REFERENCES soul_documents (digest),
    source            TEXT NOT NULL,
    source_path       TEXT,
    document_modified TEXT,
    created_at        TEXT NOT NULL,
    created_by        TEXT NOT NULL
);
CREATE INDEX soul_snapshots_by_agent ON soul_snapshots (agent_name, created_at);
