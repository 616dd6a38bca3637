-- Levee's PostgreSQL schema, version 5: drain test executions, the same table as SQLite's
-- version 5. The primary key and the unique (drain_test, scheduled_ms) let exactly one
-- replica's insert of a firing land (`ON CONFLICT DO NOTHING`).
CREATE TABLE drain_test_executions (
    id            TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    drain_test    TEXT COLLATE "C" NOT NULL,
    scheduled_ms  BIGINT NOT NULL,
    trigger       TEXT   NOT NULL,
    target        TEXT COLLATE "C" NOT NULL,
    state         TEXT COLLATE "C" NOT NULL,
    reason        TEXT   NOT NULL,
    drain_run     TEXT COLLATE "C",
    restore_run   TEXT COLLATE "C",
    created_by    TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    finished_ms   BIGINT,
    version       BIGINT NOT NULL CHECK (version >= 1),
    report        TEXT   NOT NULL,
    UNIQUE (drain_test, scheduled_ms)
);

CREATE INDEX drain_test_executions_state ON drain_test_executions (state, id);
