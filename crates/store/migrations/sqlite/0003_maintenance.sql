-- Levee's SQLite schema, version 3: maintenances and the capacity they reserve.
--
-- A maintenance reserves its resolved hosts during [start_ms, end_ms) until it is done or
-- cancelled. The writer stores a new one only after the server's admission decision has run,
-- inside the same write transaction, against every reserving row: SQLite's single writer is
-- what serialises two schedules.
CREATE TABLE maintenances (
    id            TEXT    NOT NULL PRIMARY KEY,
    fleet         TEXT    NOT NULL,
    selector      TEXT    NOT NULL,
    hosts         TEXT    NOT NULL,  -- JSON array of host names
    kind          TEXT    NOT NULL,  -- network, power, reboot or a custom type
    start_ms      INTEGER NOT NULL,
    end_ms        INTEGER NOT NULL CHECK (end_ms > start_ms),
    owner         TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    why           TEXT    NOT NULL,
    unblock       TEXT    NOT NULL,
    created_by    TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    version       INTEGER NOT NULL CHECK (version >= 1),
    details       TEXT    NOT NULL   -- JSON: the flow's own facts
) STRICT;

-- Admission reads the reserving rows; listings and the calendar go by start time.
CREATE INDEX maintenances_state ON maintenances (state, start_ms, id);
CREATE INDEX maintenances_start ON maintenances (start_ms, id);
