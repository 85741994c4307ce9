-- Spend through the model gateway and the caps on it. Spend is kept per workspace, UTC
-- day, provider and model (one row each, added to as answers arrive); a cap is a scope
-- (`day`: the whole daemon per UTC day; `workspace:<id>`: one workspace, all time) with a
-- limit in USD, in tokens, or both.
CREATE TABLE spend (
    workspace_id  TEXT NOT NULL,
    day           TEXT NOT NULL,          -- YYYY-MM-DD, UTC
    provider      TEXT NOT NULL,
    model         TEXT NOT NULL,
    requests      INTEGER NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    usd           REAL NOT NULL,
    PRIMARY KEY (workspace_id, day, provider, model)
) STRICT;
CREATE INDEX spend_by_day ON spend(day);

CREATE TABLE budgets (
    scope      TEXT PRIMARY KEY,
    usd        REAL,
    tokens     INTEGER,
    updated_at TEXT NOT NULL
) STRICT;
