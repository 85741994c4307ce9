-- What a workspace may reach (JSON array of egress rules; NULL: the default allowlist)
-- and which git hosts get credentials from which secret (JSON array).
ALTER TABLE workspaces ADD COLUMN egress TEXT;
ALTER TABLE workspaces ADD COLUMN git TEXT NOT NULL DEFAULT '[]';

-- Every connection a workspace's egress proxy allowed or refused.
CREATE TABLE egress_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace TEXT NOT NULL,
    at TEXT NOT NULL,
    method TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    addr TEXT,
    allowed INTEGER NOT NULL,
    reason TEXT,
    bytes_up INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL,
    ms INTEGER NOT NULL
);
CREATE INDEX egress_log_workspace ON egress_log (workspace, id);

-- Secrets, encrypted (XChaCha20-Poly1305, the key in the data directory, the name as
-- associated data).
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- Security-relevant actions: logins, tokens, secrets, exec, ssh.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
