-- Levee's SQLite schema, version 4: run leases with fencing epochs, and replica heartbeats.
-- (Version 3 is maintenance.) One process uses a SQLite file, so it is the only replica and
-- claims every active run at start; the columns are the same as PostgreSQL's so both stores
-- keep one contract.

-- Who executes a run. Every claim adds one to `epoch`, the fencing token: each commit of the
-- holder names the epoch it holds, and the writer refuses a commit whose epoch is no longer
-- the run's.
ALTER TABLE runs ADD COLUMN owner TEXT;                        -- replica id; NULL if nobody holds it
ALTER TABLE runs ADD COLUMN lease_expires_ms INTEGER;          -- NULL when owner is NULL
ALTER TABLE runs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0 CHECK (epoch >= 0);

CREATE INDEX runs_owner ON runs (owner) WHERE owner IS NOT NULL;

-- One row per replica that ever ran, with its latest heartbeat.
CREATE TABLE replicas (
    id            TEXT    NOT NULL PRIMARY KEY,  -- hostname-pid-random
    address       TEXT    NOT NULL,             -- where other replicas reach it: http://host:port
    started_at_ms INTEGER NOT NULL,
    seen_at_ms    INTEGER NOT NULL
) STRICT;

CREATE INDEX replicas_seen ON replicas (seen_at_ms);
