-- Levee's SQLite schema, version 2: runbook runs and server-wide settings.
--
-- The same rules as version 1: STRICT tables, times as integer epoch milliseconds, JSON as
-- TEXT parsed by the store.

-- One row per run: what it was created with (kept as given) and the run-level part of the
-- engine's state. `version` grows by one per committed change and is the compare-and-set
-- basis of every commit. The task counters are kept up to date by the trigger below, so a
-- listing of runs never has to read their tasks.
CREATE TABLE runs (
    id              TEXT    NOT NULL PRIMARY KEY,
    name            TEXT    UNIQUE,            -- client-supplied idempotency name; NULL if none
    runbook         TEXT    NOT NULL,
    runbook_version INTEGER NOT NULL,
    created_by      TEXT    NOT NULL,
    status          TEXT    NOT NULL,          -- RunStatus::name()
    version         INTEGER NOT NULL CHECK (version >= 1),
    created_at_ms   INTEGER NOT NULL,
    started_at_ms   INTEGER,
    started_by      TEXT,
    finished_at_ms  INTEGER,
    outcome         TEXT,
    max_parallel    INTEGER NOT NULL CHECK (max_parallel >= 1),
    tasks_total     INTEGER NOT NULL CHECK (tasks_total >= 0),
    tasks_done      INTEGER NOT NULL CHECK (tasks_done >= 0),     -- succeeded or skipped
    tasks_running   INTEGER NOT NULL CHECK (tasks_running >= 0),
    tasks_failed    INTEGER NOT NULL CHECK (tasks_failed >= 0)    -- failed or stalled
) STRICT;

-- What a run was created with, written once: kept out of `runs` because a spec of 10,000
-- tasks is megabytes, and SQLite rewrites (and walks the overflow pages of) a row on every
-- update; the hot row then costs a page, not a megabyte, per commit.
CREATE TABLE run_specs (
    run_id TEXT NOT NULL PRIMARY KEY REFERENCES runs (id),
    params TEXT NOT NULL,  -- JSON: the bound parameter values
    spec   TEXT NOT NULL   -- JSON: what the server executes, opaque here
) STRICT;

-- Listings are newest first, optionally by status or runbook; ties on time break by id.
CREATE INDEX runs_created ON runs (created_at_ms, id);
CREATE INDEX runs_status ON runs (status, created_at_ms, id);
CREATE INDEX runs_runbook ON runs (runbook, created_at_ms, id);

-- One row per task of a run, in plan order (`idx`). The status and times are columns so SQL
-- can count and select on them; `record` is the engine's whole TaskRecord.
CREATE TABLE run_tasks (
    run_id         TEXT    NOT NULL REFERENCES runs (id),
    idx            INTEGER NOT NULL CHECK (idx >= 0),
    task_id        TEXT    NOT NULL,
    status         TEXT    NOT NULL,           -- TaskStatus::name()
    started_at_ms  INTEGER,                    -- first dispatch
    finished_at_ms INTEGER,
    record         TEXT    NOT NULL,           -- JSON: the engine's TaskRecord
    PRIMARY KEY (run_id, idx)
) STRICT;

-- Past successes of a task, for predictions and stuck detection: read per run of a runbook,
-- by task id. Only succeeded rows are in the index, and it covers the query.
CREATE INDEX run_tasks_succeeded ON run_tasks (run_id, task_id, finished_at_ms, started_at_ms)
    WHERE status = 'succeeded';

-- Keeps the run's task counters equal to its task rows' statuses. Task rows are inserted with
-- the run (the store computes the first counts) and only ever updated afterwards.
CREATE TRIGGER run_tasks_count AFTER UPDATE OF status ON run_tasks
    WHEN OLD.status IS NOT NEW.status
        -- Only moves between counted categories; waiting -> ready (10,000 at a run's start)
        -- changes no count.
        AND ((OLD.status IN ('succeeded', 'skipped')) IS NOT (NEW.status IN ('succeeded', 'skipped'))
          OR (OLD.status = 'running') IS NOT (NEW.status = 'running')
          OR (OLD.status IN ('failed', 'stalled')) IS NOT (NEW.status IN ('failed', 'stalled')))
BEGIN
    UPDATE runs SET
        tasks_done = tasks_done
            + (NEW.status IN ('succeeded', 'skipped')) - (OLD.status IN ('succeeded', 'skipped')),
        tasks_running = tasks_running
            + (NEW.status = 'running') - (OLD.status = 'running'),
        tasks_failed = tasks_failed
            + (NEW.status IN ('failed', 'stalled')) - (OLD.status IN ('failed', 'stalled'))
    WHERE id = NEW.run_id;
END;

-- Every journal entry of every run, in commit order. AUTOINCREMENT: a seq is never reused, so
-- a client's cursor (paging, event streams) can never skip an entry.
CREATE TABLE run_journal (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT    NOT NULL REFERENCES runs (id),
    version INTEGER NOT NULL,                  -- the run's version after the entry
    at_ms   INTEGER NOT NULL,
    task    TEXT,
    actor   TEXT    NOT NULL,
    kind    TEXT    NOT NULL,                  -- JournalKind's serde name
    entry   TEXT    NOT NULL                   -- JSON: the engine's whole JournalEntry
) STRICT;

CREATE INDEX run_journal_run ON run_journal (run_id, seq);

-- What each attempt of a task printed, size-limited by its stage.
CREATE TABLE task_outputs (
    seq       INTEGER PRIMARY KEY,             -- insertion order, breaks ties within an attempt
    run_id    TEXT    NOT NULL REFERENCES runs (id),
    task      TEXT    NOT NULL,
    attempt   INTEGER NOT NULL CHECK (attempt >= 0),
    at_ms     INTEGER NOT NULL,
    outcome   TEXT    NOT NULL,
    text      TEXT    NOT NULL,
    cut_bytes INTEGER NOT NULL CHECK (cut_bytes >= 0),  -- bytes cut from the front of `text`
    data      TEXT    NOT NULL                 -- JSON: structured facts (exit code, ...)
) STRICT;

CREATE INDEX task_outputs_task ON task_outputs (run_id, task, attempt, seq);

-- Server-wide facts, such as the global pause.
CREATE TABLE settings (
    key           TEXT    NOT NULL PRIMARY KEY,
    value         TEXT    NOT NULL,            -- JSON
    updated_at_ms INTEGER                      -- the audit entry's time; NULL if set without one
) STRICT;
