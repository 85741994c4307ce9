-- The backup a workspace is being restored from, until the restore completes; a record
-- that still has it after a daemon restart is a half-restored workspace and is removed.
ALTER TABLE workspaces ADD COLUMN restoring TEXT;
