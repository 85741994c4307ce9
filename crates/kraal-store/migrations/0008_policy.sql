-- A workspace's housekeeping policy (idle stop, backup interval; JSON, unset fields take
-- the daemon's defaults) and when it was last backed up.
ALTER TABLE workspaces ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
ALTER TABLE workspaces ADD COLUMN last_backup_at TEXT;
