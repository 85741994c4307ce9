-- Tasks: a prompt and where to run it, queued until a slot is free, then run in a
-- workspace of its own (named after the task, so a restarted daemon adopts it instead
-- of making a second one).
CREATE TABLE tasks (
    id           TEXT PRIMARY KEY,        -- tk-…
    title        TEXT NOT NULL,
    prompt       TEXT NOT NULL,
    spec         TEXT NOT NULL,           -- JSON: kraal_core::TaskSpec
    repo         TEXT NOT NULL,           -- what the per-repository limit counts by
    origin       TEXT NOT NULL,           -- who or what made it: cli, api, web, …
    state        TEXT NOT NULL,           -- queued, running, needs_review, done, failed, cancelled
    reason       TEXT,
    group_id     TEXT,                    -- the attempts of one best-of-N task share it
    attempt      INTEGER NOT NULL,        -- 1…N within its group
    tries        INTEGER NOT NULL,        -- times it was started (retries make it grow)
    workspace_id TEXT,
    session_id   TEXT,
    check_code   INTEGER,                 -- exit code of the check command
    check_output TEXT,                    -- its last lines
    diff_files   INTEGER,                 -- what the attempt changed, counted when its turn ended
    diff_added   INTEGER,
    diff_removed INTEGER,
    picked       INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,                    -- when its turn ended (or it failed / was cancelled)
    updated_at   TEXT NOT NULL
) STRICT;
CREATE INDEX tasks_by_state ON tasks(state, created_at);
CREATE INDEX tasks_by_group ON tasks(group_id);
