-- Levee's PostgreSQL schema, version 4: run leases with fencing epochs, and replica
-- heartbeats, for several replicas sharing the database. (Version 3 is maintenance.)

-- Who executes a run. A replica claims an active run that is unowned or whose lease expired;
-- every claim adds one to `epoch`, the fencing token: each commit of the holder names the
-- epoch it holds, and the writer, holding the run's row lock, refuses a commit whose epoch is
-- no longer the run's. A replica paused past its lease can therefore never write again once
-- another has taken the run over.
ALTER TABLE runs ADD COLUMN owner TEXT COLLATE "C";          -- replica id; NULL if nobody holds it
ALTER TABLE runs ADD COLUMN lease_expires_ms BIGINT;          -- NULL when owner is NULL
ALTER TABLE runs ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0 CHECK (epoch >= 0);

-- The replicas view lists the runs each replica holds.
CREATE INDEX runs_owner ON runs (owner) WHERE owner IS NOT NULL;

-- One row per replica that ever ran, with its latest heartbeat.
CREATE TABLE replicas (
    id            TEXT COLLATE "C" NOT NULL PRIMARY KEY,  -- hostname-pid-random
    address       TEXT   NOT NULL,            -- where other replicas reach it: http://host:port
    started_at_ms BIGINT NOT NULL,
    seen_at_ms    BIGINT NOT NULL
);

CREATE INDEX replicas_seen ON replicas (seen_at_ms);
