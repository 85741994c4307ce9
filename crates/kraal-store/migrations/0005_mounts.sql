-- Host directories mounted into a workspace (JSON array of {host, path, writable}).
ALTER TABLE workspaces ADD COLUMN mounts TEXT NOT NULL DEFAULT '[]';
