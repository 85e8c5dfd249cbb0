-- Approvals a person gives (issue 16, part 3). A risky action of a session whose approval policy is
-- `confirm-risky` records one here and is refused until a person decides it. `action` is the call's
-- canonical key (`device.delete:sbx_...`): only the same session repeating the same call may use an
-- approved one, once (status `used`). `expires_at` is until when a pending one waits for a person,
-- an approved one for its use, a denied one refuses the same call again. Who decided and when is on
-- the record; the `approvals` event stream keeps the history.
-- Numbered 15, not 13 or 14: those are taken by other branches (device pool, and one merged separately).
CREATE TABLE approvals (
    id           TEXT PRIMARY KEY,
    session_id   TEXT NOT NULL REFERENCES sessions (id),
    workspace_id TEXT NOT NULL,
    profile_id   TEXT,
    action       TEXT NOT NULL,
    summary      TEXT NOT NULL,
    detail       TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'used')),
    expires_at   TEXT NOT NULL,
    decided_by   TEXT,
    decided_at   TEXT,
    reason       TEXT,
    used_at      TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX approvals_by_action ON approvals (session_id, action, created_at);
CREATE INDEX approvals_open ON approvals (expires_at) WHERE status IN ('pending', 'approved');
CREATE INDEX approvals_by_created ON approvals (created_at);
