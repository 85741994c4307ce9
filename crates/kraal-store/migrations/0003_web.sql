-- Access tokens (`kraal token create`), web login sessions, and launch templates.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    hash         TEXT NOT NULL UNIQUE,   -- SHA-256 of the token; the token itself is never stored
    created_at   TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
) STRICT;

CREATE TABLE web_sessions (
    hash       TEXT PRIMARY KEY,         -- SHA-256 of the cookie value
    token_id   TEXT NOT NULL REFERENCES api_tokens(id) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at INTEGER NOT NULL          -- Unix seconds
) STRICT;

CREATE TABLE templates (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    deleted_at TEXT
) STRICT;

CREATE TABLE template_versions (
    template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    spec        TEXT NOT NULL,           -- JSON TemplateSpec
    created_at  TEXT NOT NULL,
    PRIMARY KEY (template_id, version)
) STRICT;
