-- Agent sessions and the daemon's mirror of their event logs (the guest agent keeps the
-- original on the workspace volume; sequence numbers are the guest's).
CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    agent         TEXT NOT NULL,
    spec          TEXT NOT NULL,   -- JSON kraal_core::AgentSpec
    title         TEXT NOT NULL,
    state         TEXT NOT NULL,
    reason        TEXT,
    agent_session TEXT,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd      REAL NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
) STRICT;

CREATE INDEX sessions_by_ws ON sessions(workspace_id, created_at);

CREATE TABLE session_events (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    at_ms      INTEGER NOT NULL,
    event      TEXT NOT NULL,      -- JSON kraal_core::AgentEvent
    PRIMARY KEY (session_id, seq)
) STRICT, WITHOUT ROWID;
