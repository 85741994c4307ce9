-- Workspaces and their lifecycle log.
CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    backend     TEXT NOT NULL,
    source      TEXT NOT NULL,   -- JSON kraal_core::Source
    resources   TEXT NOT NULL,   -- JSON kraal_core::Resources
    state       TEXT NOT NULL,
    desired     TEXT NOT NULL,
    reason      TEXT,
    guest_token TEXT NOT NULL,
    guest_addr  TEXT,
    persistent  INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) STRICT;

CREATE TABLE workspace_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    at           TEXT NOT NULL,
    level        TEXT NOT NULL,
    message      TEXT NOT NULL
) STRICT;

CREATE INDEX workspace_events_by_ws ON workspace_events(workspace_id, seq);
