-- The image a workspace was created from (NULL: the backend's default at the time).
ALTER TABLE workspaces ADD COLUMN image TEXT;
