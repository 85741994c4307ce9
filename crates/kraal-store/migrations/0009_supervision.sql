-- Supervision from a phone: Web Push subscriptions (one per browser, owned by the login
-- token that made it), the single-use capabilities behind a notification's Approve/Deny
-- buttons, review comments on a workspace's diff, and logins of dev-server preview origins.
CREATE TABLE push_subscriptions (
    id           TEXT PRIMARY KEY,        -- ps-…
    token_id     TEXT REFERENCES api_tokens(id) ON DELETE CASCADE, -- NULL: made through the local API
    endpoint     TEXT NOT NULL UNIQUE,    -- the push service URL (RFC 8030)
    p256dh       TEXT NOT NULL,           -- the browser's public key, base64url
    auth         TEXT NOT NULL,           -- its authentication secret, base64url
    origin       TEXT NOT NULL,           -- the web UI's origin the browser subscribed from
    label        TEXT NOT NULL,           -- what the user calls the device
    kinds        TEXT NOT NULL,           -- JSON array: which kinds of notification it wants
    workspaces   TEXT NOT NULL,           -- JSON array of workspace ids; empty: all
    created_at   TEXT NOT NULL,
    last_sent_at TEXT,
    last_error   TEXT
) STRICT;

CREATE TABLE push_actions (
    hash            TEXT PRIMARY KEY,     -- SHA-256 of the capability; the capability is never stored
    session_id      TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    subscription_id TEXT,
    expires_at      INTEGER NOT NULL,     -- Unix seconds
    used_at         TEXT
) STRICT;
CREATE INDEX push_actions_by_request ON push_actions(session_id, request_id);

CREATE TABLE review_comments (
    id           TEXT PRIMARY KEY,        -- rc-…
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    path         TEXT NOT NULL,
    line         INTEGER NOT NULL,
    side         TEXT NOT NULL,           -- 'new': a line of the working tree; 'old': a removed line, numbered as in HEAD
    body         TEXT NOT NULL,
    excerpt      TEXT NOT NULL,           -- the code around the line when the comment was made
    author       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    resolved_at  TEXT,
    sent_to      TEXT,                    -- the session it was last sent to
    sent_at      TEXT
) STRICT;
CREATE INDEX review_comments_by_ws ON review_comments(workspace_id, created_at);

CREATE TABLE preview_logins (
    hash       TEXT PRIMARY KEY,          -- SHA-256 of the one-time code or of the cookie
    token_id   TEXT NOT NULL REFERENCES api_tokens(id) ON DELETE CASCADE,
    host       TEXT NOT NULL,             -- the preview origin's host it is valid for
    kind       TEXT NOT NULL,             -- 'code' (one-time, short-lived) or 'cookie'
    expires_at INTEGER NOT NULL           -- Unix seconds
) STRICT;
