-- Tasks that came from somewhere (an issue, a schedule, a trigger) and the pull requests
-- kraal opened for them.
ALTER TABLE tasks ADD COLUMN pr TEXT;          -- JSON: kraal_core::PullState
ALTER TABLE tasks ADD COLUMN source_key TEXT;  -- e.g. github.com/octo/app#12: one task per key and attempt
CREATE UNIQUE INDEX tasks_by_source_key ON tasks(source_key, attempt) WHERE source_key IS NOT NULL;

-- Where tasks come from on their own: issues with a label on a git host, schedules, HTTP
-- triggers. The body is the task layer's (kraal-tasks) JSON; the store only keeps it.
CREATE TABLE task_sources (
    id         TEXT PRIMARY KEY,   -- src-…
    kind       TEXT NOT NULL,      -- issues, schedule, trigger
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL
) STRICT;
