-- Levee's PostgreSQL schema, version 3: maintenances and the capacity they reserve, the same
-- table as SQLite's version 3.
--
-- Replicas serialise schedules on the single row of `fleet_lock`: a batch that schedules a
-- maintenance takes it `FOR UPDATE` before it reads the reserving rows, and holds it until it
-- commits, so two replicas never decide against the same reservations.
CREATE TABLE maintenances (
    id            TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    fleet         TEXT COLLATE "C" NOT NULL,
    selector      TEXT   NOT NULL,
    hosts         TEXT   NOT NULL,  -- JSON array of host names
    kind          TEXT   NOT NULL,
    start_ms      BIGINT NOT NULL,
    end_ms        BIGINT NOT NULL CHECK (end_ms > start_ms),
    owner         TEXT   NOT NULL,
    state         TEXT COLLATE "C" NOT NULL,
    why           TEXT   NOT NULL,
    unblock       TEXT   NOT NULL,
    created_by    TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    version       BIGINT NOT NULL CHECK (version >= 1),
    details       TEXT   NOT NULL   -- JSON: the flow's own facts
);

CREATE INDEX maintenances_state ON maintenances (state, start_ms, id);
CREATE INDEX maintenances_start ON maintenances (start_ms, id);

CREATE TABLE fleet_lock (
    id INTEGER NOT NULL PRIMARY KEY CHECK (id = 1)
);
INSERT INTO fleet_lock (id) VALUES (1);
