-- Levee's SQLite schema, version 1.
--
-- Every table is STRICT so a bug that binds the wrong type fails loudly instead of storing a
-- string where an integer belongs. Times are integer epoch milliseconds so SQL can compare and
-- sort them the same way in SQLite and PostgreSQL. JSON is stored as TEXT and parsed by the
-- store; a value that does not parse is reported as a corrupt record.

-- Every stored version of every definition. A new version is written only when the compiled
-- definition's digest differs from the latest version's.
CREATE TABLE definitions (
    kind          TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    version       INTEGER NOT NULL CHECK (version >= 1),
    compiled      TEXT    NOT NULL,  -- JSON
    source        TEXT    NOT NULL,
    digest        TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    created_by    TEXT    NOT NULL,
    PRIMARY KEY (kind, name, version)
) STRICT;

-- The current record of every state machine instance.
CREATE TABLE machines (
    id            TEXT    NOT NULL PRIMARY KEY,
    definition    TEXT    NOT NULL,
    grp           TEXT,
    state         TEXT    NOT NULL,
    counter       INTEGER NOT NULL CHECK (counter >= 0),
    reporters     TEXT    NOT NULL,  -- JSON array of strings
    entered_at_ms INTEGER NOT NULL,
    timer_due_ms  INTEGER,
    version       INTEGER NOT NULL CHECK (version >= 1),
    replay        TEXT,              -- JSON, present while replaying
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;

-- The timer worker asks for the earliest due timers; machines without a timer are left out of
-- the index entirely.
CREATE INDEX machines_timer_due ON machines (timer_due_ms, id) WHERE timer_due_ms IS NOT NULL;
CREATE INDEX machines_definition ON machines (definition, id);
CREATE INDEX machines_group ON machines (grp, id);

-- Every committed change to every machine, in commit order. AUTOINCREMENT guarantees that a
-- seq is never reused, even after the newest rows are deleted, so a client's paging cursor can
-- never skip an entry.
CREATE TABLE history (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    machine    TEXT    NOT NULL REFERENCES machines (id),
    version    INTEGER NOT NULL,
    at_ms      INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    from_state TEXT    NOT NULL,
    to_state   TEXT    NOT NULL,
    event      TEXT,
    counter    INTEGER NOT NULL CHECK (counter >= 0),
    actor      TEXT    NOT NULL,
    reporter   TEXT
) STRICT;

CREATE INDEX history_machine ON history (machine, seq);

-- Who did what to which target, and how it ended.
CREATE TABLE audit (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms   INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    target  TEXT    NOT NULL,
    outcome TEXT    NOT NULL,
    detail  TEXT    NOT NULL  -- JSON
) STRICT;

CREATE INDEX audit_actor ON audit (actor, seq);
CREATE INDEX audit_target ON audit (target, seq);

-- API tokens: only the SHA-256 of each secret. A revoked token keeps its row (and its name) so
-- the audit log's actors stay unambiguous.
CREATE TABLE tokens (
    name          TEXT    NOT NULL PRIMARY KEY,
    role          TEXT    NOT NULL,
    scope         TEXT,
    hash          TEXT    NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL,
    created_by    TEXT    NOT NULL,
    revoked_at_ms INTEGER
) STRICT;
