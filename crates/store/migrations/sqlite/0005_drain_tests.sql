-- Levee's SQLite schema, version 5: drain test executions.
--
-- One row per firing of a drain test (scheduled or asked for), its id
-- `dt-NAME-YYYYMMDDTHHMMZ` naming the slot. Every replica's scheduler tries to insert the slot
-- it finds due; the primary key (and the unique (drain_test, scheduled_ms)) lets exactly one
-- insert land, so a firing happens once however many replicas saw it.
CREATE TABLE drain_test_executions (
    id            TEXT    NOT NULL PRIMARY KEY,
    drain_test    TEXT    NOT NULL,
    scheduled_ms  INTEGER NOT NULL,
    trigger       TEXT    NOT NULL,  -- schedule or manual
    target        TEXT    NOT NULL,  -- the datacenter; empty when skipped before picking
    state         TEXT    NOT NULL,  -- draining, restoring, passed, failed or skipped
    reason        TEXT    NOT NULL,
    drain_run     TEXT,
    restore_run   TEXT,
    created_by    TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    finished_ms   INTEGER,
    version       INTEGER NOT NULL CHECK (version >= 1),
    report        TEXT    NOT NULL,  -- JSON: the evaluation and the runs' reports
    UNIQUE (drain_test, scheduled_ms)
) STRICT;

CREATE INDEX drain_test_executions_state ON drain_test_executions (state, id);
